"""Several processes training one run: who is who, what each one runs, how they agree.

`tunesmith train --nproc N` starts N workers through accelerate's launcher (torchrun's agent
underneath); `accelerate launch -m tunesmith train …` and `torchrun -m tunesmith train …` start
the same workers by hand. Every worker runs the same `train()`. The main process (rank 0)
alone decides (new run or resume, the data stage, the pre-flight) and writes (the run folder,
metrics, trackers, checkpoints, the adapter); it sends its decisions to the others as one JSON
message, so the workers never disagree on the rows, the schedule or the checkpoint.

A step's rows are the same whatever the world size: micro_batch x grad_accum x N rows, cut
into micro-batches of micro_batch rows exactly as one process with accumulation grad_accum x N
would cut them; rank r runs micro-batches r, r+N, … Every rank knows every row of the step,
so the loss is divided by the step's trained tokens over all ranks without asking anyone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch

from tunesmith.errors import TunesmithError, UsageError

T = TypeVar("T")
STRATEGIES = ("ddp", "fsdp", "fsdp_offload", "zero2", "zero3")
DEEPSPEED = ("zero2", "zero3")


@dataclass(frozen=True)
class World:
    """This process's place among the workers; one process is a world of size 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # the processes on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The world a launcher (accelerate, torchrun) described in the environment."""
    size = _env_int("WORLD_SIZE", 1)
    return World(rank=_env_int("RANK", 0), size=size, local_rank=_env_int("LOCAL_RANK", 0),
                 local_size=_env_int("LOCAL_WORLD_SIZE", size))


def launched() -> bool:
    """True inside a worker a launcher started (even a world of one)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UsageError(f"environment variable {name}={os.environ[name]!r} is not a number") from None


class PeerFailed(TunesmithError):
    """The main process stopped the run (it said why on its own stderr): a worker ends quietly."""

    label = ""


# ---------------------------------------------------------------- launching

def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_nproc() -> int:
    """Every visible GPU; one process on a CPU (its cores are already shared by the threads)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def launcher_args(nproc: int, argv: Sequence[str], *, nnodes: int = 1, node_rank: int = 0,
                  master_addr: str | None = None, master_port: int | None = None) -> list[str]:
    """`accelerate launch` arguments that start `nproc` workers on this machine (x `nnodes`
    machines) running `python -m tunesmith <argv>`. The same argv: each worker sees the
    launcher's WORLD_SIZE and knows it is a worker."""
    args = ["--multi_gpu", "--num_processes", str(nproc * nnodes), "--num_machines", str(nnodes),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if nnodes > 1:
        if not master_addr:
            raise UsageError("--nnodes > 1 needs --master-addr (the address of the machine with --node-rank 0)")
        args += ["--machine_rank", str(node_rank), "--main_process_ip", master_addr]
    # One machine: a free port, so two runs on one machine (or a test suite) never collide.
    port = master_port if master_port is not None else (29500 if nnodes > 1 else free_port())
    args += ["--main_process_port", str(port), "--module", "tunesmith", *argv]
    return args


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: list[str]) -> int:
    """Run accelerate's launcher in this process and wait for the workers: their exit code
    (the main worker's when several failed). A failed worker has already said why on stderr;
    the launcher's own traceback about it would only bury that line."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    parsed = launch_command_parser().parse_args(args)
    try:
        launch_command(parsed)
    except ChildFailedError as e:
        # The main worker's code, unless a signal from the launcher ended it first.
        codes = [f.exitcode for _, f in sorted(e.failures.items()) if f.exitcode and f.exitcode > 0]
        return codes[0] if codes else 1
    except SignalException as e:
        # SIGTERM/SIGINT reached the launcher: it passed the signal on and waited for the
        # workers, which checkpoint and stop (the main one said so).
        return 128 + int(e.sigval)
    return 0


# ---------------------------------------------------------------- joining and agreeing

def join(world: World, device_type: str) -> torch.device:
    """Join the process group (accelerate's shared state: gloo between CPU processes, NCCL
    between GPUs) and return this worker's device."""
    if world.size == 1:
        return torch.device("cuda") if device_type == "cuda" else torch.device("cpu")
    from accelerate import PartialState

    state = PartialState(cpu=device_type == "cpu")
    return state.device


