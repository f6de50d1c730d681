"""Training on rented cloud GPUs through SkyPilot: the managed-job task a config and its plan
make (`task.py`), finding and calling SkyPilot (`skypilot.py`), this tunesmith as a wheel for
the cloud machine (`package.py`), `tunesmith launch` put together (`launch.py`), and bringing
the run folder back from its bucket (`pull.py`).

SkyPilot is never imported here: its own environment (its click pin conflicts with
transformers') runs its `sky` command and its parser, in a subprocess."""
