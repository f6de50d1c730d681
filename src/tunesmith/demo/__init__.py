"""Built-in demo: a small order-extraction data set and its generator."""
