"""lungseg: pipelines."""

from segmentation.tf_env import prefer_onednn

prefer_onednn()  # before TensorFlow is imported
