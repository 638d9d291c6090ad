"""lungseg: models."""

from segmentation.tf_env import prefer_onednn

prefer_onednn()  # before TensorFlow is imported

from models.unet import build_unet, count_params, estimate_flops, group_count  # noqa: E402

__all__ = ["build_unet", "count_params", "estimate_flops", "group_count"]
