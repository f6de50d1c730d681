"""Know before you rent: model facts, memory, time and cost of a run."""
