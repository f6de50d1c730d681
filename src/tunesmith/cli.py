"""The tunesmith command line: each command parses, calls a stage, prints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith.errors import OutOfMemory, TunesmithError, UsageError, memory_kind

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
config_app = typer.Typer(no_args_is_help=True, help="Inspect run configs.")
app.add_typer(config_app, name="config")
data_app = typer.Typer(no_args_is_help=True, help="Check, clean, split and preview training data.")
app.add_typer(data_app, name="data")
out = Console(soft_wrap=True)  # a long line stays one line in a log (a terminal still wraps it)
err = Console(stderr=True)

def _print_version(value: bool) -> None:
    if value:
        from tunesmith import __version__

        out.print(f"tunesmith {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """From a JSONL file of examples to a fine-tuned, evaluated and served LLM, on a laptop CPU or cloud GPUs.
    Every command takes --help; `tunesmith config show CONFIG` prints every setting with its default."""


SetOption = typer.Option(None, "--set", help="override a config field: section.key=value (repeatable)")


@config_app.command("show")
def config_show(
    config: Optional[Path] = typer.Argument(None, help="run config (YAML); none: the defaults"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Print the resolved config with every default written out (`> run.yaml` starts a config)."""
    cfg = resolve_config(config, {}, {}, set_)
    out.print(cfg.to_yaml(), end="", highlight=False, markup=False)


# ---------------------------------------------------------------- data

ModelOption = typer.Option(None, "--model", help="count tokens in this model's tokenizer (hub id, folder, .gguf, alias)")
MaxSeqLenOption = typer.Option(None, "--max-seq-len", help="remove rows longer than this many tokens (default "
                               "train.max_seq_len, 512); without --model judged by a generous character estimate")
TaskTypeOption = typer.Option(None, "--task-type", help="task | conversational | domain | pretraining: volume guidance")
PiiOption = typer.Option(None, "--pii", help="redact (default): <EMAIL>-style placeholders; report: count only; drop: remove rows")
PiiNerOption = typer.Option(None, "--pii-ner/--no-pii-ner", help="also redact names and addresses (extra `ner`, ~100 rows/s)")
FixEncodingOption = typer.Option(None, "--fix-encoding/--no-fix-encoding", help="repair mojibake, control characters, odd whitespace")
DedupOption = typer.Option(None, "--dedup/--no-dedup", help="remove exact and near-duplicates (default on)")
ThresholdOption = typer.Option(None, "--near-dup-threshold", help="Jaccard similarity for near-duplicates (default 0.7)")
ShingleOption = typer.Option(None, "--shingle-size", help="words per shingle (default 3)")
SemanticOption = typer.Option(None, "--semantic-dedup/--no-semantic-dedup", help="also remove paraphrases (optional extra)")
DropOption = typer.Option(None, "--drop", help="warning codes that should remove rows, e.g. refusal,truncated")
KeepOption = typer.Option(None, "--keep", help="removal codes that should only warn, e.g. near_duplicate")
BalanceCapOption = typer.Option(None, "--balance-cap", help="keep at most N rows per category")
ConfigOption = typer.Option(None, "--config", help="take model, max_seq_len and the clean section from a run config")


# The options of `data check` and `data clean` that set a config field (parameter -> field).
CLEAN_FLAGS = {key: f"clean.{key}" for key in ("task_type", "pii", "pii_ner", "fix_encoding", "dedup",
               "near_dup_threshold", "shingle_size", "semantic_dedup", "drop", "keep", "balance_cap")}
CLEAN_FLAGS["max_seq_len"] = "train.max_seq_len"
# Flags whose name is not "--" + the parameter's name with dashes.
FLAG_NAMES = {"out_dir": "--out"}


def resolve_config(config: Optional[Path], args: dict[str, Any], fields: dict[str, str],
                   set_: Optional[list[str]] = None) -> Any:
    """The run config a command works with: CONFIG (or the defaults), the given flags
    (`fields`: parameter -> config field), then --set. Every value is checked by the config,
    so a flag has the config's bounds, and a wrong one is blamed on the flag that set it."""
    from tunesmith.config import build_config, load_config

    given = {param: args[param] for param in fields if args.get(param) is not None}
    overrides = flag_overrides(args, fields) + list(set_ or [])
    flags = {fields[param]: FLAG_NAMES.get(param, "--" + param.replace("_", "-")) for param in given}
    if config is not None:
        return load_config(config, overrides, flags=flags)
    return build_config({}, overrides, where="flags", flags=flags)


def flag_overrides(args: dict[str, Any], fields: dict[str, str]) -> list[str]:
    """The given flags as config overrides: ["train.max_seq_len=2048", ...]."""
    return [f"{field}={_as_yaml(args[param])}" for param, field in fields.items() if args.get(param) is not None]


def _clean_setup(args: dict[str, Any]) -> tuple[Any, Optional[str], int]:
    """From `data check`'s or `data clean`'s arguments: the run config, and the model and
    max_seq_len for lengths."""
    cfg = resolve_config(args["config"], args, CLEAN_FLAGS, args["set_"])
    model = args["model"] or (cfg.model.source if args["config"] else None)
    return cfg, model, cfg.train.max_seq_len


def _check_out(out_dir: Path, file: Path, writes: tuple[str, ...]) -> None:
    """Before any work: --out must be a folder that can be written, and must not hold the
    input under a name the command writes (the input would be replaced by its own result)."""
    import os

    from tunesmith.io import check_output_dir

    check_output_dir(out_dir, "--out")
    for name in writes:
        target = out_dir / name
        if target.is_file() and file.is_file() and os.path.samefile(target, file):
            raise UsageError(f"--out {out_dir}: writing {name} there would replace the input {file}; "
                             f"choose another folder")
        if target.exists() and not target.is_file():  # else found only after the first files are written
            raise UsageError(f"--out {out_dir}: {name} there is a folder or another non-file, which the output "
                             f"cannot replace; move it away or choose another folder")


def _as_yaml(value: Any) -> str:
    """A flag's value as the YAML text of an override. Text is quoted: a folder named
    `2024`, `null` or `yes` stays a path instead of becoming a number, nothing or true."""
    if isinstance(value, list):
        codes = [c.strip() for item in value for c in item.split(",") if c.strip()]
        return "[" + ", ".join(codes) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    return str(value)


def _run_clean(file: Path, cfg: Any, model: Optional[str], max_seq_len: int, show_stages: bool) -> Any:
    from tunesmith.data.clean import clean_file
    from tunesmith.io import require_file

    require_file(file, "data file")  # before a model loads: a wrong path is named at once, not after the load
    encoder = None
    if model:
        from tunesmith.data.tokens import token_encoder
        from tunesmith.models.tokenizer import load_target_tokenizer

        quiet_transformers()
        encoder = token_encoder(load_target_tokenizer(model, trust_remote_code=cfg.model.trust_remote_code),
                                cfg.data.train_on_inputs)
    on_stage = (lambda name: err.print(f"  {name}...", highlight=False)) if show_stages else None
    return clean_file(file, cfg.clean, encode=encoder, max_seq_len=max_seq_len, tokenizer_name=model,
                      seed=cfg.train.seed, on_stage=on_stage)


