"""The tunesmith command line: each command parses, calls a stage, prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from tunesmith.errors import TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)
config_app = typer.Typer(no_args_is_help=True, help="Inspect run configs.")
app.add_typer(config_app, name="config")
out = Console()
err = Console(stderr=True)

SetOption = typer.Option(None, "--set", help="override a config field: section.key=value (repeatable)")


@config_app.command("show")
def config_show(config: Path, set_: Optional[list[str]] = SetOption) -> None:
    """Print the resolved config with every default written out."""
    from tunesmith.config import load_config

    out.print(load_config(config, set_).to_yaml(), end="", highlight=False, markup=False)


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Argument(None, help="run config (YAML); or use --model/--data/--out"),
    model: Optional[str] = typer.Option(None, help="hub id, folder, .gguf file or alias"),
    data: Optional[Path] = typer.Option(None, help="training file (JSONL)"),
    val: Optional[Path] = typer.Option(None, help="validation file; none: hold out a seeded split"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder"),
    set_: Optional[list[str]] = SetOption,
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Fine-tune a model: LoRA, QLoRA or full, into a run folder."""
    from tunesmith.config import build_config, load_config
    from tunesmith.train.loop import train

    quiet_transformers()
    flags = [f"model.source={model}"] * bool(model) + [f"data.train={data}"] * bool(data)
    flags += [f"data.val={val}"] * bool(val) + [f"output.dir={out_dir}"] * bool(out_dir)
    overrides = flags + list(set_ or [])
    if config is not None:
        cfg = load_config(config, overrides)
    else:
        if not (model and data and out_dir):
            raise TunesmithError("give a CONFIG file, or all of --model, --data and --out", exit_code=2)
        cfg = build_config({}, overrides, where="flags")
    result = train(cfg, progress=progress)
    eval_part = f", eval loss {result.final_eval_loss:.4f}" if result.final_eval_loss is not None else ""
    out.print(
        f"trained {result.steps} steps, {result.tokens:,} tokens at {result.tokens_per_s:,.0f} tokens/s; "
        f"final loss {result.final_loss:.4f}{eval_part} -> {result.run_dir}"
    )


@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="run folder written by `tunesmith train`"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Score base against tuned on the run's held-out rows."""
    from tunesmith.eval.run import evaluate_run

    quiet_transformers()
    scores = evaluate_run(run, set_, on_progress=_eval_progress)
    err.print()
    out.print(score_table(scores))
    out.print(f"outputs: {run / 'eval' / 'outputs.jsonl'}")


@app.command("demo")
def demo_cmd(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="run folder"),
    set_: Optional[list[str]] = SetOption,
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Validate the bundled sample, fine-tune SmolLM2-135M on CPU, compare base and tuned."""
    from tunesmith.demo.run import run_demo

    quiet_transformers()
    def validated(read: Any) -> None:
        total = len(read.kept) + len(read.removed)
        reasons = ", ".join(f"{k} {v}" for k, v in read.reasons().items()) or "none"
        out.print(f"[bold]1/3 data[/]: {total} rows, {len(read.kept)} kept, {len(read.removed)} removed ({reasons})")
        out.print("[bold]2/3 train[/]: LoRA on CPU (the first run converts the model once, ~30 s)")

    def trained(result: Any) -> None:
        out.print(f"    {result.steps} steps, {result.tokens:,} tokens at {result.tokens_per_s:,.0f} tokens/s")
        out.print("[bold]3/3 eval[/]: greedy answers from base and tuned on the held-out file")

    summary = run_demo(out_dir, set_, on_validated=validated, on_trained=trained, progress=progress,
                       on_eval_progress=_eval_progress)
    err.print()
    out.print(score_table({"base": summary["base"], "tuned": summary["tuned"], "n": summary["n_eval"]}))
    out.print(f"done in {summary['wall_minutes']:.1f} min; run folder: {out_dir} (summary.json, metrics.jsonl, eval/)")


def _eval_progress(name: str, done: int, total: int) -> None:
    err.print(f"\r  {name}: {done}/{total}", end="")


def score_table(scores: dict[str, Any]) -> Table:
    table = Table(title=f"base vs tuned on {scores['n']} held-out examples")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    table.add_column("change", justify="right")
    for metric in sorted(set(scores["base"]) | set(scores["tuned"])):
        b, t = scores["base"].get(metric), scores["tuned"].get(metric)
        change = f"{t - b:+.3f}" if b is not None and t is not None else ""
        table.add_row(metric, _fmt(b), _fmt(t), change)
    return table


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def quiet_libraries() -> None:
    """Keep the terminal for tunesmith's own progress: no per-tensor loading bars, and no
    deprecation chatter between peft and transformers that the user cannot act on."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def quiet_transformers() -> None:
    """Called by the commands that load models (importing transformers costs ~2 s)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main() -> None:
    quiet_libraries()
    try:
        app()  # standalone: click prints usage errors itself and exits 2
    except TunesmithError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
