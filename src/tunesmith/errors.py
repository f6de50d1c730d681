"""The one error type the CLI turns into a one-line message and an exit code."""

from __future__ import annotations


class TunesmithError(Exception):
    """A problem the user can fix: says what, where, and what to do.

    `exit_code` 2 is a usage error (bad config, bad flag, missing file); 1 is a run that
    could not do its job (data that cannot be trained on, a run folder without an adapter).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(TunesmithError):
    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class DataError(TunesmithError):
    """A data file that cannot be trained on as a whole (no rows, another format): exit 1,
    so `tunesmith data check` can gate a pipeline on it."""
