"""tunesmith: from a JSONL file of examples to a fine-tuned, evaluated and served LLM."""

__version__ = "0.1.0"