def leave(world: World) -> None:
    """Leave the process group before the interpreter exits: a gloo group still alive at exit
    can abort its process in C++ ("terminate called without an active exception"), which
    turns a worker's clear exit code into SIGABRT and the launcher's answer into a bare 1."""
    import torch.distributed as dist

    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def share(world: World, message: dict[str, Any] | None) -> dict[str, Any]:
    """The main process's `message` on every process (JSON bytes broadcast as a tensor: no
    pickles between processes either)."""
    if world.size == 1:
        assert message is not None
        return message
    import torch.distributed as dist

    device = _comm_device()
    if world.main:
        payload = torch.tensor(list(json.dumps(message).encode("utf-8")), dtype=torch.uint8, device=device)
        length = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    else:
        length = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    if not world.main:
        payload = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=0)
    return json.loads(bytes(payload.cpu().tolist()).decode("utf-8"))


def all_sum(world: World, values: Sequence[float]) -> list[float]:
    """Each value summed over the processes, in float64."""
    if world.size == 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def any_rank(world: World, flag: bool) -> bool:
    """True on every process when it is true on one (a stop signal that reached one worker)."""
    return all_sum(world, [1.0 if flag else 0.0])[0] > 0


def gather_tensors(world: World, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's copy of a same-shaped tensor, by rank (on every process)."""
    if world.size == 1:
        return [tensor]
    import torch.distributed as dist

    local = tensor.to(_comm_device())
    parts = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process is gone: torch's distributed
    errors (NCCL), or gloo's socket errors, which arrive as plain RuntimeErrors naming gloo."""
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "/gloo/" in str(error))


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- sharing the work

def my_share(items: Sequence[T], world: World) -> list[T]:
    """This rank's items: r, r+N, r+2N, …"""
    return list(items[world.rank :: world.size])


def check_strategy(strategy: str, world: World, device_type: str, method: str) -> str:
    """The strategy this world runs (auto: resolved by the main process's pre-flight); refuses
    what train cannot run."""
    if world.size == 1:
        return "single"
    chosen = strategy
    if chosen in DEEPSPEED:
        raise UsageError(f"distributed.strategy={chosen}: train runs ddp, fsdp and fsdp_offload; DeepSpeed ZeRO is "
                         f"not wired in (`tunesmith plan --strategy {chosen}` prices it): use fsdp, which shards like "
                         f"{'ZeRO-3' if chosen == 'zero3' else 'ZeRO-2 and more'}")
    if chosen in ("fsdp", "fsdp_offload") and method == "qlora":
        raise UsageError(f"distributed.strategy={chosen} with method qlora: sharding 4-bit weights is not wired in; "
                         f"use distributed.strategy=ddp (each GPU holds the 4-bit base, which is what QLoRA is for)")
    if chosen == "fsdp_offload" and device_type != "cuda":
        raise UsageError("distributed.strategy=fsdp_offload moves GPU memory to the host; these processes already "
                         "train on CPU: use distributed.strategy=fsdp")
    return chosen


def accelerator_kwargs(strategy: str) -> dict[str, Any]:
    """What accelerate's Accelerator needs for the strategy. DDP: buffers (rotary tables, the
    same on every worker) are not re-broadcast at each forward, so a worker may run more
    micro-batches than another without a collective left waiting."""
    if strategy != "ddp":
        return {}
    from accelerate.utils import DistributedDataParallelKwargs

    return {"kwargs_handlers": [DistributedDataParallelKwargs(broadcast_buffers=False)]}


def quiet_worker(world: World) -> None:
    """Workers other than the main one print nothing of their own (the main one speaks for the
    run); their errors still reach stderr, prefixed with the rank."""
    if not world.main:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the life of the process