@data_app.command("check")
def data_check(
    file: Path = typer.Argument(..., help="JSONL, JSON array or CSV of examples"),
    model: Optional[str] = ModelOption,
    max_seq_len: Optional[int] = MaxSeqLenOption,
    task_type: Optional[str] = TaskTypeOption,
    json_out: bool = typer.Option(False, "--json", help="print report.json instead of a summary"),
    pii: Optional[str] = PiiOption,
    pii_ner: Optional[bool] = PiiNerOption,
    fix_encoding: Optional[bool] = FixEncodingOption,
    dedup: Optional[bool] = DedupOption,
    near_dup_threshold: Optional[float] = ThresholdOption,
    shingle_size: Optional[int] = ShingleOption,
    semantic_dedup: Optional[bool] = SemanticOption,
    drop: Optional[list[str]] = DropOption,
    keep: Optional[list[str]] = KeepOption,
    balance_cap: Optional[int] = BalanceCapOption,
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Report what cleaning would do; writes nothing. Exit 0: trainable; 1: not trainable; 2: usage error."""
    cfg, model, max_seq_len = _clean_setup(locals())
    result = _run_clean(file, cfg, model, max_seq_len, show_stages=not json_out)
    if json_out:
        print(json.dumps(result.report, indent=2, ensure_ascii=False))
    else:
        print_report(result.report, result.removed,
                     where=f"the first {REASON_EXAMPLES} of each code are above; `tunesmith data clean {file} --out DIR` "
                           f"writes every one to DIR/removed.jsonl")
    raise typer.Exit(0 if result.trainable else 1)


@data_app.command("clean")
def data_clean(
    file: Path = typer.Argument(..., help="JSONL, JSON array or CSV of examples"),
    out_dir: Path = typer.Option(..., "--out", help="folder for clean.jsonl, removed.jsonl, report.json, report.html"),
    model: Optional[str] = ModelOption,
    max_seq_len: Optional[int] = MaxSeqLenOption,
    task_type: Optional[str] = TaskTypeOption,
    pii: Optional[str] = PiiOption,
    pii_ner: Optional[bool] = PiiNerOption,
    fix_encoding: Optional[bool] = FixEncodingOption,
    dedup: Optional[bool] = DedupOption,
    near_dup_threshold: Optional[float] = ThresholdOption,
    shingle_size: Optional[int] = ShingleOption,
    semantic_dedup: Optional[bool] = SemanticOption,
    drop: Optional[list[str]] = DropOption,
    keep: Optional[list[str]] = KeepOption,
    balance_cap: Optional[int] = BalanceCapOption,
    config: Optional[Path] = ConfigOption,
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Write the kept rows (chat format), the removed rows with reasons, and a report."""
    from tunesmith.data.report import CLEAN_FILES, write_clean

    cfg, model, max_seq_len = _clean_setup(locals())
    _check_out(out_dir, file, CLEAN_FILES)
    result = _run_clean(file, cfg, model, max_seq_len, show_stages=True)
    write_clean(result, out_dir)
    print_report(result.report, result.removed, where=str(out_dir / "removed.jsonl"))
    out.print(escape(f"wrote {out_dir / 'clean.jsonl'} ({result.report['kept']} rows), "
                     f"{out_dir / 'removed.jsonl'} ({result.report['removed']}), report.json, report.html"),
              highlight=False)
    raise typer.Exit(0 if result.trainable else 1)


@data_app.command("split")
def data_split(
    file: Path = typer.Argument(..., help="examples to split (e.g. a clean.jsonl)"),
    out_dir: Path = typer.Option(..., "--out", help="folder for train.jsonl, val.jsonl, removed.jsonl, split.json"),
    val_fraction: float = typer.Option(0.1, help="share held out for validation, in (0, 1)"),
    max_val: Optional[int] = typer.Option(None, help="cap on validation rows (at least 1)"),
    subset: Optional[float] = typer.Option(None, help="also keep only this share of train, in (0, 1] (e.g. 0.1 to "
                                                      "iterate fast); the rest goes to rest.jsonl"),
    seed: int = typer.Option(42, help="same seed, same split"),
    near_dup_threshold: float = typer.Option(0.7, help="train rows this similar to a validation row are removed, "
                                                       "in (0, 1]"),
) -> None:
    """Seeded split, stratified by category, with no near-duplicate of a validation row in train."""
    from tunesmith.data.split import SPLIT_FILES, split_file

    _split_flags(locals())
    _check_out(out_dir, file, SPLIT_FILES)
    summary = split_file(file, out_dir, val_fraction=val_fraction, max_val=max_val, subset_fraction=subset,
                         seed=seed, leak_threshold=near_dup_threshold)
    print_split(summary, out_dir)


# `data split` flags that are fields of the run config: checked there, with the config's bounds.
SPLIT_FLAGS = {"val_fraction": "data.val_fraction", "max_val": "data.max_val_examples", "seed": "train.seed",
               "near_dup_threshold": "clean.near_dup_threshold"}


def _split_flags(args: dict[str, Any]) -> None:
    """Refuse nan, inf and out-of-range values naming the flag, before any work."""
    import math

    resolve_config(None, args, SPLIT_FLAGS)
    subset = args["subset"]
    if subset is not None and not (math.isfinite(subset) and 0 < subset <= 1):
        raise UsageError(f"--subset {subset:g}: must be a share of the training rows in (0, 1], e.g. 0.1")


def print_split(summary: dict[str, Any], out_dir: Path) -> None:
    out.print(escape(f"train {summary['train']} rows, val {summary['val']} rows, removed {summary['removed']} "
                     f"({counts(summary['reasons'])}) -> {out_dir}"), highlight=False)
    if summary["subset"]:
        out.print(escape(f"rest: {summary['not_in_subset']} training rows left out by --subset {summary['subset']:g} "
                         f"-> {out_dir / 'rest.jsonl'}"), highlight=False)
    if summary["val"] >= summary["train"]:
        cause = f" (--subset {summary['subset']:g} takes a share of the training rows only)" if summary["subset"] else ""
        out.print(f"[yellow]warning:[/] validation ({summary['val']} rows) is not smaller than training "
                  f"({summary['train']} rows){cause}: eval will cost more than it should and the model learns from "
                  f"fewer rows; lower --val-fraction or cap it with --max-val", highlight=False)


@data_app.command("preview")
def data_preview(
    file: Path = typer.Argument(..., help="examples to render"),
    model: str = typer.Option(..., "--model", help="the model whose chat template and tokenizer to use"),
    n: int = typer.Option(5, "-n", min=1, help="how many examples (at least 1)"),
    train_on_inputs: bool = typer.Option(False, help="also train on prompt tokens (as data.train_on_inputs)"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="a row whose characters cannot fit in this "
                                              "many tokens is not shown (default train.max_seq_len, 512)"),
) -> None:
    """Show examples through the chat template with the trained tokens marked ⟦so⟧, EOS included."""
    from tunesmith.data.formats import read_examples, summarise_reasons
    from tunesmith.data.preview import Skipped, preview_rows
    from tunesmith.errors import DataError
    from tunesmith.models.tokenizer import load_target_tokenizer

    limit = resolve_config(None, {"max_seq_len": max_seq_len}, {"max_seq_len": "train.max_seq_len"}).train.max_seq_len
    read = read_examples(file)
    if not read.kept:
        raise DataError(f"{file}: no row can be previewed: all {len(read.removed)} rows were removed: "
                        f"{summarise_reasons(read.removed)}")
    quiet_transformers()
    tokenizer = load_target_tokenizer(model)
    out.print("legend: [green]⟦trained⟧[/] masked (not trained); EOS shown as its token", highlight=False)
    missing_eos = refused = 0
    for preview in preview_rows(tokenizer, read.kept[:n], train_on_inputs=train_on_inputs, max_seq_len=limit):
        if isinstance(preview, Skipped):
            refused += preview.reason.startswith("template_error")
            out.rule(f"line {preview.line}: not shown")
            out.print(preview.reason, highlight=False, markup=False)
            continue
        missing_eos += not preview.eos_trained
        out.rule(f"line {preview.line}: {preview.tokens} tokens, {preview.trained} trained, "
                 f"EOS {'trained' if preview.eos_trained else 'NOT trained'}")
        out.print(render_spans(preview.spans), end="\n", highlight=False)
    if refused:
        raise TunesmithError(f"the chat template of {model} refuses {refused} example(s) (reasons above): training "
                             f"removes them as template_error")
    if missing_eos:
        raise TunesmithError(f"{missing_eos} example(s) end without a trained EOS: the tuned model would not stop")


def render_spans(spans: list[Any]) -> Any:
    from rich.text import Text

    text = Text()
    for span in spans:
        if span.trained:
            text.append("⟦" + span.text + "⟧", style="bold green")
        else:
            text.append(span.text, style="dim")
    return text


REASON_EXAMPLES = 3  # removed rows shown per reason code


def print_report(report: dict[str, Any], removed: list[dict[str, Any]], where: str,
                 examples_per_reason: int = REASON_EXAMPLES) -> None:
    """The report as `data check` and `data clean` print it; `where`: where the reasons of
    every removed row can be read (the command says: check writes nothing)."""
    from tunesmith.data.formats import reason_code

    # Escaped: a file name or a category is the user's text, and "[/x]" in it is rich markup.
    out.print(f"[bold]{escape(report['file'])}[/]: {report['file_format']}, rows as {counts(report['formats'])}",
              highlight=False)
    out.print(f"{report['input_rows']} rows: {report['kept']} kept, {report['removed']} removed", highlight=False)
    examples: dict[str, list[str]] = {}
    for row in removed:
        for reason in row["reasons"]:
            shown = examples.setdefault(reason_code(reason), [])
            if len(shown) < examples_per_reason:
                shown.append(f"    line {row['line']}: {reason}")
    for code, count in report["reasons"].items():
        out.print(f"  removed {code}: {count}", highlight=False)
        for line in examples[code]:
            out.print(line, highlight=False, markup=False)
    for kind in ("warnings", "fixes"):
        if report[kind]:
            out.print(f"{kind}: {counts(report[kind])}", highlight=False)
    if report["pii"]:
        out.print(f"PII ({report['pii_mode']}): {counts(report['pii'])}", highlight=False)
    if report["tokens"]:
        t = report["tokens"]
        out.print(f"tokens ({escape(str(t['tokenizer']))}): p10 {t['p10']}, p50 {t['p50']}, p90 {t['p90']}, max {t['max']}; "
                  f"{t['per_epoch']:,} per epoch ({t['trained_per_epoch']:,} trained)", highlight=False)
    b = report["balance"]
    top = counts(dict(list(b["counts"].items())[:5]))
    out.print(f"balance by {b['field']} ({b['groups']} groups): {top}", highlight=False, markup=False)
    if report["volume"] and report["volume"]["verdict"] == "within":  # otherwise it is a note below
        out.print(f"volume: {report['volume']['advice']}", highlight=False)
    for note in report["notes"]:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if report["trainable"]:
        out.print(f"[green]trainable[/]: {report['kept']} rows", highlight=False)
    for reason in report["blocking"]:
        out.print(f"[red]not trainable:[/] {escape(reason)}", highlight=False)
    if report["blocking"] and report["removed"]:
        out.print(f"reasons per line: {escape(where)}", highlight=False)


# `tunesmith train` flags that set a run-config field (the rest: --set, see `config show`).
TRAIN_FLAGS = {"model": "model.source", "data": "data.train", "val": "data.val", "out_dir": "output.dir",
               "method": "method.name", "epochs": "train.epochs", "lr": "train.lr", "lora_r": "method.r"}


@app.command("train")
def train_cmd(
    config: Optional[Path] = typer.Argument(None, help="run config (YAML); or use --model/--data/--out"),
    model: Optional[str] = typer.Option(None, help="hub id, folder, .gguf file or alias"),
    data: Optional[Path] = typer.Option(None, help="training file (JSONL, JSON array or CSV)"),
    val: Optional[Path] = typer.Option(None, help="validation file; none: hold out a seeded split"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder"),
    method: Optional[str] = typer.Option(None, help="lora | qlora (CUDA GPU) | full"),
    epochs: Optional[str] = typer.Option(
        None, help="passes over the data (fractions allowed), or auto (the default: 3, 2 or 1 by training "
                   "tokens per epoch)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (default 2e-4 LoRA, 2e-5 full)"),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank (default 16)"),
    set_: Optional[list[str]] = SetOption,
    restart: bool = typer.Option(False, "--restart", help="delete the run already in --out and start over"),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="continue from this checkpoint (RUN/checkpoints/step-N); by default the same "
                               "command continues from the newest complete one"),
    progress: bool = typer.Option(True, help="show a progress bar (without a terminal: one line per logged step)"),
    preflight: bool = typer.Option(True, help="a run the planner predicts will not fit this machine trains with "
                                   "the cheapest change that fits (train.auto_fit) or is refused; off: train as is"),
    nproc: Optional[int] = typer.Option(
        None, "--nproc", min=1, help="training processes on this machine, one per GPU (default: every visible GPU; "
                                     "1 on a CPU), started through accelerate's launcher; see distributed.strategy"),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="machines in the run; each runs this same command with "
                                                          "its own --node-rank"),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="this machine's number, 0 to --nnodes minus 1"),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="with --nnodes > 1: the address of the "
                                                                           "machine with --node-rank 0"),
    master_port: Optional[int] = typer.Option(None, "--master-port", min=1, max=65535,
                                              help="its port (default: 29500 across machines, a free one on one)"),
) -> None:
    """Fine-tune a model: LoRA, QLoRA or full, into a run folder. Run the same command again
    after a kill or a preemption and it continues from the newest checkpoint. Every other
    setting: --set section.key=value; `tunesmith config show` lists them all with their defaults."""
    from tunesmith.plan.actual import pricing_from_env
    from tunesmith.train.setup import train

    quiet_transformers()
    if config is None and not (model and data and out_dir):
        raise UsageError("give a CONFIG file, or all of --model, --data and --out")
    if restart and resume is not None:
        raise UsageError("--restart deletes the run that --resume would continue: give one of them")
    if node_rank >= nnodes:
        raise UsageError(f"--node-rank {node_rank}: give 0 to {nnodes - 1} (--nnodes {nnodes})")
    pricing_from_env()  # a bad TUNESMITH_PRICING is refused now, not after the run it would price
    cfg = resolve_config(config, locals(), TRAIN_FLAGS, set_)
    working_in(Path(cfg.output.dir), "run the same command again to continue from the newest checkpoint")
    start_workers(cfg, nproc, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port)
    bar = progress and err.is_terminal
    result = train(cfg, progress=bar, preflight=preflight, restart=restart, resume=resume,
                   on_preflight=print_preflight, on_note=print_note,
                   on_log=print_log_line if progress and not bar else None,
                   on_data=lambda report: out.print(
                       f"data: {data_summary(report)}; report: {Path(cfg.output.dir) / 'data' / 'report.html'}",
                       highlight=False))
    if result.status in ("completed", "stopped_early") and result.steps and result.data:
        print_trained(result)
        if result.plan_vs_actual:
            print_plan_vs_actual(result.plan_vs_actual, Path(cfg.output.dir) / "plan_vs_actual.json")


