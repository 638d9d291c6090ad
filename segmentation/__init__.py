"""lungseg: segmentation."""
