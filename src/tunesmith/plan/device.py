"""The device this process would train on: a CUDA GPU (matched to the catalog by name) or the
CPU with the memory the system can still give it."""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any

from tunesmith.plan.memory import GB

# Substrings of torch.cuda.get_device_name() -> catalog name; first match wins.
CUDA_NAMES = [
    ("h200", "H200"), ("h100 pcie", "H100-PCIe"), ("h100", "H100-SXM"),
    ("a100-sxm4-40gb", "A100-40GB"), ("a100-pcie-40gb", "A100-40GB"), ("a100", "A100-80GB"),
    ("l40s", "L40S"), ("a10g", "A10G"), ("a10", "A10"), ("l4", "L4"), ("4090", "RTX-4090"), ("a6000", "RTX-A6000"),
]


@dataclass(frozen=True)
class Device:
    type: str  # "cuda" or "cpu"
    name: str
    memory_gb: float  # total
    available_gb: float  # what a new training process can use
    count: int = 1
    catalog_gpu: str | None = None
    processes: int = 1  # training processes sharing the run (each with its own GPU; a CPU's memory is shared)
    strategy: str | None = None  # how they split the model (ddp, fsdp, ...); None: one process

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def catalog_name(cuda_name: str) -> str | None:
    lowered = cuda_name.lower()
    for needle, name in CUDA_NAMES:
        if needle in lowered:
            return name
    return None


def visible_device() -> Device:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        return Device(type="cuda", name=props.name, memory_gb=round(total / GB, 2), available_gb=round(free / GB, 2),
                      count=torch.cuda.device_count(), catalog_gpu=catalog_name(props.name))
    total, available = system_memory()
    return Device(type="cpu", name=cpu_name(), memory_gb=round(total / GB, 2), available_gb=round(available / GB, 2))


def share_among(device: Device, processes: int, local: int, strategy: str) -> Device:
    """The device as each of `processes` training processes (`local` of them on this machine,
    splitting the model by `strategy`) sees it: a GPU each, or an equal share of this
    machine's memory."""
    if processes == 1:
        return device
    if device.type == "cpu":
        return replace(device, available_gb=round(device.available_gb / local, 2), processes=processes,
                       strategy=strategy, name=f"{device.name}, 1/{local} of its memory for each of {local} processes")
    return replace(device, processes=processes, strategy=strategy)


def system_memory() -> tuple[float, float]:
    """(total, available) bytes; available is what the kernel can hand out without swapping."""
    try:
        text = open("/proc/meminfo", encoding="ascii").read()
        fields = {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
        return float(fields["MemTotal"]), float(fields.get("MemAvailable", fields["MemTotal"]))
    except (OSError, KeyError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return float(total), float(total)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU ({os.cpu_count()} cores)"


# The shape of the matmul that rates a CPU: about what a small model's training step
# multiplies (1,024 packed positions by a 1,024-wide projection), 2.1 GFLOP per call.
MATMUL_SIZE = 1024
MATMUL_BUDGET_S = 0.4  # stop timing after this long (a slow CPU still answers in well under a second)


@lru_cache(maxsize=2)
def cpu_matmul_flops(dtype: str = "fp32") -> float:
    """FLOP/s this CPU reaches on a matmul in `dtype` ("fp32" or "bf16") with torch's default
    threads, as the training loop runs it: the best of a few timed calls after one warm-up
    (contention from other processes only ever slows a call, so the best is the least
    disturbed). Measured once per process and dtype."""
    import torch

    n = MATMUL_SIZE
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=kind), torch.randn(n, n, dtype=kind)
    torch.mm(a, b)  # warm-up: thread pool start, first allocation
    best = float("inf")
    started = time.perf_counter()
    for attempt in range(8):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        if attempt >= 1 and time.perf_counter() - started > MATMUL_BUDGET_S:
            break
    return 2 * n**3 / best


def bitsandbytes_installed() -> bool:
    """Whether bitsandbytes (4-bit weights, 8-bit optimizers) can be imported, found without
    importing it: its import initialises CUDA."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


# ---------------------------------------------------------------- what the pre-flight checklist reads

@dataclass(frozen=True)
class MachineFacts:
    """What the pre-flight checklist needs from this machine, read once by `machine_facts`
    (tests build it by hand): torch's CUDA build, the driver's CUDA version, bf16 support,
    free disk where the run folder will be, and the mount table."""

    torch_cuda: str | None  # torch.version.cuda; None: a CPU-only build of torch
    driver_cuda: str | None  # the highest CUDA version the driver supports; None: no NVIDIA driver found
    bf16_supported: bool | None  # None: no CUDA device to ask
    disk_free_bytes: int | None  # None: could not be read
    mounts: str  # /proc/mounts text ("" where there is none)
    bitsandbytes: bool
    cpu_bf16: str | None = None  # the CPU's native bf16 instruction set (avx512_bf16, amx_bf16); None: none found


# CPU flags (Linux /proc/cpuinfo) of native bf16 dot products. Without one, torch's bf16
# matmuls on a CPU are converted to fp32 and back, slower than fp32 itself.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flag(cpuinfo: str) -> str | None:
    """The first native bf16 flag this CPU lists, from /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return next((f for f in CPU_BF16_FLAGS if f in flags), None)
    return None


def read_cpu_bf16() -> str | None:
    try:
        return cpu_bf16_flag(open("/proc/cpuinfo", encoding="utf-8", errors="replace").read())
    except OSError:
        return None


def existing_parent(path: str) -> str:
    """The nearest folder of `path` that exists: the run folder is created later, and what
    matters before then is the filesystem it will be created on."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return os.path.realpath(current)


def driver_cuda_version() -> str | None:
    """The CUDA version the installed NVIDIA driver supports ("12.2"), from NVML when
    nvidia-ml-py is installed, else from `nvidia-smi`'s banner; None without a driver."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetCudaDriverVersion()  # 12020 for 12.2
        finally:
            pynvml.nvmlShutdown()
        return f"{version // 1000}.{version % 1000 // 10}"
    except Exception:  # not installed, or no driver: nvidia-smi may still answer
        pass
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        banner = subprocess.run([smi], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"CUDA Version:\s*(\d+\.\d+)", banner)
    return found.group(1) if found else None


def machine_facts(run_dir: str, device_type: str) -> MachineFacts:
    """Read what `plan.preflight.checklist` checks, for a run writing into `run_dir`."""
    import shutil

    import torch

    try:
        free: int | None = shutil.disk_usage(existing_parent(run_dir)).free
    except OSError:
        free = None
    try:
        mounts = open("/proc/mounts", encoding="utf-8", errors="replace").read()
    except OSError:
        mounts = ""
    bf16 = torch.cuda.is_bf16_supported() if device_type == "cuda" else None
    return MachineFacts(torch_cuda=torch.version.cuda, driver_cuda=driver_cuda_version(), bf16_supported=bf16,
                        disk_free_bytes=free, mounts=mounts, bitsandbytes=bitsandbytes_installed(),
                        cpu_bf16=read_cpu_bf16() if device_type == "cpu" else None)