def start_workers(cfg: Any, nproc: Optional[int], **machines: Any) -> None:
    """With more than one process to run, start them through accelerate's launcher (each runs
    this same command line) and exit with their exit code; inside a worker, or with one
    process, return and train here."""
    from tunesmith.train import distributed

    if distributed.launched():
        distributed.quiet_worker(distributed.world_from_env())
        return
    device_type = distributed.default_device_type()
    visible = distributed.default_nproc()  # every GPU, or 1 on a CPU
    count = nproc if nproc is not None else visible
    gpus = visible if device_type == "cuda" else 0
    if gpus and count > gpus:
        raise UsageError(f"--nproc {count}: this machine has {gpus} GPU{'s' if gpus > 1 else ''}: one process each "
                         f"(give --nproc {gpus} or fewer)")
    if count == 1 and machines["nnodes"] == 1:
        return
    world = distributed.World(size=count * machines["nnodes"])
    # Refused once, before any worker starts.
    strategy = distributed.check_strategy(cfg.distributed.strategy, world, device_type, cfg.method.name)
    out.print(f"training with {world.size} processes (distributed.strategy {strategy}) through accelerate's launcher",
              highlight=False)
    raise typer.Exit(distributed.launch(distributed.launcher_args(count, sys.argv[1:], **machines)))


def print_trained(result: Any) -> None:
    eval_part = f", eval loss {result.final_eval_loss:.4f}" if result.final_eval_loss is not None else ""
    early = (f" (stopped early: {result.steps} of {result.steps_planned} planned)"
             if result.status == "stopped_early" else "")
    out.print(
        f"trained {result.steps} steps{early}, {result.tokens:,} tokens at {result.tokens_per_s:,.0f} tokens/s; "
        f"final loss {result.final_loss:.4f}{eval_part} -> {result.run_dir}", highlight=False)
    if result.best_step is not None:
        out.print(f"kept the weights of step {result.adapter_step}, the lowest eval loss", highlight=False)


