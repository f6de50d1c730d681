"""`tunesmith demo`: clean the bundled sample, train, evaluate, summarise."""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from tunesmith.config import RunConfig, build_config
from tunesmith.eval.run import evaluate_run
from tunesmith.io import write_json_atomic
from tunesmith.train.setup import TrainResult, train


def sample_path(name: str) -> Path:
    return Path(str(resources.files("tunesmith.demo") / "sample" / name))


def demo_config(out: Path, overrides: list[str] | None = None) -> RunConfig:
    raw = yaml.safe_load((Path(__file__).parent / "demo.yaml").read_text(encoding="utf-8"))
    raw["data"]["train"] = str(sample_path("train.jsonl"))
    raw["data"]["val"] = str(sample_path("val.jsonl"))
    raw.setdefault("output", {})["dir"] = str(out)
    return build_config(raw, overrides, where="demo config")


def run_demo(
    out: Path,
    overrides: list[str] | None = None,
    *,
    on_data: Callable[[dict[str, Any]], None] | None = None,
    on_trained: Callable[[TrainResult], None] | None = None,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_eval_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    cfg = demo_config(out, overrides)
    # The demo always starts over in its own folder; a different run there is still refused.
    result = train(cfg, progress=progress, on_log=on_log, on_data=on_data, same_run_restarts=True)
    if on_trained:
        on_trained(result)
    scores = evaluate_run(out, on_progress=on_eval_progress)
    summary = {
        "model": cfg.model.source,
        "method": cfg.method.name,
        "data": {key: result.data[key] for key in ("input_rows", "kept", "removed", "reasons", "fixes", "pii")},
        "base": scores["base"],
        "tuned": scores["tuned"],
        "n_eval": scores["n"],
        # the forgetting verdict, without the lists of failed item ids (scores.json has them)
        "general": {k: v for k, v in scores["general"].items() if k != "failed"} if scores["general"] else None,
        "train": {"steps": result.steps, "tokens": result.tokens,
                  "tokens_per_s": round(result.tokens_per_s, 1),
                  "final_loss": result.final_loss, "final_eval_loss": result.final_eval_loss},
        "wall_minutes": round((time.perf_counter() - start) / 60, 2),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary
