"""lungseg: models."""

from models.unet import build_unet, count_params, estimate_flops, group_count

__all__ = ["build_unet", "count_params", "estimate_flops", "group_count"]