def print_plan_vs_actual(c: dict[str, Any], where: Path | str) -> None:
    """What the plan predicted for this machine next to what the run measured, one row each."""
    from rich import box

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=f"plan vs actual ({where})", title_justify="left")
    for column in ("", "planned", "actual", "actual/planned"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [("time", c["hours"], _hours), ("peak memory (GB)", c["peak_memory_gb"], _gb),
            ("tokens/s", c["tokens_per_s"], lambda v: f"{v:,.0f}")]
    cost = c["cost_usd"]
    if cost["actual"] is not None:  # else its reason is said below
        rows.append((f"cost ({cost['pricing'].replace('_', '-')}, {cost['gpus']} x {cost['gpu']})", cost, _money))
    for name, figure, shown in rows:
        planned, actual, ratio = figure["planned"], figure["actual"], figure["ratio"]
        table.add_row(name, "" if planned is None else shown(planned), "" if actual is None else shown(actual),
                      "" if ratio is None else f"{ratio:.3g}")
    out.print(table)
    explained = [f"time counts the whole process (load, data, evals, checkpoints); "
                 f"{_hours(c['hours']['in_steps'])} of it in the steps the plan times"]
    if cost.get("reason"):
        explained.append(f"cost: {cost['reason']}")
    out.print(f"[dim]{escape('; '.join(explained + c['notes']))}[/]", highlight=False)


def print_note(text: str) -> None:
    out.print(f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True)


def print_log_line(record: dict[str, Any]) -> None:
    """Without a terminal (CI, nohup, a cloud job's log) a progress bar prints nothing: one
    plain line per logged step instead."""
    parts = [f"step {record['step']}", f"loss {record['loss']:.4f}"]
    if "eval_loss" in record:
        parts.append(f"eval_loss {record['eval_loss']:.4f}")
    parts += [f"lr {record['lr']:.3g}", f"{record['tokens_per_s']:,.0f} tokens/s", f"{record['elapsed']:.0f}s"]
    print("train: " + "  ".join(parts), flush=True)


def print_preflight(check: dict[str, Any]) -> None:
    """The memory verdict on one line, warnings one line each, the other checks in a row."""
    d = check["device"]
    if check["fits"] is None:
        out.print(f"[dim]{check['reason']}[/]", highlight=False)
    elif check.get("auto_fit_said") and check["fits"]:
        out.print(check["auto_fit_said"], highlight=False, soft_wrap=True)
    else:
        verdict = "fits" if check["fits"] else "[red]predicted not to fit; training anyway (--no-preflight)[/]"
        out.print(f"pre-flight: peak ~{check['peak_gb']:.1f} GB of {d['available_gb']:.1f} GB free on {d['name']} "
                  f"(10% kept free): {verdict}", highlight=False)
    others = [item for item in check.get("checklist", []) if item["check"] != "memory"]
    for item in others:
        if item["status"] == "warn":
            out.print(f"[yellow]pre-flight warning:[/] {item['check']}: {escape(item['detail'])}", highlight=False)
    quiet = [f"{item['check']} {item['status']}" for item in others if item["status"] != "warn"]
    if quiet:
        out.print(f"[dim]pre-flight checks: {', '.join(quiet)} (all in RUN/plan.json)[/]", highlight=False)


@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="run folder written by `tunesmith train`"),
    data: Optional[Path] = typer.Option(None, "--data", help="a curated eval file (any format `data check` reads; "
                                        "the guide: 100-200 real production examples); default: the run's held-out rows"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="score a checkpoint instead of the kept "
                                             "adapter: a step number or a RUN/checkpoints/step-NNNNNN folder"),
    compare: Optional[Path] = typer.Option(None, "--compare", help="another run folder whose tuned model answers "
                                           "the same prompts (LoRA vs full, r16 vs r32)"),
    general: Optional[bool] = typer.Option(None, "--general/--no-general", help="also score the shipped general "
                                           "set to catch forgetting (eval.general; default on)"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Score base against tuned (and another run) on the same prompts; flag forgetting."""
    from tunesmith.eval.run import evaluate_run

    quiet_transformers()
    working_in(run, "run the same command again to evaluate from the start")
    overrides = list(set_ or []) + ([f"eval.general={str(general).lower()}"] if general is not None else [])
    scores = evaluate_run(run, overrides, data=data, checkpoint=checkpoint, compare=compare,
                          on_progress=_eval_progress, on_note=print_note)
    err.print()
    out.print(score_table(scores))
    out.print(f"[dim]{escape(scores['caveat'])}[/]", highlight=False)
    if scores["categories"]:
        out.print(category_table(scores))
    if scores["general"]:
        print_forgetting(scores["general"])
    out.print(f"outputs: {run / 'eval' / 'outputs.jsonl'}; report: {run / 'eval' / 'report.html'}", highlight=False)
    out.print(f"next: have domain experts compare the answers blind: tunesmith review {run} --raters NAME,NAME",
              highlight=False)


def print_forgetting(general: dict[str, Any]) -> None:
    models = [m for m in ("base", "tuned", "compare") if m in general]
    shares = ", ".join(f"{m} {general[m]:.3f}" for m in models)
    line = f"general set ({general['n']} items: facts, arithmetic, formats): passed {shares}"
    if general["flagged"]:
        out.print(f"[red]forgetting:[/] {line}; {escape(general['advice'])}", highlight=False)
    else:
        out.print(f"{line}: no drop above {general['threshold']:g}", highlight=False)
    if general.get("noise") and general["drop"]:
        out.print(f"[dim]  {escape(general['noise'])}[/]", highlight=False)


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="run folder written by `tunesmith train`, or its adapter folder alone "
                          "(the base is the one its tunesmith.json names)"),
    out_dir: Path = typer.Option(..., "--out", help="folder to write (new, empty, or an earlier export of RUN, "
                                 "which it replaces)"),
    adapter_only: bool = typer.Option(False, "--adapter-only", help="write the LoRA adapter (for peft) instead "
                                      "of merging it into the base"),
    check: int = typer.Option(8, "--check", min=0, help="held-out prompts whose greedy answers the exported "
                              "folder must reproduce (0: skip the check)"),
    gguf_type: Optional[str] = typer.Option(None, "--gguf", help="also write DIR/<run>-<type>.gguf for llama.cpp "
                                            "and Ollama: f16 or q8_0 (8-bit, about half the size)"),
) -> None:
    """Write the tuned model as a folder plain transformers loads: LoRA merged into the base
    (safetensors shards), the tokenizer with its chat template, a generation config that stops
    at the trained end-of-turn token. Checks that the folder answers as the run's model does.
    --gguf also writes one GGUF file and checks it loaded back from the file alone."""
    from tunesmith.serve.export import export_run
    from tunesmith.serve.gguf import check_type

    check_type(gguf_type, adapter_only=adapter_only)
    quiet_transformers()
    working_in(run, "nothing was written to --out; run the same command again")
    record = export_run(run, out_dir, adapter_only=adapter_only, check=check, gguf_type=gguf_type,
                        on_note=print_note)
    if record["checked"]:
        out.print(f"greedy answers: {record['identical']} of {record['checked']} identical to {record['against']}",
                  highlight=False)
    else:
        out.print("greedy check skipped (--check 0)", highlight=False)
    what = "adapter" if adapter_only else "merged model" if record["merged"] else "model"
    out.print(f"exported the {what} ({record['dtype']}) -> {out_dir}", highlight=False)
    if gguf_type:
        gguf = record["gguf"]
        size = f"{gguf['bytes'] / 1e6:.1f} MB" if gguf["bytes"] >= 1e6 else f"{gguf['bytes'] / 1e3:.1f} kB"
        check_line = (f"greedy answers {gguf['identical']} of {gguf['checked']} identical to {record['against']}"
                      if gguf["checked"] else "greedy check skipped (--check 0)")
        out.print(f"gguf ({gguf['type']}, {size}) -> {out_dir / gguf['file']}; loaded back from the file alone: "
                  f"same chat template and prompt ids, {check_line}", highlight=False)


@app.command("deploy")
def deploy_cmd(
    run: Path = typer.Argument(..., help="run folder written by `tunesmith train`"),
    target: str = typer.Option(..., "--target", help="vllm: print the `vllm serve` command; sky: write a SkyPilot "
                               "service YAML (RUN/deploy/service.yaml) on the inference GPU the planner picks"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="with sky: serve on this catalog GPU (default: the "
                                      "cheapest priced one that fits)"),
    context: Optional[int] = typer.Option(None, "--context", min=16, help="tokens per sequence, prompt + answer "
                                          "(vLLM's --max-model-len; default: the run's train.max_seq_len)"),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="with sky: sequences served at once, for "
                                    "sizing the GPU"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="the port vLLM listens on"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="with sky: the YAML file to write (default: "
                                            "RUN/deploy/service.yaml)"),
) -> None:
    """Serve a finished run with vLLM: the base with the adapter (checked against vLLM's
    limits) on this machine (--target vllm), or as a SkyPilot service on a cloud GPU
    (--target sky). The API key comes from VLLM_API_KEY; it is never written to a file."""
    from tunesmith.io import write_text_atomic
    from tunesmith.serve.deploy import (client_example, command_line, pick_gpu, read_served, service_config,
                                        service_yaml, vllm_args)

    if target not in ("vllm", "sky"):
        raise UsageError(f"--target {target}: not a target; choose vllm (print the command) or sky (write a "
                         "SkyPilot service YAML)")
    if target == "vllm" and (gpu is not None or out_file is not None):
        raise UsageError("--gpu and --out go with --target sky: --target vllm prints a command for this machine")
    out_path = out_file if out_file is not None else run / "deploy" / "service.yaml"
    if target == "sky" and out_path.is_dir():
        raise UsageError(f"--out {out_path}: is a folder; give the YAML file to write, e.g. {out_path / 'service.yaml'}")
    served = read_served(run, context=context)
    for note in served.notes:  # on stderr: stdout stays a script (`tunesmith deploy RUN --target vllm > serve.sh`)
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if target == "vllm":
        out.print(command_line(vllm_args(served, port=port)), highlight=False, soft_wrap=True)
        out.print(f"# then, with the same VLLM_API_KEY set: {client_example(served, f'http://127.0.0.1:{port}')}",
                  highlight=False, soft_wrap=True)
        return
    row = pick_gpu(served, gpu=gpu, context=served.max_model_len, concurrency=concurrency)
    config = service_config(served, row, port=port)
    write_text_atomic(out_path, service_yaml(served, row, config, run, out_path))
    out.print(f"wrote {out_path} (1 x {row['gpu']}, vLLM on port {port}); start it with the key in VLLM_API_KEY:",
              highlight=False)
    out.print(f"sky serve up {out_path} -n {config['name']} --secret VLLM_API_KEY", highlight=False, soft_wrap=True)
    out.print(f"# then ENDPOINT=$(sky serve status {config['name']} --endpoint) and: "
              f"{client_example(served, '$ENDPOINT')}", highlight=False, soft_wrap=True)


@app.command("launch")
def launch_cmd(
    config: Path = typer.Argument(..., help="run config (YAML): what the cloud machine trains; its output.dir is RUN"),
    spot: bool = typer.Option(True, "--spot/--on-demand", help="spot GPUs (the default: cheaper; a preemption resumes "
                              "from the newest checkpoint on a new machine) or on-demand"),
    gpu: str = typer.Option("auto", "--gpu", help="auto: the planner's GPUs that fit, cheapest first (SkyPilot takes "
                            "the cheapest it can get); or a GPU from `tunesmith gpus`, with :N for N of them, e.g. H100:8"),
    bucket: Optional[str] = typer.Option(None, "--bucket", help="an existing bucket for the run folder (s3://NAME, "
                                         "gs://NAME/PREFIX, ...): mounted on the cloud machine, the run lives there"),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="training tokens per epoch, e.g. 20M (default: counted "
                                         "in data.train with the model's tokenizer)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="write RUN/launch/task.yaml, check it with SkyPilot's parser "
                                 "and print the cost and the `sky jobs launch` command; launch nothing"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Train on cloud GPUs as a SkyPilot managed job: spot by default, the run folder in your
    bucket, the same `tunesmith train` rerun after each preemption (it resumes). Writes
    RUN/launch/ (task.yaml, the config, this tunesmith as a wheel) and submits the job."""
    from tunesmith.cloud.launch import differences, mark_launched, missing_secrets, prepare, write_launch
    from tunesmith.cloud.skypilot import INSTALL, failed, find_sky, parse_task, require_sky, run_sky

    sky = find_sky() if dry_run else require_sky()
    cfg = resolve_config(config, {}, {}, set_)
    quiet_transformers()
    launch = prepare(cfg, spot=spot, gpu=gpu, bucket=bucket, tokens=tokens)
    record = write_launch(launch, str(config))
    out.print(f"wrote {launch.task_file}: {launch.name} on {'spot' if spot else 'on-demand'} "
              + ", ".join(f"{c.count} x {c.gpu}" for c in launch.picks)
              + f", {launch.disk_gb} GB disk, the run folder in {launch.run_bucket}", highlight=False)
    out.print(f"estimate: {launch.estimate}; tokens from {launch.tokens_from}", highlight=False)
    if sky is None:
        err.print(f"[yellow]warning:[/] task.yaml not checked: SkyPilot is not installed here: {escape(INSTALL)}",
                  highlight=False, soft_wrap=True)
    else:
        parsed = parse_task(launch.task_file, sky)
        wrong = differences(parsed, launch)
        if wrong:
            raise TunesmithError(f"SkyPilot reads {launch.task_file} differently from what tunesmith meant: "
                                 f"{'; '.join(wrong)}; this is a bug in tunesmith, please report it")
        out.print(f"SkyPilot {parsed['version']} accepts it", highlight=False)
    command = record["command"]
    if dry_run:
        out.print("launch it with:", highlight=False)
        out.print(" ".join(command), highlight=False, soft_wrap=True)
        for name in missing_secrets(launch.secrets):
            out.print(f"[dim]({name} is passed from this shell: export {name}=... first)[/]", highlight=False)
        return
    for name in missing_secrets(launch.secrets):
        err.print(f"[yellow]warning:[/] {name} is not set here: the job starts without it"
                  + (" (a gated model such as Llama or Gemma will not download)" if name == "HF_TOKEN" else ""),
                  highlight=False, soft_wrap=True)
        at = command.index(name)
        command = command[: at - 1] + command[at + 1:]
    code = run_sky(command[1:], sky)
    if code != 0:
        raise failed("sky jobs launch", code)
    mark_launched(launch.run_dir, record)
    run = launch.run_dir
    out.print(f"submitted {launch.name}: tunesmith status {run} | tunesmith logs {run} | tunesmith pull {run} "
              f"| tunesmith down {run}", highlight=False, soft_wrap=True)


@app.command("status")
def status_cmd(run: Path = typer.Argument(..., help="a run folder `tunesmith launch` wrote (the config's output.dir)")) -> None:
    """The cloud run's job as SkyPilot lists it (`sky jobs queue`): status, duration, recoveries."""
    from tunesmith.cloud.launch import read_record
    from tunesmith.cloud.skypilot import capture_sky, failed, job_rows, require_sky

    record = read_record(run)
    done = capture_sky(["jobs", "queue"], require_sky())
    if done.returncode != 0:
        err.print(done.stdout + done.stderr, highlight=False, markup=False)
        raise failed("sky jobs queue", done.returncode)
    rows = job_rows(done.stdout, record["job"])
    out.print(f"{record['job']}: run folder {record['bucket']}; estimate {record['estimate']}", highlight=False)
    if not rows:
        out.print(f"SkyPilot lists no job named {record['job']}"
                  + (" (it was never submitted: --dry-run)" if not record.get("launched_at") else ""), highlight=False)
        raise typer.Exit(1)
    out.print("\n".join(rows), highlight=False, markup=False)


@app.command("logs")
def logs_cmd(
    run: Path = typer.Argument(..., help="a run folder `tunesmith launch` wrote"),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="keep printing as the job writes (Ctrl-C stops "
                                "printing, not the job)"),
) -> None:
    """The cloud run's output, from SkyPilot (`sky jobs logs`)."""
    from tunesmith.cloud.launch import read_record
    from tunesmith.cloud.skypilot import failed, require_sky, run_sky

    record = read_record(run)
    code = run_sky(["jobs", "logs", "--name", record["job"], *([] if follow else ["--no-follow"])], require_sky())
    if code != 0:
        raise failed("sky jobs logs", code)


