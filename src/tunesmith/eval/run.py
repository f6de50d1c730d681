"""`tunesmith eval RUN`: base vs tuned on the run's held-out rows, greedy, same prompts.

Writes RUN/eval/outputs.jsonl (both answers and their scores per example) and
RUN/eval/scores.json = {"base": {metric: value}, "tuned": {metric: value}, "n": N}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.config import RunConfig, load_config
from tunesmith.errors import TunesmithError, UsageError
from tunesmith.eval.generate import generate_greedy
from tunesmith.eval.metrics import aggregate, score_example
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.models.encode import ensure_chat_template, prompt_ids
from tunesmith.models.load import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.source import resolve_source

# Room for a tuned answer a little longer than the longest reference, no more: the base
# model often rambles, and every extra token is paid for on both models.
EXTRA_TOKENS = 16


@dataclass
class EvalCase:
    line: int
    messages: list[dict[str, str]]
    reference: str


def load_cases(run_dir: Path, limit: int | None) -> list[EvalCase]:
    path = run_dir / "data" / "val.jsonl"
    if not path.is_file():
        raise TunesmithError(f"{path} not found: run `tunesmith train` into {run_dir} first")
    cases = []
    for number, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        case = _case(text)
        if case is None:
            raise TunesmithError(f"{path}:{number}: not a validation row as `tunesmith train` writes it "
                                 f"(was the file edited?); run train again with --restart to rewrite it")
        cases.append(case)
    if not cases:
        raise TunesmithError(f"{path} has no validation rows to evaluate")
    return cases[:limit] if limit else cases


def _case(text: str) -> EvalCase | None:
    """A row of RUN/data/val.jsonl: its prompt turns and the last assistant turn as the reference."""
    try:
        row = json.loads(text)
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return EvalCase(int(row["line"]), messages[:last], str(messages[last]["content"]))
    except (ValueError, KeyError, TypeError):
        return None


def load_models(cfg: RunConfig, run_dir: Path) -> tuple[Any, Any, Any]:
    """(tokenizer, base, tuned). For LoRA one model serves both: the adapter is switched off
    for the base answers, so only one copy of the weights is in memory."""
    device = pick_device()
    dtype = pick_dtype(cfg.model.dtype, device)
    path = resolve_source(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)
    ensure_chat_template(tokenizer)
    base = load_model(path, dtype=dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
    if cfg.method.name == "full":
        tuned_dir = run_dir / "model"
        if not (tuned_dir / "config.json").is_file():
            raise TunesmithError(f"{tuned_dir} not found: the run has no trained model yet")
        tuned = load_model(str(tuned_dir), dtype=dtype, device=device)
        return tokenizer, base, tuned
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise TunesmithError(f"{adapter} not found: the run has no trained adapter yet")
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(base, str(adapter))
    return tokenizer, None, tuned


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no config.yaml); train into it first")
    cfg = load_config(config_path, overrides)
    cases = load_cases(run_dir, cfg.eval.max_examples)
    tokenizer, base, tuned = load_models(cfg, run_dir)
    prompts = [prompt_ids(tokenizer, c.messages) for c in cases]
    longest = max(len(tokenizer(c.reference, add_special_tokens=False)["input_ids"]) for c in cases)
    max_new = min(cfg.eval.max_new_tokens, longest + EXTRA_TOKENS)

    def answers(model: Any, name: str) -> list[str]:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if on_progress:
                on_progress(name, done[0], len(cases))

        return generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new, batch_size=cfg.eval.batch_size, on_batch=tick)

    if base is None:
        with tuned.disable_adapter():
            base_out = answers(tuned, "base")
    else:
        base_out = answers(base, "base")
    tuned_out = answers(tuned, "tuned")

    rows, base_scores, tuned_scores = [], [], []
    for case, b, t in zip(cases, base_out, tuned_out):
        sb, st = score_example(b, case.reference), score_example(t, case.reference)
        base_scores.append(sb)
        tuned_scores.append(st)
        rows.append({
            "line": case.line,
            "prompt": case.messages,
            "reference": case.reference,
            "base": b,
            "tuned": t,
            "scores": {"base": sb, "tuned": st},
        })
    scores = {"base": aggregate(base_scores), "tuned": aggregate(tuned_scores), "n": len(cases)}
    write_jsonl_atomic(run_dir / "eval" / "outputs.jsonl", rows)
    write_json_atomic(run_dir / "eval" / "scores.json", scores)
    return scores
