"""Know before you rent: memory, time and cost of a run (the model facts it starts from are
in `models.arch` and `models.facts`)."""
