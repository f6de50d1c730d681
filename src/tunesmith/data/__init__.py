"""The data stage: read, validate and normalise training examples; lose no row."""
