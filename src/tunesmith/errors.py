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


def memory_kind(e: BaseException) -> str | None:
    """"GPU" or "CPU" when `e` says the process ran out of memory, else None. torch is not
    imported for this: an OOM from torch means torch is already loaded."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(e, torch.OutOfMemoryError):
        return "GPU"
    if isinstance(e, MemoryError):
        return "CPU"
    text = str(e)
    if isinstance(e, RuntimeError) and ("DefaultCPUAllocator" in text or "can't allocate memory" in text):
        return "CPU"
    return None


class OutOfMemory(TunesmithError):
    """A run that needed more memory than the device had: exit 1, with the remedies."""

    def __init__(self, kind: str, where: str, detail: str = "") -> None:
        super().__init__(
            f"out of {kind} memory while {where}{' (' + detail + ')' if detail else ''}. `tunesmith plan` with "
            f"the same config shows what fits where; the guide's remedies, in order: --set "
            f"train.gradient_checkpointing=true, a smaller train.micro_batch with a larger train.grad_accum, "
            f"--method qlora (CUDA GPU), a GPU with more memory", exit_code=1)
