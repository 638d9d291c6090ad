"""lungseg: models."""
