"""The train stage: tokenize + mask, pack, and our own loop on accelerate + peft."""
