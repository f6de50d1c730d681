"""A trained run as a portable, documented result: which base it needs, and a model card.

PEFT writes the absolute path the base was loaded from (a folder in the local cache) into
adapter_config.json, and an empty README template. Here the adapter instead names the base
the way the user did (alias, hub id or path), RUN/adapter/tunesmith.json records that name
with the hashes of the files it resolved to, and README.md becomes a model card built only
from the run folder's files: train writes it, eval and review refresh it. A number the run
folder does not hold is never made up: its section says "not evaluated yet".

Shared by train (writes), eval and review (refresh), and serve/export on another machine
(`find_base`), so it reads files and imports no stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunesmith.io import file_sha256, write_json_atomic, write_text_atomic

MANIFEST = "tunesmith.json"
CARD_FILES = ("README.md", MANIFEST)  # what eval and review rewrite in a trained weights folder
NOT_YET = "not evaluated yet"
METHOD_NAMES = {"lora": "LoRA adapter", "qlora": "QLoRA adapter (trained on a 4-bit base)", "full": "full fine-tune"}


# ---------------------------------------------------------------- the base, portable

def base_record(cfg: Any) -> dict[str, Any]:
    """What the run was trained on: the source as the user named it, the local folder it
    resolved to here, and the sha256 of that folder's weights and config.json (for a GGUF
    source, of the converted folder), so another machine can check it has the same base."""
    from tunesmith.models.source import cached_snapshot, resolve_source

    source = cfg.model.source
    resolved = resolve_source(source, trust_remote_code=cfg.model.trust_remote_code)
    folder = Path(resolved)
    if not folder.is_dir():  # a hub id transformers downloaded: its files are in the cache now
        folder = cached_snapshot(resolved) or folder
    return {"source": source, "resolved": str(folder if folder.is_dir() else resolved),
            "sha256": folder_hashes(folder) if folder.is_dir() else {}}


def folder_hashes(folder: Path) -> dict[str, str]:
    files = sorted(folder.glob("*.safetensors")) + [folder / "config.json"]
    return {f.name: file_sha256(f) for f in files if f.is_file()}


def make_portable(adapter_dir: Path, cfg: Any, base: dict[str, Any]) -> None:
    """Name the base in adapter_config.json as the user did (not the cache path it was loaded
    from), and write adapter_dir/tunesmith.json: the base record, the method, the run.
    A full fine-tune's folder has no adapter_config.json; it gets tunesmith.json alone."""
    adapter_config = adapter_dir / "adapter_config.json"
    if adapter_config.is_file():
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = cfg.model.source
        write_json_atomic(adapter_config, config)
    method = cfg.method
    described = {"name": method.name} if method.name == "full" else {
        "name": method.name, "r": method.r, "alpha": method.alpha if method.alpha is not None else 2 * method.r,
        "dropout": method.dropout, "target_modules": list(method.target_modules)}
    write_json_atomic(adapter_dir / MANIFEST, {"base": base, "method": described, "run": Path(cfg.output.dir).name})


def find_base(adapter_dir: Path) -> str:
    """The base an adapter needs, as the user named it when training (give it to
    `models.source.resolve_source`): tunesmith.json's record, else PEFT's own field."""
    adapter_dir = Path(adapter_dir)
    manifest = read_json_file(adapter_dir / MANIFEST)
    if manifest and manifest.get("base", {}).get("source"):
        return manifest["base"]["source"]
    config = read_json_file(adapter_dir / "adapter_config.json") or read_json_file(adapter_dir / "config.json")
    name = (config or {}).get("base_model_name_or_path") or (config or {}).get("_name_or_path")
    if not name:
        raise FileNotFoundError(f"{adapter_dir}: neither {MANIFEST} nor adapter_config.json names the base model")
    return name


