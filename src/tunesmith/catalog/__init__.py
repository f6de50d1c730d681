"""Facts as data files: model configs (models/*.json); GPUs and prices come with the planner."""
