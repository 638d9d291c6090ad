"""Session set-up shared by every test module."""

from segmentation.tf_env import configure_process

# Test modules may import TensorFlow before any lungseg code runs; make the process settings
# the CLI makes (oneDNN, TensorFlow's log level and quiet start) first, so the tests run the
# kernels users get.
configure_process()