def adapter_origin(adapter_dir: Path) -> tuple[str, str, str | None]:
    """(base, method, run name) of an adapter folder given alone, for export and serve on a
    machine without its run folder; one UsageError when nothing in it names the base."""
    from tunesmith.errors import UsageError

    try:
        base = find_base(adapter_dir)
    except FileNotFoundError as e:
        raise UsageError(f"{e}; copy the run's adapter folder whole (with {MANIFEST})") from None
    manifest = read_json_file(Path(adapter_dir) / MANIFEST) or {}
    return base, (manifest.get("method") or {}).get("name", "lora"), manifest.get("run")


# ---------------------------------------------------------------- the model card

def write_model_card(run_dir: Path, review: dict[str, Any] | None = None) -> Path | None:
    """RUN/adapter/README.md (RUN/model/README.md for full fine-tuning) from the run folder's
    files; None when the run holds no trained weights yet. `review`: the experts' summary
    (win_rate, ci, votes, raters) from `tunesmith review --results`; it is kept in
    tunesmith.json, so a later refresh without it still shows it."""
    run_dir = Path(run_dir)
    config = read_yaml_file(run_dir / "config.yaml") or {}
    method = (config.get("method") or {}).get("name") or ("full" if (run_dir / "model").is_dir() else "lora")
    weights = run_dir / ("model" if method == "full" else "adapter")
    if not weights.is_dir():
        return None
    manifest = read_json_file(weights / MANIFEST)
    if review is not None and manifest is not None:
        manifest["review"] = review
        write_json_atomic(weights / MANIFEST, manifest)
    elif manifest is not None:
        review = manifest.get("review")
    card = render_card(run_dir, config, method, manifest or {}, review)
    write_text_atomic(weights / "README.md", card)
    return weights / "README.md"


def exported_card(run_dir: Path) -> str:
    """The card of a folder `tunesmith export` merged (or, for full fine-tuning, re-saved): the
    run's card, for weights that load with plain transformers."""
    run_dir = Path(run_dir)
    config = read_yaml_file(run_dir / "config.yaml") or {}
    method = (config.get("method") or {}).get("name") or "lora"
    manifest = read_json_file(run_dir / ("model" if method == "full" else "adapter") / MANIFEST) or {}
    return render_card(run_dir, config, method, manifest, manifest.get("review"), merged=True)


def render_card(run_dir: Path, config: dict[str, Any], method: str, manifest: dict[str, Any],
                review: dict[str, Any] | None, *, merged: bool = False) -> str:
    """The card of RUN's weights: the adapter as trained, or (`merged`) an exported folder."""
    source = (manifest.get("base") or {}).get("source") or (config.get("model") or {}).get("source") or "unknown"
    report = read_json_file(run_dir / "data" / "report.json")
    record = read_json_file(run_dir / "train.json")
    scores = read_json_file(run_dir / "eval" / "scores.json")
    plain = merged or method == "full"
    front = {"base_model": source, "library_name": "transformers" if plain else "peft",
             "tags": ["tunesmith", method] + (["merged"] if merged and method != "full" else [])}
    what = f"A {METHOD_NAMES.get(method, method)} of `{source}`"
    if merged and method != "full":
        what += ", merged into the base's weights"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {run_dir.name}",
        f"{what}, trained with tunesmith.",
        section_use(config, report),
        section_data(report),
        section_method(config, method, manifest),
        section_training(record),
        section_eval(scores),
        section_review(review, (run_dir / "review" / "votes.db").is_file()),
        section_load(source, "exported" if merged else method),
        section_limits(source, report, scores),
    ]
    return "\n\n".join(parts) + "\n"


def section_use(config: dict[str, Any], report: dict[str, Any] | None) -> str:
    task = ((config.get("clean") or {}).get("task_type")
            or ((report or {}).get("volume") or {}).get("task_type"))
    balance = (report or {}).get("balance") or {}
    lines = ["## Intended use", ""]
    lines.append(f"Tuned for the task of its training data{f' ({task})' if task else ''}: answers to prompts "
                 f"like the rows it was trained on.")
    if balance.get("field") == "category" and balance.get("counts"):
        named = ", ".join(f"{name} ({n})" for name, n in balance["counts"].items())
        lines.append(f"Categories in the data (rows): {named}.")
    lines.append("Before any other use, check that general skills survived: the eval's general set "
                 "(`tunesmith eval RUN`) compares the base and the tuned model on them.")
    return "\n".join(lines)