@app.command("down")
def down_cmd(run: Path = typer.Argument(..., help="a run folder `tunesmith launch` wrote")) -> None:
    """Stop the cloud run and release its GPUs, after the bucket has everything the run
    wrote (`sky jobs cancel --graceful`). `tunesmith launch` again continues it."""
    from tunesmith.cloud.launch import read_record
    from tunesmith.cloud.skypilot import failed, require_sky, run_sky

    record = read_record(run)
    code = run_sky(["jobs", "cancel", "--name", record["job"], "--graceful", "--yes"], require_sky())
    if code != 0:
        raise failed("sky jobs cancel", code)
    out.print(f"{record['job']} cancelled; its run folder stays in {record['bucket']}: tunesmith pull {run}",
              highlight=False)


@app.command("pull")
def pull_cmd(
    run: Path = typer.Argument(..., help="a run folder `tunesmith launch` wrote"),
    from_: Optional[str] = typer.Option(None, "--from", help="pull from this folder (a mounted or downloaded copy of "
                                        "the bucket's run folder) instead of the bucket in RUN/launch/launch.json"),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="also the checkpoints (to continue training here)"),
) -> None:
    """Bring the cloud run's folder back into RUN: adapter, metrics, train.json, plan, data
    report (and with --checkpoints, the checkpoints). Files already here unchanged are skipped."""
    from tunesmith.cloud.launch import read_record
    from tunesmith.cloud.pull import pull
    from tunesmith.cloud.skypilot import find_sky

    record = read_record(run) if from_ is None or (run / "launch" / "launch.json").is_file() else {}
    source = from_ if from_ is not None else record["bucket"]
    sky = find_sky()
    pulled = pull(run, source, checkpoints=checkpoints, tool_dirs=(sky.resolve().parent,) if sky else ())
    copied = "" if pulled.copied is None else f"{pulled.copied} file{'s' if pulled.copied != 1 else ''} copied, "
    out.print(f"pulled {pulled.source} into {run}: {copied}{pulled.total_bytes / 1e6:,.1f} MB there now", highlight=False)
    print_pulled_run(run)
    print_pulled_comparison(run, record.get("pricing"))


def print_pulled_comparison(run: Path, pricing: Optional[str]) -> None:
    """The run's plan vs actual as it wrote it when it ended; for a run still going, its
    figures so far (priced as launched), printed and not written: the file is the run's."""
    from tunesmith.plan.actual import FILE, plan_vs_actual

    written = run / FILE
    if not ((run / "train.json").is_file() and (run / "plan.json").is_file()):
        return
    try:
        comparison = json.loads(written.read_text(encoding="utf-8")) if written.is_file() else None
        if comparison is None or not comparison.get("complete"):
            comparison = plan_vs_actual(run, pricing=pricing)
    except (TunesmithError, OSError, ValueError) as e:
        err.print(f"[yellow]warning:[/] no plan vs actual: {escape(str(e))}", highlight=False, soft_wrap=True)
        return
    print_plan_vs_actual(comparison, written if comparison.get("complete") else f"{run}, so far")


def print_pulled_run(run: Path) -> None:
    """What the pulled folder holds: the training's outcome, and whether the adapter came."""
    record = run / "train.json"
    if not record.is_file():
        out.print("no train.json yet: the run has not finished its first step (tunesmith status RUN)", highlight=False)
        return
    try:
        state = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        out.print(f"{record} could not be read; pull again", highlight=False)
        return
    adapter = next((name for name in ("adapter", "model") if (run / name).is_dir()), None)
    resumes = len(state.get("resumes") or [])
    out.print(f"train.json: {state.get('status')}, step {state.get('steps_done')} of {state.get('steps_planned')}, "
              f"{resumes} resume{'s' if resumes != 1 else ''}"
              + (f"; {adapter}/ is here: tunesmith eval {run}" if adapter else "; no adapter yet"), highlight=False)


@app.command("review")
def review_cmd(
    run: Path = typer.Argument(..., help="run folder with eval/outputs.jsonl (written by `tunesmith eval`)"),
    raters: Optional[str] = typer.Option(None, "--raters", help="rater names, comma-separated, e.g. alice,bob,carol; "
                                         "omit to reuse those in RUN/review/raters.json"),
    port: int = typer.Option(8700, "--port", min=0, max=65535, help="port to serve on (0: any free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but 127.0.0.1 or "
                             "localhost puts the page on the network, guarded only by the links"),
    results: bool = typer.Option(False, "--results", help="do not serve: summarise the votes (win rate of the "
                                 "tuned model with a 95% bootstrap interval, agreement between raters, per category)"),
    as_json: bool = typer.Option(False, "--json", help="with --results or --judge: print JSON"),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="with --results: also write one CSV row per vote"),
    judge: Optional[str] = typer.Option(None, "--judge", help="do not serve: have an LLM at this OpenAI-compatible "
                                        "URL judge every pair in both orders (key: TUNESMITH_JUDGE_API_KEY)"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="the judge's model name (with --judge)"),
) -> None:
    """Blind pairwise review: each rater opens a secret link and compares the two answers of
    every evaluated example, without knowing which model wrote which. Run the same command
    again to continue: same links, votes kept. --results summarises the votes; --judge asks an LLM."""
    from tunesmith.eval.review import serve_review

    if csv_file is not None and not results:
        raise UsageError("--csv needs --results: it writes the votes the results are computed from")
    if (judge is None) != (judge_model is None):
        raise UsageError("--judge URL and --judge-model NAME go together: the endpoint and the model it serves")
    if results or judge:
        report_review(run, results=results, as_json=as_json, csv_file=csv_file, judge=judge, judge_model=judge_model)
        return
    working_in(run, "run the same command again: the same links continue where each rater stopped")
    votes = serve_review(run, raters.split(",") if raters is not None else None, host=host, port=port,
                         on_ready=print_review_links)
    out.print(f"stopped; {votes} vote{'' if votes == 1 else 's'} in {run / 'review' / 'votes.db'}", highlight=False)


def report_review(run: Path, *, results: bool, as_json: bool, csv_file: Optional[Path], judge: Optional[str],
                  judge_model: Optional[str]) -> None:
    from tunesmith.eval.review.results import human_results, judge_results

    humans = human_results(run, csv_file) if results else None
    judged = None
    if judge and judge_model:
        judged = judge_results(run, url=judge, model=judge_model,
                               on_progress=lambda done, total: _eval_progress("judge", done, total))
        err.print()
    if as_json:
        payload = dict(humans or judged or {})
        if humans is not None and judged is not None:
            payload["judge"] = judged
        out.print_json(json.dumps(payload))
        return
    if humans is not None:
        print_review_summary(f"experts ({len(humans['raters'])} raters)", humans)
        if csv_file is not None:
            out.print(f"votes: {csv_file}", highlight=False)
    if judged is not None:
        print_review_summary(f"judge {judged['judge']}", judged)
        if judged["unparsed"]:
            out.print(f"[yellow]note:[/] {judged['unparsed']} judgement(s) gave no verdict and count as ties "
                      f"(RUN/review/judge.jsonl has them)", highlight=False)


