"""Plan vs actual: what a run's plan.json predicted for the machine it trained on, next to
what the run measured (train.json), as RUN/plan_vs_actual.json.

Four figures, each planned, actual and actual/planned:

- **hours**: the plan's `this_machine.hours` (the optimizer steps alone, at the rate it
  timed this machine with) against the wall time every process of the run spent, from its
  start to its last write of train.json: model load, data stage, steps, evals, checkpoints,
  and after a preemption the restart and the steps done again since the last checkpoint.
  `in_steps` is the part spent in optimizer steps, also summed over every session.
- **cost_usd**: those hours x the $/GPU-hour (the midpoint of the cheapest offer's range, as
  the plan prices) x the GPUs of the machine; spot or on-demand from TUNESMITH_PRICING
  (the cloud launcher sets it), else on-demand. A CPU run has no GPU to pay for.
- **peak_memory_gb**: the plan's peak against the high-water mark train.json measured, the
  same quantity (`measure` says which: on a GPU reserved + CUDA context, on a CPU the
  resident set with the data the loop keeps).
- **tokens_per_s**: the rate the plan timed this machine at, in tokens, against the run's
  mean: its tokens over its seconds in steps, each step counted once (a resumed run's
  tokens and seconds come back from the checkpoint it continued from).

Pure reading and arithmetic: `tunesmith train` writes it when a run ends, however it ends;
`write_plan_vs_actual(RUN)` does it again for a run folder copied from elsewhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from tunesmith.catalog.prices import Price, cheapest, load_prices, mid
from tunesmith.errors import UsageError
from tunesmith.io import read_json, write_json_atomic

FILE = "plan_vs_actual.json"
PRICING_ENV = "TUNESMITH_PRICING"
PRICINGS = ("on_demand", "spot")
# train/record.py's statuses of a run that reached its end (the others: running, interrupted, failed).
FINISHED = ("completed", "stopped_early")
NOT_OURS = "it is not a file `tunesmith train` wrote"


def pricing_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """spot or on_demand: TUNESMITH_PRICING when set, else on_demand; UsageError naming the
    variable for anything else."""
    value = environ.get(PRICING_ENV, "").strip()
    if not value:
        return "on_demand"
    if value not in PRICINGS:
        raise UsageError(f"{PRICING_ENV}={value!r}: give spot or on_demand (how the run's GPU is paid for, "
                         f"for plan_vs_actual.json), or leave it unset for on_demand")
    return value


def plan_vs_actual(run_dir: str | Path, *, prices: list[Price] | None = None,
                   pricing: str | None = None) -> dict[str, Any]:
    """The comparison for a run folder (see the module's docstring). `prices`: default
    `load_prices()`; `pricing`: default `pricing_from_env()`. Every file it reads gives one
    UsageError naming it when missing or malformed."""
    run_dir = Path(run_dir)
    plan = _run_file(run_dir, "plan.json")
    record = _run_file(run_dir, "train.json")
    here = _this_machine(plan, run_dir / "plan.json")
    device = here["device"]
    sessions = _sessions(record, run_dir / "train.json")
    hours = _hours(here, record, sessions, (run_dir / "plan.json", run_dir / "train.json"))
    status = record.get("status")
    return {
        "run": str(run_dir),
        "status": status,
        "complete": status in FINISHED,
        "device": device,
        "calibrated": "calibration" in plan,
        "time_from": here.get("time_from"),
        "steps": {"done": record.get("steps_done"), "planned": record.get("steps_planned"),
                  "sessions": len(sessions), "redone": redone_steps(sessions)},
        "tokens": record.get("tokens"),
        "hours": hours,
        "cost_usd": _cost(device, hours, pricing or pricing_from_env(), load_prices() if prices is None else prices),
        "peak_memory_gb": _peak(here, record, (run_dir / "plan.json", run_dir / "train.json")),
        "tokens_per_s": _speed(plan, here, record, (run_dir / "plan.json", run_dir / "train.json")),
        "notes": _notes(device, record, sessions),
    }


def write_plan_vs_actual(run_dir: str | Path, *, prices: list[Price] | None = None,
                         pricing: str | None = None) -> dict[str, Any]:
    """Compute the comparison and write it to RUN/plan_vs_actual.json (atomically); returns it."""
    comparison = plan_vs_actual(run_dir, prices=prices, pricing=pricing)
    write_json_atomic(Path(run_dir) / FILE, comparison)
    return comparison


def read_measured_speed(run_dir: str | Path) -> tuple[float, dict[str, Any]] | None:
    """(the run's mean tokens/s, the comparison) from RUN/plan_vs_actual.json; None when the
    file is not there or measured no speed (no step done). A malformed file is one
    UsageError naming it: it is not silently passed over for another source."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    data = read_json(path, "JSON file", NOT_OURS)
    speed = data.get("tokens_per_s") if isinstance(data, dict) else None
    if not isinstance(speed, dict) or "actual" not in speed:
        raise UsageError(f"{path}: no tokens_per_s.actual; {NOT_OURS}: delete it to calibrate from metrics.jsonl")
    value = speed["actual"]
    if value is None:
        return None
    if not _number(value) or value <= 0:
        raise UsageError(f"{path}: tokens_per_s.actual = {value!r} is not a speed above 0; {NOT_OURS}: delete it "
                         "to calibrate from metrics.jsonl")
    return float(value), data


def redone_steps(sessions: list[dict[str, Any]]) -> int:
    """Steps trained twice: each session's steps after the checkpoint the next one resumed from."""
    return sum(max(0, before["to_step"] - after["from_step"]) for before, after in zip(sessions, sessions[1:]))


# ---------------------------------------------------------------- reading the run folder

def _run_file(run_dir: Path, name: str) -> dict[str, Any]:
    path = run_dir / name
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a folder; give a run folder written by `tunesmith train`")
    if not path.exists():
        raise UsageError(f"{run_dir}: no {name} there, which plan vs actual needs; give a run folder written by "
                         "`tunesmith train` (copied whole, with plan.json and train.json)")
    data = read_json(path, "JSON file", NOT_OURS)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, found {type(data).__name__}; {NOT_OURS}")
    return data


def _this_machine(plan: dict[str, Any], path: Path) -> dict[str, Any]:
    here = plan.get("this_machine")
    device = here.get("device") if isinstance(here, dict) else None
    if not isinstance(device, dict) or device.get("type") not in ("cuda", "cpu"):
        raise UsageError(f"{path}: no this_machine.device with type cuda or cpu; {NOT_OURS}")
    return here


def _sessions(record: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """train.json's sessions; [] from a tunesmith that did not record them."""
    sessions = record.get("sessions", [])
    fields = ("from_step", "to_step", "step_seconds", "wall_seconds")
    if not isinstance(sessions, list) or not all(
            isinstance(s, dict) and all(_number(s.get(k)) and s[k] >= 0 for k in fields) for s in sessions):
        raise UsageError(f"{path}: sessions is not a list of {{{', '.join(fields)}}} with numbers of 0 or more; "
                         f"{NOT_OURS}")
    return sessions


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(record: dict[str, Any], name: str, path: Path) -> float:
    value = record.get(name)
    if not _number(value) or value < 0:
        raise UsageError(f"{path}: {name} = {value!r} is not a number of 0 or more; {NOT_OURS}")
    return float(value)


def _planned(value: Any, name: str, path: Path) -> float | None:
    """A figure the plan may leave out (null: it could not time or size this machine)."""
    if value is None:
        return None
    if not _number(value) or value < 0:
        raise UsageError(f"{path}: {name} = {value!r} is not a number of 0 or more; {NOT_OURS}")
    return float(value)


def _figure(planned: float | None, actual: float | None, **more: Any) -> dict[str, Any]:
    """One row of the comparison; the ratio only where both sides are known."""
    ratio = None
    if planned and actual is not None:
        ratio = float(f"{actual / planned:.4g}")
    return {"planned": planned, "actual": actual, "ratio": ratio, **more}


# ---------------------------------------------------------------- the four figures

def _hours(here: dict[str, Any], record: dict[str, Any], sessions: list[dict[str, Any]], paths: tuple[Path, Path],
           ) -> dict[str, Any]:
    plan_path, path = paths
    planned = _planned(here.get("hours"), "this_machine.hours", plan_path)
    if not sessions:  # train.json from before sessions were recorded: only the kept steps' time is known
        seconds = _field(record, "train_seconds", path)
        return _figure(planned, seconds / 3600, in_steps=seconds / 3600,
                       measure="train.json has no sessions (an older tunesmith): the seconds in the steps the run "
                               "kept, without load, evals, checkpoints or redone steps")
    return _figure(planned, sum(s["wall_seconds"] for s in sessions) / 3600,
                   in_steps=sum(s["step_seconds"] for s in sessions) / 3600,
                   measure="wall time of every training process of the run (train.json sessions), from its start: "
                           "model load, data stage, steps, evals, checkpoints, and the steps a resume did again; "
                           "in_steps: the optimizer steps alone, which is what the plan's hours time")


def _speed(plan: dict[str, Any], here: dict[str, Any], record: dict[str, Any], paths: tuple[Path, Path],
           ) -> dict[str, Any]:
    plan_path, path = paths
    tokens, seconds = _field(record, "tokens", path), _field(record, "train_seconds", path)
    actual = tokens / seconds if seconds > 0 else None
    # The plan times this machine as tokens x executed FLOPs per token / flops_per_s
    # (planner.local_option), so its rate in tokens is the one division back.
    rate = _planned(here.get("flops_per_s"), "this_machine.flops_per_s", plan_path)
    work = plan.get("flops_per_token")
    work = _planned(work.get("executed") if isinstance(work, dict) else None, "flops_per_token.executed", plan_path)
    planned = rate / work if rate and work else None
    return _figure(planned, actual,
                   planned_from=("this_machine.flops_per_s / flops_per_token.executed: the rate the plan timed this "
                                 "machine at, over the work one token costs" if planned is not None else
                                 "the plan has no time for this machine (no flops_per_s)"),
                   measure="train.json tokens / train_seconds: every token of the steps the run kept, over the "
                           "seconds in those steps (a resumed run's steps counted once)")


def _peak(here: dict[str, Any], record: dict[str, Any], paths: tuple[Path, Path]) -> dict[str, Any]:
    plan_path, path = paths
    planned = _planned(here.get("peak_gb"), "this_machine.peak_gb", plan_path)
    planned_from = "this_machine.peak_gb"
    preflight = here.get("preflight")
    memory = preflight.get("memory_gb") if isinstance(preflight, dict) else None
    data = _planned(memory.get("data") if isinstance(memory, dict) else None,
                    "this_machine.preflight.memory_gb.data", plan_path)
    if here["device"]["type"] == "cpu" and planned is not None and data is not None:
        # A CPU's resident set holds the cleaned data and packed rows too; the pre-flight added them.
        planned = round(planned + data, 3)
        planned_from += " + this_machine.preflight.memory_gb.data (the data the loop keeps in memory)"
    measured = record.get("peak_memory")
    if measured is None:
        return _figure(planned, None, planned_from=planned_from,
                       measure="not measured: train.json has no peak_memory (an older tunesmith)")
    if not isinstance(measured, dict) or not _number(measured.get("gb")) or measured["gb"] < 0:
        raise UsageError(f"{path}: peak_memory is not {{\"gb\": a number, \"measure\": text}}; {NOT_OURS}")
    return _figure(planned, float(measured["gb"]), planned_from=planned_from, measure=str(measured.get("measure", "")))


def gpus_paid(device: dict[str, Any]) -> int:
    """The GPUs of the machine a run is billed for: every one it sees, or one per process
    when a multi-node run has more processes than this node has GPUs."""
    counts = [device.get("count"), device.get("processes")]
    return max([int(n) for n in counts if _number(n) and n >= 1] or [1])


def _cost(device: dict[str, Any], hours: dict[str, Any], pricing: str, prices: list[Price]) -> dict[str, Any]:
    def without(reason: str) -> dict[str, Any]:
        return _figure(None, None, pricing=pricing, reason=reason)

    if device["type"] == "cpu":
        return without("trained on a CPU: no GPU to pay for")
    gpu = device.get("catalog_gpu")
    if not gpu:
        return without(f"{device.get('name', 'this GPU')} is not in the GPU catalog, so it has no price")
    offer = cheapest(prices, gpu)[pricing]
    if offer is None:
        return without(f"no {pricing.replace('_', '-')} price for {gpu} in the price catalog")
    per_gpu_hour = mid(offer.spot if pricing == "spot" else offer.on_demand)
    gpus = gpus_paid(device)

    def dollars(value: float | None) -> float | None:
        return None if value is None else value * per_gpu_hour * gpus

    return _figure(dollars(hours["planned"]), dollars(hours["actual"]), pricing=pricing, gpu=gpu, gpus=gpus,
                   usd_per_gpu_hour=per_gpu_hour,
                   price_from=f"{offer.provider} as of {offer.as_of} (midpoint of the cheapest {pricing} offer)",
                   reason=None)


def _notes(device: dict[str, Any], record: dict[str, Any], sessions: list[dict[str, Any]]) -> list[str]:
    notes = []
    processes = device.get("processes")
    if _number(processes) and processes > 1:
        notes.append(f"{processes} training processes ({device.get('strategy')}): the plan's this_machine figures are "
                     "for one process alone on one device, so the ratios compare against that")
    if len(sessions) > 1:
        notes.append(f"{len(sessions)} sessions (resumed {len(sessions) - 1} times): hours count every session, the "
                     f"{redone_steps(sessions)} steps done again after a stop included; tokens/s counts each step once")
    if record.get("memory_changes"):
        notes.append("an out-of-memory error changed the setup mid-run (train.json memory_changes): the plan is for "
                     "the setup the run started with")
    if record.get("status") not in FINISHED:
        notes.append(f"the run is {record.get('status')}, not finished: the figures are for the part it did")
    return notes