def section_data(report: dict[str, Any] | None) -> str:
    if report is None:
        return "## Data\n\nno data report (RUN/data/report.json) in the run folder."
    reasons = report.get("reasons") or {}
    removed = ", ".join(f"{why} {n}" for why, n in sorted(reasons.items())) or "none"
    dups = report.get("duplicates") or {}
    lines = ["## Data", "", f"- file: `{Path(str(report.get('file', '?'))).name}`",
             f"- rows in: {report.get('input_rows')}", f"- kept: {report.get('kept')}",
             f"- removed: {report.get('removed')} ({removed})"]
    if dups:
        lines.append("- duplicates removed: " + ", ".join(f"{kind} {n}" for kind, n in dups.items()))
    tokens = report.get("tokens") or {}
    if tokens.get("p50") is not None:
        lines.append(f"- tokens per row: median {tokens['p50']}, max {tokens.get('max')}")
    return "\n".join(lines)


def section_method(config: dict[str, Any], method: str, manifest: dict[str, Any]) -> str:
    m = config.get("method") or {}
    t = config.get("train") or {}
    lines = ["## Method and hyperparameters", "", f"- method: {method}"]
    if method != "full":
        alpha = m.get("alpha") if m.get("alpha") is not None else 2 * m.get("r", 0)
        lines += [f"- r: {m.get('r')}", f"- alpha: {alpha}", f"- dropout: {m.get('dropout')}",
                  f"- target modules: {', '.join(m.get('target_modules') or [])}"]
    batch = (t.get("micro_batch") or 0) * (t.get("grad_accum") or 1)
    lines += [f"- learning rate: {t.get('lr')}", f"- epochs: {t.get('epochs')}",
              f"- max steps: {t.get('max_steps')}", f"- max_seq_len: {t.get('max_seq_len')}",
              f"- batch: {batch} ({t.get('micro_batch')} x {t.get('grad_accum')} accumulation)",
              f"- seed: {t.get('seed')}"]
    hashes = (manifest.get("base") or {}).get("sha256") or {}
    if hashes:
        lines += ["", "Base files (sha256):", ""] + [f"- `{name}`: `{digest}`" for name, digest in hashes.items()]
    return "\n".join(lines)


def section_training(record: dict[str, Any] | None) -> str:
    if record is None:
        return "## Training\n\nno training record (RUN/train.json) in the run folder."
    lines = ["## Training", "", f"- status: {record.get('status')}",
             f"- steps: {record.get('steps_done')} of {record.get('steps_planned')}",
             f"- tokens: {record.get('tokens')}", f"- best step: {record.get('best_step')}",
             f"- best eval loss: {fmt(record.get('best_eval_loss'), 4)}",
             f"- weights kept: step {record.get('adapter_step')}",
             f"- final train loss: {fmt(record.get('final_loss'), 4)}"]
    return "\n".join(lines)