def print_review_summary(who: str, s: dict[str, Any]) -> None:
    out.print(f"[bold]{escape(who)}[/]: {s['votes']} votes on {s['items']} items: tuned better {s['tuned_wins']}, "
              f"base better {s['base_wins']}, tie {s['ties']}, both bad {s['both_bad']}", highlight=False)
    out.print(f"  win rate of the tuned model: {win_rate_text(s)}", highlight=False)
    agreement = s.get("agreement")
    if agreement and agreement["value"] is not None:
        name = "Cohen's kappa" if agreement["method"] == "cohen_kappa" else "Krippendorff's alpha"
        out.print(f"  agreement between raters: {name} {agreement['value']:.2f} ({agreement['raters']} raters, "
                  f"{agreement['items']} items rated by more than one)", highlight=False)
    if s.get("mean_score") is not None:
        out.print(f"  mean score (1-5) of the better answer: {s['mean_score']:.2f}", highlight=False)
    if s["categories"]:
        table = Table(title="per category")
        for column in ("category", "votes", "tuned", "base", "tie", "both bad", "win rate (95% CI)"):
            table.add_column(column, justify="left" if column == "category" else "right")
        for name, c in s["categories"].items():
            table.add_row(name, str(c["votes"]), str(c["tuned_wins"]), str(c["base_wins"]), str(c["ties"]),
                          str(c["both_bad"]), win_rate_text(c, verdict=False))
        out.print(table)


def win_rate_text(s: dict[str, Any], verdict: bool = True) -> str:
    """"0.62 (95% CI 0.51-0.72): tuned is preferred" - the interval decides, not the point."""
    if s["win_rate"] is None:
        return "none yet (no vote that is not 'both bad')"
    text = f"{s['win_rate']:.2f}"
    if s["ci"] is None:
        return text + " (one item: no interval)"
    low, high = s["ci"]
    text += f" (95% CI {low:.2f}-{high:.2f})"
    if not verdict:
        return text
    if low > 0.5:
        return text + ": the tuned model is preferred"
    if high < 0.5:
        return text + ": the base model is preferred"
    return text + ": no clear preference yet; more items or raters narrow the interval"


def print_review_links(links: Any) -> None:
    for name, url in links.links:
        out.print(f"{name}: {url}", highlight=False, markup=False)
    out.print(escape(f"links and tokens: {links.raters_file} (readable only by you)"), highlight=False)
    if not links.local:
        out.print("[yellow]warning:[/] the page is open to the network: anyone who has a link can vote as its "
                  "rater, and the links are the only protection (plain HTTP: use a network you trust)",
                  highlight=False)
    out.print("Ctrl-C stops the server; votes are saved as they come", highlight=False)


@app.command("serve")
def serve_cmd(
    runs: list[Path] = typer.Argument(..., help="run folders (or adapter folders copied from one) trained on the "
                                      "same base; each is served under its folder's name"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="port to serve on (0: any free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but 127.0.0.1 or "
                             "localhost puts the API on the network"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="the key every request must send (default: "
                                          "TUNESMITH_API_KEY, else a new one, printed once); the environment "
                                          "variable keeps it out of the process list"),
    max_waiting: int = typer.Option(16, "--max-waiting", min=0, max=10_000, help="requests that may wait behind "
                                    "the one being answered; beyond that the server answers 429 with Retry-After"),
) -> None:
    """An OpenAI-compatible API for the tuned models: /v1/chat/completions and /v1/completions
    (streamed or not), /v1/models, /health. One base in memory, each run's adapter chosen by the
    request's `model`, and `base` for the model before tuning. One request is answered at a time;
    for many users, serve with vLLM (`tunesmith deploy`)."""
    from tunesmith.serve import serve_models

    quiet_transformers()
    serve_models(runs, host=host, port=port, key=api_key, max_waiting=max_waiting, on_note=print_note,
                 on_ready=print_serving)
    out.print("stopped", highlight=False)


def print_serving(s: Any) -> None:
    out.print(f"serving {', '.join(s.models)} ({s.base}; {s.device}) at {s.url}", highlight=False, markup=False)
    if s.key is not None:
        out.print(f"API key (shown once; set TUNESMITH_API_KEY to choose your own): {s.key}", highlight=False,
                  markup=False)
    if not s.local:
        out.print("[yellow]warning:[/] the API is open to the network, guarded by the key only (plain HTTP: use a "
                  "network you trust)", highlight=False)
    out.print("greedy answers: temperature 0; Ctrl-C stops the server", highlight=False)
    sys.stdout.flush()


@app.command("demo")
def demo_cmd(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="run folder"),
    set_: Optional[list[str]] = SetOption,
    progress: bool = typer.Option(True, help="show a progress bar (without a terminal: one line per logged step)"),
) -> None:
    """Clean the bundled sample, fine-tune SmolLM2-135M on CPU, compare base and tuned."""
    from tunesmith.demo.run import run_demo

    quiet_transformers()
    working_in(out_dir, "run the same command again to start the demo over")
    out.print("[bold]1/3 data[/]: check and clean the sample (the first run converts the model once, ~30 s)")

    def cleaned(report: dict[str, Any]) -> None:
        out.print(f"    {data_summary(report)}", highlight=False)
        out.print("[bold]2/3 train[/]: LoRA on CPU")

    def trained(result: Any) -> None:
        out.print(f"    {result.steps} steps, {result.tokens:,} tokens at {result.tokens_per_s:,.0f} tokens/s")
        out.print("[bold]3/3 eval[/]: greedy answers from base and tuned on the held-out file and the general set")

    bar = progress and err.is_terminal
    summary = run_demo(out_dir, set_, on_data=cleaned, on_trained=trained, progress=bar,
                       on_log=print_log_line if progress and not bar else None, on_eval_progress=_eval_progress)
    err.print()
    out.print(score_table({"base": summary["base"], "tuned": summary["tuned"], "n": summary["n_eval"]}))
    if summary["general"]:
        print_forgetting(summary["general"])
    out.print(f"done in {summary['wall_minutes']:.1f} min; run folder: {out_dir} (summary.json, metrics.jsonl, eval/)")


# ---------------------------------------------------------------- plan

# `tunesmith plan` flags that set a run-config field.
PLAN_FLAGS = {"model": "model.source", "method": "method.name", "seq_len": "train.max_seq_len",
              "batch": "train.micro_batch", "grad_accum": "train.grad_accum", "lora_r": "method.r",
              "gradient_checkpointing": "train.gradient_checkpointing", "optimizer": "train.optimizer",
              "epochs": "train.epochs"}


@app.command("plan")
def plan_cmd(
    config: Optional[Path] = typer.Argument(None, help="run config (YAML); flags below override it"),
    model: Optional[str] = typer.Option(None, help="catalog alias, folder with config.json (or the file), .gguf, or a "
                                        "hub id (org/name: fetches its config.json alone, never the weights)"),
    method: Optional[str] = typer.Option(None, help="lora | qlora | full"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=16, help="tokens per packed row (train.max_seq_len)"),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="rows per micro-batch per GPU"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help="micro-batches per optimizer step"),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", min=1, help="LoRA rank"),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    optimizer: Optional[str] = typer.Option(None, help="adamw | adamw_8bit | paged_adamw | paged_adamw_8bit"),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="GPUs per node (default: the fewest of 1, 2, 4, 8 "
                                      "that fit; train runs them with --nproc N)"),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="plan for this GPU type only (see `tunesmith gpus`)"),
    strategy: Optional[str] = typer.Option(None, help="with several GPUs: ddp | fsdp | fsdp_offload | zero2 | zero3 "
                                           "(distributed.strategy; default: DDP where a replica fits each GPU, "
                                           "else FSDP; zero2/zero3 are priced only: train does not run DeepSpeed yet)"),
    tokens: Optional[str] = typer.Option(None, help="training tokens per epoch, e.g. 20M (or use --dataset)"),
    dataset: Optional[Path] = typer.Option(None, help="count tokens per epoch in this file with the model's tokenizer"),
    epochs: Optional[str] = typer.Option(None, help="passes over the data, or auto (the default: 3, 2 or 1 by tokens per epoch)"),
    prices_file: Optional[Path] = typer.Option(None, "--prices", help="your own prices CSV (see `tunesmith gpus --help`)"),
    calibrate: Optional[Path] = typer.Option(None, help="a run folder whose measured speed replaces the defaults "
                                             "(a GPU run: the MFU of the GPU rows; any run: this machine's time)"),
    json_out: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    inference: bool = typer.Option(False, "--inference", help="size serving instead of training: weights + KV "
                                   "cache per GPU, $/hour, $/million tokens"),
    context: int = typer.Option(4096, "--context", min=1, help="with --inference: tokens per sequence (prompt + answer)"),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="with --inference: sequences served at once"),
    tokens_per_s: Optional[float] = typer.Option(None, "--tokens-per-s", min=0.001, help="with --inference: generated "
                                                 "tokens/s you measured or expect, for $/million tokens"),
    set_: Optional[list[str]] = SetOption,
) -> None:
    """Memory, time and cost of a fine-tuning run on every GPU in the catalog, before renting one.
    Exit 0 when some option fits, 1 when none does (the advice says what would).
    With --inference: the memory and price of serving the model instead."""
    from dataclasses import replace

    from tunesmith.catalog.gpu import load_gpus
    from tunesmith.catalog.prices import load_prices
    from tunesmith.plan.build import build_plan
    from tunesmith.plan.device import visible_device
    from tunesmith.plan.inputs import TokenCount, calibrate as read_calibration, dataset_tokens, parse_tokens, run_tokens
    from tunesmith.plan.memory import STRATEGIES

    if config is None and model is None:
        raise UsageError("give a CONFIG file or --model (see `tunesmith plan --help`)")
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy}: not a strategy; choose one of {', '.join(STRATEGIES)}")
    cfg = resolve_config(config, locals(), PLAN_FLAGS, set_)
    catalog = load_gpus()
    prices = load_prices(prices_file)
    if inference:
        plan_inference(cfg.model.source, catalog, prices, context=context, concurrency=concurrency,
                       tokens_per_s=tokens_per_s, json_out=json_out)
        return
    calibration = read_calibration(calibrate, catalog) if calibrate else None
    if tokens is not None:
        count = TokenCount(parse_tokens(tokens), None, "--tokens")
    elif dataset is not None or (cfg.data.train and Path(cfg.data.train).is_file()):
        quiet_transformers()
        count = dataset_tokens(str(dataset or cfg.data.train), cfg, "--dataset file" if dataset else "data.train file")
    elif calibration is not None:
        count = run_tokens(calibrate)
        if cfg.data.train:
            count = replace(count, source=f"data.train {cfg.data.train} not found here; {count.source}")
    else:
        count = TokenCount(None, None, f"data.train {cfg.data.train} not found: not counted" if cfg.data.train else None)
    plan = build_plan(cfg, count, visible_device(), gpus=catalog, prices=prices, gpu_count=gpus, strategy=strategy,
                      only_gpu=gpu, calibration=calibration, config_path=str(config) if config else None,
                      overrides=_train_overrides(locals(), dataset, set_))
    if json_out:
        print(json.dumps(plan, indent=2, ensure_ascii=False))
    else:
        print_plan(plan)
    if plan["recommendation"] is None:
        raise typer.Exit(1)


