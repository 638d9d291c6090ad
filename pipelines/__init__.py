"""lungseg: pipelines (the commands behind ``lungseg``; `pipelines.cli` is the command line).

Importing this package loads no TensorFlow and changes no environment variable: the CLI's
`pipelines.cli.main` calls `segmentation.tf_env.configure_process` first.
"""
