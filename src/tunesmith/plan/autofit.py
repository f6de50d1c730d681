"""Auto-fit: when the pre-flight predicts a run does not fit the device it is on, the cheapest
change to its config that makes it fit with the pre-flight's headroom, or none.

Cheapest first, each step keeping the earlier ones:
  1. gradient checkpointing (~30% more compute, the activations of one hidden state per layer);
  2. a smaller micro-batch with more accumulation, the rows per optimizer step kept exactly
     (8x1 -> 4x2 -> 2x4 -> 1x8), so the schedule and the update stay the same: the step's loss
     is divided by the step's trained tokens, however it is cut. The micro-batches tried are
     the divisors of the rows per step below the configured one, largest first: 6x1 -> 3x2 ->
     2x3 -> 1x6 (a micro-batch that does not divide it would change the rows per step);
  3. on a GPU, and only where the config has `train.offload_activations`: the checkpointed
     activations in CPU memory (PCIe transfers each step), from the configured micro-batch
     down, since with them offloaded a larger micro-batch may fit again; on a CPU
     `train.release_freed_memory` (freed blocks back to the kernel at once: ~65% slower steps,
     the dearest), likewise from the configured micro-batch down.
Pure: the config and the device in, the changed fields and the planner's peaks out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from tunesmith.models.facts import model_facts
from tunesmith.plan.inputs import run_from_config
from tunesmith.plan.memory import GB, estimate
from tunesmith.plan.planner import fits_here

OFFLOAD = "offload_activations"
RELEASE = "release_freed_memory"


@dataclass(frozen=True)
class AutoFit:
    """What the search found. `changes`: field -> (before, after), empty when the run fits as
    configured or nothing fits; the peaks are the planner's, in GB."""

    fits: bool
    peak_gb: float  # as configured
    changes: dict[str, tuple[Any, Any]]
    fitted_peak_gb: float | None = None  # with the changes; None when nothing tried fits

    def values(self) -> dict[str, Any]:
        return {key: after for key, (_, after) in self.changes.items()}

    def record(self) -> dict[str, Any]:
        """As train.json and plan.json keep it."""
        return {"changes": {key: [before, after] for key, (before, after) in self.changes.items()},
                "predicted_gb": {"before": self.peak_gb, "after": self.fitted_peak_gb}}


def search(cfg: Any, device: Any, peak_of: Callable[[Any], float] | None = None) -> AutoFit:
    """The first config in `candidates` whose peak fits `device` with the pre-flight's
    headroom. `peak_of(cfg)` in bytes; default: the planner's peak for the device's type (the
    model's facts read once). The caller has checked that the planner can read the model."""
    peak_of = peak_of or planner_peak(cfg, device)
    before = peak_of(cfg)
    if fits_here(before, device):
        return AutoFit(True, _gb(before), {}, _gb(before))
    for change in candidates(cfg, device):
        peak = peak_of(with_values(cfg, change))
        if fits_here(peak, device):
            changes = {key: (_field(cfg, key), value) for key, value in change.items()}
            return AutoFit(True, _gb(before), changes, _gb(peak))
    return AutoFit(False, _gb(before), {})


def candidates(cfg: Any, device: Any) -> Iterator[dict[str, Any]]:
    """The changes to try, cheapest first (see the module's docstring); each holds only fields
    whose value it changes."""
    t = cfg.train
    rows = t.micro_batch * t.grad_accum
    smaller = [m for m in range(t.micro_batch - 1, 0, -1) if rows % m == 0]
    checkpointing = {} if t.gradient_checkpointing else {"train.gradient_checkpointing": True}
    if checkpointing:
        yield checkpointing
    for m in smaller:
        yield {**checkpointing, "train.micro_batch": m, "train.grad_accum": rows // m}
    last = OFFLOAD if device.type == "cuda" else RELEASE
    if last in type(t).model_fields and not getattr(t, last):
        for m in [t.micro_batch, *smaller]:
            batch = {} if m == t.micro_batch else {"train.micro_batch": m, "train.grad_accum": rows // m}
            yield {**checkpointing, f"train.{last}": True, **batch}


def planner_peak(cfg: Any, device: Any) -> Callable[[Any], float]:
    """The planner's predicted peak (bytes) of a config on `device`, as the pre-flight counts it
    before the data is counted."""
    facts = model_facts(cfg.model.source)

    def peak(candidate: Any) -> float:
        run = run_from_config(candidate, device=device.type, facts=facts, gpus=device.processes,
                              strategy=device.strategy)
        return estimate(run.facts, run.setup).peak

    return peak


def with_values(cfg: Any, values: dict[str, Any]) -> Any:
    """`cfg` with "section.field" set to each value, validated like any config."""
    return type(cfg).model_validate(set_fields(cfg.to_dict(), values))


def set_fields(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config tree with "section.field" set to each value."""
    out = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in tree.items()}
    for key, value in values.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def recorded_changes(record: Any) -> dict[str, tuple[Any, Any]] | None:
    """The changes an earlier auto-fit made, from its record in train.json; None when there are
    none or the record is not one this module writes (a hand-edited file)."""
    changes = record.get("changes") if isinstance(record, dict) else None
    if not isinstance(changes, dict) or not changes:
        return None
    if not all(isinstance(k, str) and k.count(".") == 1 and isinstance(v, list) and len(v) == 2
               for k, v in changes.items()):
        return None
    return {key: (before, after) for key, (before, after) in changes.items()}


def flags(changes: dict[str, tuple[Any, Any]]) -> str:
    """"train.gradient_checkpointing=true train.micro_batch=4 ..." as --set takes them."""
    return " ".join(f"{key}={str(after).lower() if isinstance(after, bool) else after}"
                    for key, (_, after) in changes.items())


def said(record: dict[str, Any], available_gb: float) -> str:
    """The one line `train` prints for a run auto-fit changed."""
    changes = recorded_changes(record) or {}
    before, after = record["predicted_gb"]["before"], record["predicted_gb"]["after"]
    line = f"pre-flight: ~{before:.1f} GB predicted of {available_gb:.1f} GB free: training with {flags(changes)} (~{after:.1f} GB)"
    if "train.micro_batch" in changes:
        (m0, m1), (a0, a1) = changes["train.micro_batch"], changes["train.grad_accum"]
        line += f"; {m0}x{a0} -> {m1}x{a1} rows per optimizer step: the same update"
    return line


def said_continued(record: dict[str, Any], peak_gb: float | None, available_gb: float) -> str:
    """The one line `train` prints when it continues a run auto-fit changed earlier."""
    line = f"pre-flight: continuing this run as auto-fit changed it: {flags(recorded_changes(record) or {})}"
    return line + (f" (~{peak_gb:.1f} GB predicted of {available_gb:.1f} GB free)" if peak_gb is not None else "")


def _field(cfg: Any, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def _gb(peak: float) -> float:
    return round(peak / GB, 2)