def _train_overrides(args: dict[str, Any], dataset: Optional[Path], set_: Optional[list[str]]) -> list[str]:
    """What the plan changed in its config, for the train command that runs it: the plan
    flags, --dataset as data.train, and --set (the strategy comes last, from the plan)."""
    given = {**{field: args[param] for param, field in PLAN_FLAGS.items() if args.get(param) is not None},
             **({"data.train": dataset} if dataset else {})}
    fields = [f"{field}={_plain_yaml(value)}" for field, value in given.items()]
    return fields + [f for f in set_ or [] if not f.startswith("distributed.strategy=")]


def _plain_yaml(value: Any) -> str:
    """`_as_yaml` without quotes where YAML reads the text back unchanged (llama-3.1-8b, full),
    so the printed command reads as a person would type it."""
    import yaml

    text = str(value) if isinstance(value, (str, Path)) else None
    if text is not None and text.strip() == text:
        try:
            if yaml.safe_load(text) == text:
                return text
        except yaml.YAMLError:
            pass
    return _as_yaml(value)


def plan_inference(source: str, catalog: Any, prices: Any, *, context: int, concurrency: int,
                   tokens_per_s: Optional[float], json_out: bool) -> None:
    from tunesmith.catalog.prices import format_range
    from tunesmith.models.facts import model_facts
    from tunesmith.plan.serving import serving_plan

    facts, where = model_facts(source)
    plan = serving_plan(facts, catalog, prices, context=context, concurrency=concurrency, tokens_per_s=tokens_per_s)
    if json_out:
        print(json.dumps({"model": {"source": source, "config_from": where}, **plan}, indent=2))
    else:
        need = plan["need"]
        out.print(f"[bold]serving {escape(source)}[/] (bf16 weights {need['weights_gb']:.1f} GB + KV cache "
                  f"{need['kv_gb_per_sequence']:.2f} GB per {context:,}-token sequence x {concurrency} + "
                  f"{need['runtime_reserve_gb']:g} GB runtime = {need['total_gb']:.1f} GB; vLLM takes "
                  f"{need['gpu_memory_utilization']:.0%} of the GPU)", highlight=False)
        table = Table()
        for column in ("GPU", "memory", "fits", f"sequences of {context:,}", "$/hour (on-demand)", "$/M tokens"):
            table.add_column(column, justify="left" if column == "GPU" else "right")
        for o in plan["options"]:
            per_mtok = format_range(o["usd_per_million_tokens"]) if o["usd_per_million_tokens"] else ""
            table.add_row(o["gpu"], f"{o['memory_gb']:g} GB", "yes" if o["fits"] else "no", str(o["max_sequences"]),
                          format_range(o["usd_per_hour"]) if o["usd_per_hour"] else "no price", per_mtok)
        out.print(table)
        if tokens_per_s is None:
            out.print("[dim]$/M tokens: give --tokens-per-s (measured, or what you expect)[/]", highlight=False)
        best = plan["recommendation"]
        out.print(f"cheapest that fits: {best['gpu']} at {format_range(best['usd_per_hour'])}/hour" if best else
                  "[red]no single GPU in the catalog fits[/]: lower --concurrency or --context", highlight=False)
    if plan["recommendation"] is None:
        raise typer.Exit(1)


