"""lungseg: pipelines."""