def section_eval(scores: dict[str, Any] | None) -> str:
    if scores is None:
        return f"## Evaluation\n\n{NOT_YET}: run `tunesmith eval RUN`."
    base, tuned = scores.get("base") or {}, scores.get("tuned") or {}
    metrics = sorted((set(base) | set(tuned)) - {"perplexity"}) + (["perplexity"] if "perplexity" in tuned else [])
    lines = ["## Evaluation", "", f"Base vs tuned on {scores.get('n')} held-out examples:", "",
             "| metric | base | tuned | tuned - base |", "|---|---:|---:|---:|"]
    for name in metrics:
        b, t = base.get(name), tuned.get(name)
        diff = fmt(t - b, 3, sign=True) if isinstance(b, (int, float)) and isinstance(t, (int, float)) else "-"
        label = "perplexity (lower is better)" if name == "perplexity" else name
        lines.append(f"| {label} | {fmt(b, 3)} | {fmt(t, 3)} | {diff} |")
    general = scores.get("general")
    lines.append("")
    if general:
        verdict = "forgetting flagged" if general.get("flagged") else "no forgetting flagged"
        lines.append(f"General set ({general.get('n')} items): base passed {pct(general.get('base'))}, tuned "
                     f"{pct(general.get('tuned'))}; drop {fmt(general.get('drop'), 3)} against a threshold of "
                     f"{fmt(general.get('threshold'), 3)}: {verdict}.")
    else:
        lines.append(f"General set: {NOT_YET}.")
    if scores.get("caveat"):
        lines += ["", f"Caveat: {scores['caveat']}"]
    return "\n".join(lines)


def section_review(review: dict[str, Any] | None, has_votes: bool) -> str:
    if review is None:
        later = (" Votes are in RUN/review/votes.db: `tunesmith review RUN --results` adds them here."
                 if has_votes else "")
        return f"## Expert review\n\n{NOT_YET}.{later}"
    ci = review.get("ci")
    interval = f" (95% CI {pct(ci[0])}-{pct(ci[1])})" if ci else " (too few items for an interval)"
    raters = review.get("raters") or {}
    rate = pct(review.get("win_rate")) if review.get("win_rate") is not None else "no counted vote"
    return (f"## Expert review\n\nTuned model's win rate against the base: {rate}{interval}, "
            f"from {review.get('votes')} votes by {len(raters)} rater{'s' if len(raters) != 1 else ''} "
            f"({review.get('counted')} counted; ties count half).")


def section_load(source: str, method: str) -> str:
    """How to load the weights: `method` is the run's, or "exported" for a folder from `tunesmith export`."""
    if method == "exported":
        code = ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")\n'
                'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")')
        return (f"## How to load it\n\n```python\n{code}\n```\n\nNo peft and no tunesmith needed: the tokenizer "
                f"carries the chat template the model was trained with, and generation_config.json stops at the "
                f"end-of-turn token it learned.")
    if method == "full":
        code = ('from transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                'model = AutoModelForCausalLM.from_pretrained("RUN/model")\n'
                'tokenizer = AutoTokenizer.from_pretrained("RUN/model")')
    else:
        code = ('from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n'
                f'base = AutoModelForCausalLM.from_pretrained("{source}")\n'
                'model = PeftModel.from_pretrained(base, "RUN/adapter")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{source}")')
    text = f"## How to load it\n\n```python\n{code}\n```"
    if method != "full":
        text += ("\n\nThe base is named as it was given to tunesmith. For a tunesmith alias or a .gguf file, "
                 "`tunesmith.models.source.resolve_source(tunesmith.models.card.find_base(\"RUN/adapter\"))` "
                 "gives the folder to load; the sha256 above tells whether it is the same base.")
    return text


def section_limits(source: str, report: dict[str, Any] | None, scores: dict[str, Any] | None) -> str:
    kept = (report or {}).get("kept")
    lines = ["## Limitations", "",
             f"- Tuned on {kept if kept is not None else 'an unknown number of'} rows of one data set: outside "
             f"that task it may do worse than the base.",
             f"- It inherits the limitations, biases and license of `{source}`: read that model's card."]
    general = (scores or {}).get("general")
    if general and general.get("flagged"):
        lines.append("- The general set flagged forgetting: general skills dropped against the base.")
    if scores is None or not general:
        lines.append(f"- General skills after tuning: {NOT_YET}.")
    return "\n".join(lines)


# ---------------------------------------------------------------- helpers

def fmt(value: Any, digits: int, *, sign: bool = False) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-" if value is None else str(value)
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "-"


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A run file's JSON object, or None when absent or unreadable: the card then says the
    figure is missing rather than failing the command that refreshes it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_yaml_file(path: Path) -> dict[str, Any] | None:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None
