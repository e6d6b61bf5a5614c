"""Small utilities: FLOP accounting and image grids."""
