"""Resolve a model source and load model + tokenizer with safe defaults."""
