"""`tunesmith eval RUN`: base against tuned (and against another run) on the same prompts, greedy.

What is scored: the run's held-out rows, or any curated file (--data); the run's adapter, or
any checkpoint (--checkpoint); with --compare RUN2, RUN2's tuned model too. Each model also
answers the shipped general set, so a tuned model that lost general skills is flagged.

Writes RUN/eval/outputs.jsonl (the answers and per-example scores), RUN/eval/scores.json
(means, perplexity of the references, per category, the general set), RUN/eval/general.jsonl
(each general item's answers and verdicts) and RUN/eval/report.html.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.config import RunConfig, load_run_config
from tunesmith.eval.cases import EvalCase, eval_set
from tunesmith.eval.general import (
    GENERAL_MAX_NEW_TOKENS, check_answer, forgetting_verdict, load_general_set, score_general,
)
from tunesmith.eval.generate import answer_budget, generate_greedy
from tunesmith.eval.metrics import LEXICAL_CAVEAT, aggregate, score_example
from tunesmith.eval.perplexity import perplexity, reference_nll
from tunesmith.eval.report import write_eval_report
from tunesmith.io import write_json_atomic, write_jsonl_atomic
from tunesmith.models.card import write_model_card
from tunesmith.models.encode import prompt_ids
from tunesmith.models.load import load_model
from tunesmith.train.checkpoint import Checkpoint
from tunesmith.train.tuned import base_source, find_checkpoint, load_tuned

Progress = Callable[[str, int, int], None]


@dataclass
class Answers:
    """What one model said and how surprised it was by the references."""

    texts: list[str]
    nll: list[tuple[float, int]]  # (summed NLL, reference tokens) per case
    general: list[str]  # answers to the general set, in its order


def evaluate_run(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    *,
    data: str | Path | None = None,
    checkpoint: str | None = None,
    compare: str | Path | None = None,
    on_progress: Progress | None = None,
    on_note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    other = Path(compare) if compare is not None else None
    other_cfg = load_run_config(other, flag="--compare") if other is not None else None
    chosen = find_checkpoint(run_dir, checkpoint) if checkpoint is not None else None
    cases = eval_set(run_dir, cfg, data)
    for note in cases.notes:
        if on_note:
            on_note(note)
    general = load_general_set() if cfg.eval.general else []

    def work(name: str, tokenizer: Any, model: Any) -> Answers:
        return answer(name, tokenizer, model, cases.cases, general, cfg, on_progress)

    answers = run_answers(cfg, run_dir, chosen, work)
    if other is not None and other_cfg is not None:
        if other_cfg.model.source != cfg.model.source and on_note:
            on_note(f"--compare {other}: its base model is {other_cfg.model.source}, not {cfg.model.source}")
        answers["compare"] = run_answers(other_cfg, other, None, work, with_base=False)["tuned"]

    rows = output_rows(cases.cases, answers)
    scores = summarise(cases.cases, answers, rows, general, cfg)
    scores["source"] = {"data": cases.source, "checkpoint": chosen.path.name if chosen else None,
                        "compare": str(other) if other is not None else None,
                        "seen_in_training": cases.seen_in_training}
    write_jsonl_atomic(run_dir / "eval" / "outputs.jsonl", rows)
    if general:
        write_jsonl_atomic(run_dir / "eval" / "general.jsonl", general_rows(general, answers))
    write_json_atomic(run_dir / "eval" / "scores.json", scores)
    write_eval_report(run_dir)
    write_model_card(run_dir)  # the card's evaluation section now has these scores
    return scores


# ---------------------------------------------------------------- generating


def run_answers(cfg: RunConfig, run_dir: Path, checkpoint: Checkpoint | None,
                work: Callable[[str, Any, Any], Answers], *, with_base: bool = True) -> dict[str, Answers]:
    """Answers of the run's base (unless with_base is off) and tuned model. Models are freed
    before returning, so a --compare run is loaded only after this one has gone."""
    src = base_source(cfg)
    tokenizer, path, dtype, device = src.tokenizer, src.path, src.dtype, src.device
    full = cfg.method.name == "full"
    # LoRA: the adapter wraps the base, and the base answers come from the same object with the
    # adapter off. Full fine-tuning: two models, the base only when its answers are wanted.
    base = None
    if with_base or not full:
        base = load_model(path, dtype=dtype, device=device, trust_remote_code=cfg.model.trust_remote_code)
    tuned = load_tuned(cfg, run_dir, base, path, dtype=dtype, device=device, checkpoint=checkpoint)
    out = {}
    if with_base and full:
        out["base"] = work("base", tokenizer, base)
    elif with_base:
        with tuned.disable_adapter():
            out["base"] = work("base", tokenizer, tuned)
    out["tuned"] = work("tuned" if with_base else "compare", tokenizer, tuned)
    del base, tuned
    gc.collect()
    return out


def answer(name: str, tokenizer: Any, model: Any, cases: list[EvalCase], general: list[dict[str, Any]],
           cfg: RunConfig, on_progress: Progress | None) -> Answers:
    prompts = [prompt_ids(tokenizer, c.messages) for c in cases]
    max_new = answer_budget(tokenizer, [c.reference for c in cases], cfg.eval.max_new_tokens)
    texts = generate_greedy(model, tokenizer, prompts, max_new_tokens=max_new, batch_size=cfg.eval.batch_size,
                            on_batch=_ticker(name, len(cases), on_progress))
    nll = reference_nll(model, tokenizer, [c.messages + [{"role": "assistant", "content": c.reference}] for c in cases],
                        on_batch=_ticker(f"{name}: perplexity", len(cases), on_progress))
    general_texts = []
    if general:
        general_prompts = [prompt_ids(tokenizer, [{"role": "user", "content": item["prompt"]}]) for item in general]
        general_texts = generate_greedy(model, tokenizer, general_prompts, max_new_tokens=GENERAL_MAX_NEW_TOKENS,
                                        batch_size=cfg.eval.batch_size,
                                        on_batch=_ticker(f"{name}: general set", len(general), on_progress))
    return Answers(texts, nll, general_texts)


def _ticker(name: str, total: int, on_progress: Progress | None) -> Callable[[int], None] | None:
    if on_progress is None:
        return None
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        on_progress(name, done[0], total)

    return tick


# ---------------------------------------------------------------- scoring


def output_rows(cases: list[EvalCase], answers: dict[str, Answers]) -> list[dict[str, Any]]:
    """One row per case: the prompt, the reference, each model's answer and its scores."""
    rows = []
    for i, case in enumerate(cases):
        scores = {}
        for name, said in answers.items():
            scores[name] = score_example(said.texts[i], case.reference)
            total, tokens = said.nll[i]
            scores[name]["ref_nll_per_token"] = round(total / tokens, 4) if tokens else None
        rows.append({"line": case.line, "file": case.file, "category": case.category, "prompt": case.messages,
                     "reference": case.reference, **{name: said.texts[i] for name, said in answers.items()},
                     "scores": scores})
    return rows


