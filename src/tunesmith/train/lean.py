"""Keep a CPU training process's resident set close to what torch has allocated.

glibc's malloc serves large blocks with mmap and returns them on free, but after each such
free it raises its mmap threshold to the freed size (up to 32 MiB), so the activations of the
next steps come from the heap, whose freed blocks it seldom gives back: the kernel, which
kills by resident set, saw SmolLM2-135M's training process hold ~1.3x what torch had
allocated (bench/README.md, cpu_resident_peak.py). Fixing the threshold turns the dynamic
rule off: blocks above it are always mmapped and returned when freed.
"""

from __future__ import annotations

import ctypes
import sys

import torch

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks of 256 KiB and more (a 64-token row of a 1k-wide model) come from mmap; smaller
# ones from the heap, which gives back its free top beyond 1 MiB.
MMAP_THRESHOLD = 256 * 2**10
TRIM_THRESHOLD = 2**20


def return_freed_memory(device: torch.device) -> bool:
    """On a CPU under Linux glibc, make malloc give freed large blocks back to the kernel;
    True if it did. Elsewhere (GPUs, whose tensors are not malloc's; musl, macOS) nothing."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
