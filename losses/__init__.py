"""lungseg: losses."""