def summarise(cases: list[EvalCase], answers: dict[str, Answers], rows: list[dict[str, Any]],
              general: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    models = list(answers)
    scores: dict[str, Any] = {"n": len(cases), "models": models}
    scores.update(model_means(range(len(cases)), answers, rows))
    categories = sorted({c.category for c in cases if c.category is not None})
    scores["categories"] = {
        category: {"n": len(picked), **model_means(picked, answers, rows)}
        for category in categories
        for picked in [[i for i, c in enumerate(cases) if c.category == category]]
    }
    scores["general"] = None
    if general:
        result = score_general(general, {name: said.general for name, said in answers.items()})
        scores["general"] = forgetting_verdict(result, cfg.eval.forgetting_threshold)
    scores["caveat"] = LEXICAL_CAVEAT
    return scores


def general_rows(general: list[dict[str, Any]], answers: dict[str, Answers]) -> list[dict[str, Any]]:
    """Each general item with every model's answer and whether it passed: what a flagged drop
    is made of, item by item."""
    return [{"id": item["id"], "kind": item["kind"], "prompt": item["prompt"],
             **{name: {"answer": said.general[i], "passed": check_answer(item, said.general[i])}
                for name, said in answers.items()}}
            for i, item in enumerate(general)]


def model_means(picked: Any, answers: dict[str, Answers], rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each model's mean scores over the picked cases, plus the perplexity of their references."""
    indices = list(picked)
    means = {}
    for name, said in answers.items():
        per_example = [{k: v for k, v in rows[i]["scores"][name].items() if k != "ref_nll_per_token"} for i in indices]
        means[name] = aggregate(per_example)
        ppl = perplexity([said.nll[i] for i in indices])
        if ppl is not None:
            means[name]["perplexity"] = ppl
    return means
