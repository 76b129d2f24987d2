"""diffseg core."""
