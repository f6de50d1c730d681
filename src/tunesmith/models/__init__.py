"""The shared layer: resolve a model source (the one alias table is `aliases`), load model +
tokenizer with safe defaults, chat-template rendering and loss masking, and the architecture
facts (`arch`, `facts`) the planner counts with."""
