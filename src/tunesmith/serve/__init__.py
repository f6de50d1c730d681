"""Serving a trained run: export it as a folder that plain transformers (and later GGUF tools) load."""
