"""Session set-up shared by every test module."""

from segmentation.tf_env import prefer_onednn

# Test modules may import TensorFlow before any lungseg package does; choose oneDNN first,
# as the CLI does, so the tests run the kernels users get.
prefer_onednn()