def print_plan(plan: dict[str, Any]) -> None:
    from rich import box

    from tunesmith.plan.planner import CONFIG_PLACEHOLDER

    s, p, t = plan["setup"], plan["params"], plan["tokens"]
    out.print(f"[bold]{escape(plan['model']['config_from'])}[/]: {p['total'] / 1e9:.2f}B parameters, "
              f"{p['trainable']:,} trained ({s['method']}"
              + (f", r={s['lora_r']}" if s["method"] != "full" else "") + ")", highlight=False)
    out.print(f"micro-batch {s['micro_batch']} x {s['seq_len']} tokens, grad-accum {s['grad_accum']}, "
              f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, {s['optimizer']}; "
              + escape(_token_line(t)), highlight=False)
    m = plan["memory_gb"]
    parts = sorted(((value, name) for name, value in m.items() if name not in ("peak", "phase") and value >= 0.005),
                   reverse=True)
    per = "one GPU" if s["gpus"] == 1 else f"each of {s['gpus']:,} GPUs ({s['strategy']})"
    out.print(f"memory on {per} ({s['dtype']} where it is a choice): [bold]{_gb(m['peak'])} GB[/] peak, "
              f"at the {m['phase'].replace('_', ' ')}", highlight=False)
    out.print("  GB: " + ", ".join(f"{name.replace('_', ' ')} {_gb(value, 2)}" for value, name in parts), highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("GPU", "n", "peak/GPU", "fits", "time", "on-demand", "spot"):
        table.add_column(column, justify="left" if column in ("GPU", "fits") else "right")
    for o in plan["options"]:
        fit = "yes" if o["headroom_ok"] else "tight" if o["fits"] else "no"
        color = {"yes": "green", "tight": "yellow", "no": "red"}[fit]
        table.add_row(o["gpu"], f"{o['count']:,}", f"{_gb(o['peak_gb'])}/{o['memory_gb']:g}", f"[{color}]{fit}[/]",
                      _hours(o["hours"]), _money(o["cost_on_demand"]), _money(o["cost_spot"]))
    out.print(table)
    sources = sorted({(o["provider_spot"] or o["provider_on_demand"], o["price_as_of"]) for o in plan["options"]
                      if o["price_as_of"]})
    # Each row is one machine with n of the GPU, priced only by offers for that machine size: name the
    # size, since the GPU may well be priced in other sizes (`tunesmith gpus`).
    unpriced = [f"{o['count']} x {o['gpu']}" for o in plan["options"] if not o["price_as_of"]]
    out.print("[dim]$: midpoint of each price range, for one machine with n GPUs; prices from "
              + escape("; ".join(f"{who} as of {when}" for who, when in sources) or "nowhere")
              + (f"; no price for a machine of {', '.join(unpriced)} (add yours: --prices FILE.csv)" if unpriced else "")
              + "[/]", highlight=False)
    r = plan["recommendation"]
    if r:
        cost = f" for {_money(r['cost'])}" if r["cost"] is not None else ""
        took = f", {_hours(r['hours'])}" if r["hours"] is not None else ""
        out.print(f"[bold green]recommended:[/] {r['count']} x {r['gpu']}{cost}{took} ({r['why']})", highlight=False)
        out.print(f"run it: {escape(r['train_command'])}", highlight=False, soft_wrap=True)
        if r["train_command"].split()[2] == CONFIG_PLACEHOLDER:
            out.print(f"[dim]{CONFIG_PLACEHOLDER}: your run config (model, data, output); `tunesmith config show > "
                      f"{CONFIG_PLACEHOLDER}` writes one with every default[/]", highlight=False)
    else:
        out.print("[bold red]nothing fits[/] with 10% headroom. What would:", highlight=False)
        for a in plan["advice"]:
            out.print(f"  {a['change']}: peak {_gb(a['peak_gb'])} GB -> {a['fits'] or 'still too big'}", highlight=False)
    here = plan.get("this_machine")
    if here:
        out.print(escape(_this_machine_line(here)), highlight=False)
    calibration = plan.get("calibration")
    mfu = plan["mfu"]
    if calibration:
        out.print(f"[dim]{escape(calibration['summary'])}: {escape(calibration['effect'])}[/]", highlight=False)
    if not mfu["calibrated"]:
        out.print(f"[dim]GPU time at {mfu['value']:.0%} MFU: {escape(mfu['source'])}[/]", highlight=False)
    for note in plan["notes"]:
        out.print(f"[dim]note: {escape(note)}[/]", highlight=False)


def _token_line(t: dict[str, Any]) -> str:
    if t["total"] is None:
        return "no token count" + (f" ({t['from']})" if t["from"] else "")
    if t.get("max_steps") is not None:
        counted = f"; {t['per_epoch']:,} per epoch from {t['from']}" if t["per_epoch"] else ""
        return f"{t['total']:,.0f} tokens at most (train.max_steps {t['max_steps']:,}{counted})"
    epochs = f"{t['epochs']:g} epoch{'' if t['epochs'] == 1 else 's'}"
    return f"{t['total']:,.0f} tokens ({t['per_epoch']:,} x {epochs}, {t['from']})"


def _this_machine_line(here: dict[str, Any]) -> str:
    d, s = here["device"], here["setup"]
    head = f"this machine: {d['name']}, {d['available_gb']:,.1f} GB free, {s['method']} in {s['dtype']}: "
    if not here["runs_here"]:
        return head + f"cannot run here: {here['cannot_run']} (peak would be {_gb(here['peak_gb'])} GB)"
    verdict = "fits" if here["fits"] else "does not fit"
    when = f", ~{_hours(here['hours'])} ({here['time_from']})" if here["hours"] is not None else ""
    if here["hours"] is None and d["type"] == "cpu":
        when = ", no time without a token count"
    return head + f"{verdict} (peak {_gb(here['peak_gb'])} GB){when}"


def _hours(value: Optional[float]) -> str:
    """A duration from hours: "<1 min", "12 min", "3.25 h", "12.5 h", "1,235 h", "5.33e+11 h"."""
    if value is None:
        return ""
    minutes = value * 60
    if minutes < 1:
        return "<1 min"
    if minutes < 59.5:
        return f"{minutes:.0f} min"
    if value < 10:
        return f"{value:.2f} h"
    if value < 100:
        return f"{value:.1f} h"
    return f"{value:,.0f} h" if value < 1e6 else f"{value:.3g} h"


def _money(value: Optional[float]) -> str:
    """Dollars: "<$0.01", "$0.04", "$1,234", "$1.5e+15"."""
    if value is None:
        return ""
    if value < 0.01:
        return "<$0.01"
    if value < 1000:
        return f"${value:,.2f}"
    return f"${value:,.0f}" if value < 1e9 else f"${value:.3g}"


def _gb(value: float, decimals: int = 1) -> str:
    """Gigabytes without overflowing a table cell: "4.1", "1,482", "3.2e+09"."""
    if value < 1000:
        return f"{value:.{decimals}f}"
    return f"{value:,.0f}" if value < 1e7 else f"{value:.3g}"


@app.command("gpus")
def gpus_cmd(
    prices_file: Optional[Path] = typer.Option(None, "--prices", help="your own prices: a CSV with the header "
                                               "provider,gpu,on_demand,spot,as_of,source[,region]"
                                               "[,note][,gpus_per_machine]"),
    json_out: bool = typer.Option(False, "--json", help="print every GPU with all its prices as JSON"),
) -> None:
    """List the GPU catalog with the cheapest on-demand and spot $/GPU-hour on a machine of any size,
    how many GPUs that machine has ((8x): eight), and their dates."""
    from rich import box

    from tunesmith.catalog.gpu import load_gpus
    from tunesmith.catalog.prices import cheapest, gpu_price_catalog, load_prices

    prices = load_prices(prices_file)
    if json_out:
        print(json.dumps(gpu_price_catalog(prices), indent=2, ensure_ascii=False))
        return
    table = Table(title="cheapest $ per GPU-hour, any machine size ((8x): an 8-GPU machine; ranges compared by "
                  "midpoint)", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("GPU", "GB", "TFLOP/s", "GB/s", "on-demand", "spot", "as of"):
        table.add_column(column, justify="right" if column in ("GB", "TFLOP/s", "GB/s") else "left")
    unpriced = []
    for g in load_gpus():
        best = cheapest(prices, g.name)
        on_demand, spot = best["on_demand"], best["spot"]
        if not (on_demand or spot):
            unpriced.append(g.name)
        table.add_row(
            g.name, f"{g.memory_gb:g}", f"{g.bf16_tflops:g}", f"{g.bandwidth_gbps:g}",
            _offer_cell(on_demand.on_demand, on_demand) if on_demand else "-",
            _offer_cell(spot.spot, spot) if spot else "-",
            ", ".join(sorted({p.as_of for p in (on_demand, spot) if p})),
        )
    out.print(table)
    if unpriced:
        out.print(f"[dim]no price for {', '.join(unpriced)}: add yours with --prices FILE.csv "
                  "(provider,gpu,on_demand,spot,as_of,source)[/]", highlight=False)


def _offer_cell(price_range: Optional[tuple[float, float]], offer: Any) -> str:
    """"$0.26 primeintellect (1x)": the price, who, and the machine size it holds for (none: any)."""
    from tunesmith.catalog.prices import format_range

    size = f" ({offer.gpus_per_machine}x)" if offer.gpus_per_machine else ""
    return f"{format_range(price_range)} {escape(offer.provider)}{size}"


def data_summary(report: dict[str, Any]) -> str:
    """One line for a data report: what was kept, removed (why), fixed and redacted."""
    return (f"{report['input_rows']} rows, {report['kept']} kept, {report['removed']} removed "
            f"({counts(report['reasons'])}); fixed: {counts(report['fixes'])}; "
            f"PII {'redacted' if report['pii_mode'] == 'redact' else 'found'}: {counts(report['pii'])}")


def counts(by_name: dict[str, int]) -> str:
    """{"duplicate": 6, "near_duplicate": 2} -> "duplicate 6, near_duplicate 2"."""
    return ", ".join(f"{name} {n}" for name, n in by_name.items()) or "none"


def _eval_progress(name: str, done: int, total: int) -> None:
    """One line rewritten in place on a terminal; elsewhere (a log) a line per finished part."""
    if err.is_terminal:
        err.print(f"\r  {name}: {done}/{total}", end="")
    elif done == total:
        err.print(f"  {name}: {done}/{total}")


def score_table(scores: dict[str, Any]) -> Table:
    """Metric x model, and the change tuned - base. Perplexity of the references: lower is better."""
    models = scores.get("models") or ["base", "tuned"]
    source = scores.get("source") or {}
    what = f"examples of {source['data']}" if source.get("data") else "held-out examples"
    table = Table(title=f"{' vs '.join(models)} on {scores['n']} {what}")
    table.add_column("metric")
    for name in models:
        table.add_column(name, justify="right")
    table.add_column("tuned - base", justify="right")
    for metric in sorted(set().union(*(scores[name] for name in models))):
        values = [scores[name].get(metric) for name in models]
        b, t = scores["base"].get(metric), scores["tuned"].get(metric)
        change = f"{t - b:+.3f}" if b is not None and t is not None else ""
        label = f"{metric} (lower is better)" if metric == "perplexity" else metric
        table.add_row(label, *map(_fmt, values), change)
    return table


def category_table(scores: dict[str, Any]) -> Table:
    models = scores["models"]
    metric = headline_metric(scores)
    table = Table(title=f"{metric} per category")
    table.add_column("category")
    table.add_column("n", justify="right")
    for name in models:
        table.add_column(name, justify="right")
    for category, part in scores["categories"].items():
        table.add_row(category, str(part["n"]), *(_fmt(part[name].get(metric)) for name in models))
    return table


def headline_metric(scores: dict[str, Any]) -> str:
    """The metric that says most about these answers: field accuracy for JSON answers, else F1."""
    return next((m for m in ("json_field_accuracy", "token_f1") if m in scores["tuned"]), "exact_match")


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
    sys.exit(run_guarded(sys.argv[1:]))


def run_guarded(args: list[str]) -> int:
    """Run one command; whatever goes wrong ends in one line on stderr and an exit code, never
    a traceback: 2 usage, 1 the input could not be used (or a bug), 130 interrupted."""
    try:
        # Standalone: typer prints bad flags with their usage and exits 2 itself.
        app(args=args, prog_name="tunesmith")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if code == INTERRUPTED:  # typer turns Ctrl-C into exit 130 and says nothing
            err.print(f"\n[yellow]interrupted[/]: {interrupted_note()}", highlight=False, soft_wrap=True)
        return code
    except TunesmithError as e:
        return say(e)
    except OSError as e:
        from tunesmith.io import describe_os_error

        return say(describe_os_error(e)) if e.filename is not None else report_bug(e)
    except Exception as e:  # noqa: BLE001 - the net under every bug we have not found yet
        kind = memory_kind(e)
        if kind is None:
            return report_bug(e)
        return say(OutOfMemory(kind, "running the command", str(e).splitlines()[0][:200] if str(e) else ""))
    return 0


def say(error: TunesmithError) -> int:
    """The one line a user sees for an error, and its exit code."""
    if not str(error):  # a training worker whose main process has said why
        return error.exit_code
    label = getattr(error, "label", "error")
    colour = "yellow" if label != "error" else "red"
    err.print(f"{worker_prefix()}[{colour}]{label}:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    return error.exit_code


def worker_prefix() -> str:
    """`worker N: ` in a training worker other than the main one (which speaks for the run)."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
    return f"worker {rank}: " if rank != "0" else ""


INTERRUPTED = 130
# The run folder the current command works in, once it is known (where error.log goes), and
# what running the command again does, for the line Ctrl-C prints.
_run_dir: Optional[Path] = None
_again = ""


def working_in(run_dir: Path, again: str) -> None:
    global _run_dir, _again
    _run_dir, _again = run_dir, again


def interrupted_note() -> str:
    if _run_dir is not None and _run_dir.is_dir():
        return (f"{_run_dir} keeps what was finished (every file there is complete: each is written whole "
                f"or not at all); {_again}")
    return "nothing half-written was left behind (files are written whole or not at all)"


def report_bug(e: BaseException) -> int:
    """An unexpected exception: one line, and the traceback in an error.log to report."""
    import datetime
    import traceback

    from tunesmith import __version__
    from tunesmith.models.source import tunesmith_home

    text = (f"tunesmith {__version__}, {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"command: tunesmith {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(e)))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    own_folder = _run_dir is not None and _run_dir.is_dir() and not worker_prefix()  # the main process's file
    places = [_run_dir / "error.log"] if own_folder else []
    places.append(tunesmith_home() / "logs" / f"error-{stamp}.log")
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_text(text, encoding="utf-8")
        except OSError:
            continue
        where = f"please report it with {place}"
        break
    else:
        where = "please report it with this traceback:\n" + text
    err.print(f"{worker_prefix()}[red]error:[/] {escape(type(e).__name__ + ': ' + str(e).splitlines()[0] if str(e) else type(e).__name__)}"
              f" — this is a bug in tunesmith; {escape(where)}", highlight=False, soft_wrap=True)
    return 1


if __name__ == "__main__":
    main()
