"""Score one generated answer against its reference, and average scores over a split.

Pure functions on strings, with no model code, so they are cheap to test and the same
scores come out on every machine. A reference that is a JSON object is scored by field
(did the model get the city right?); any other reference by exact match and token F1.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from functools import lru_cache
from typing import Any

# The guide's warning, printed wherever token F1 or ROUGE-L are shown.
LEXICAL_CAVEAT = ("token F1 and ROUGE-L count shared words: they correlate poorly with how useful an answer is "
                  "(the guide); have domain experts compare the answers: tunesmith review RUN --raters NAMES")

# A whole answer wrapped in one Markdown code fence, optionally tagged json. Small chat
# models often fence JSON even when asked not to; the content is still usable, so the
# fence alone should not cost them json_valid.
_FENCE = re.compile(r"\A```(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.DOTALL | re.IGNORECASE)
# A plain decimal number written as a string, e.g. "3" or "-2.50". Deliberately narrower
# than float(), which would also accept "nan", "inf" and "1_000".
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def score_example(prediction: str, reference: str) -> dict[str, float]:
    """Metrics for one example: exact_match always, plus JSON or token-overlap metrics.

    JSON-object reference -> json_valid and json_field_accuracy; otherwise token_f1 and rouge_l.
    """
    scores = {"exact_match": _exact_match(prediction, reference)}
    expected = _parse_json_object(reference.strip())
    if expected is not None:
        predicted = _parse_json_object(_strip_fence(prediction.strip()))
        scores["json_valid"] = 1.0 if predicted is not None else 0.0
        scores["json_field_accuracy"] = _field_accuracy(predicted, expected)
    else:
        scores["token_f1"] = token_f1(prediction, reference)
        scores["rouge_l"] = rouge_l(prediction, reference)
    return scores


def aggregate(per_example: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the examples that have it, keys sorted, 4 decimals.

    A metric's mean uses only the examples that carry it, so on a mixed split the JSON
    metrics are averaged over the JSON references alone.
    """
    values: dict[str, list[float]] = {}
    for scores in per_example:
        for name, value in scores.items():
            values.setdefault(name, []).append(float(value))
    return {name: round(sum(v) / len(v), 4) for name, v in sorted(values.items())}


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1 after lowercasing and removing punctuation."""
    predicted, expected = _tokens(prediction), _tokens(reference)
    if not predicted and not expected:
        return 1.0
    if not predicted or not expected:
        return 0.0
    common = _count_common(predicted, expected)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), no stemming."""
    if not _tokens(prediction) and not _tokens(reference):
        return 1.0  # as token_f1: two empty answers agree
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


class _Tokens:
    """rouge-score's tokenizer interface over the same tokens token_f1 uses."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return _tokens(text)


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokens())


def _exact_match(prediction: str, reference: str) -> float:
    return 1.0 if _collapse_whitespace(prediction) == _collapse_whitespace(reference) else 0.0


def _collapse_whitespace(text: str) -> str:
    # split() with no argument also drops leading/trailing whitespace.
    return " ".join(text.split())


def _strip_fence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group(1).strip() if match else text


def _parse_json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _field_accuracy(predicted: dict[str, Any] | None, expected: dict[str, Any]) -> float:
    if predicted is None:
        return 0.0
    if not expected:
        # Nothing to extract: any valid object is right.
        return 1.0
    right = sum(
        1 for key, value in expected.items()
        if key in predicted and _normalise(predicted[key]) == _normalise(value)
    )
    return right / len(expected)


def _normalise(value: Any) -> Any:
    """A comparable form: strings trimmed and lowercased, numbers (and numeric strings) as float."""
    # bool before int: bool is a subclass of int, and True must not equal 1 or "1".
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        return float(text) if _NUMBER.fullmatch(text) else text.lower()
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {key: _normalise(v) for key, v in value.items()}
    return value


def _tokens(text: str) -> list[str]:
    # Delete punctuation as SQuAD does ("don't" -> "dont"): its ASCII set, which includes
    # symbols like "$", plus Unicode punctuation so a curly apostrophe acts like "'".
    kept = "".join(ch for ch in text.lower() if not _is_punctuation(ch))
    return kept.split()


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def _count_common(predicted: list[str], expected: list[str]) -> int:
    remaining: dict[str, int] = {}
    for token in expected:
        remaining[token] = remaining.get(token, 0) + 1
    common = 0
    for token in predicted:
        if remaining.get(token, 0) > 0:
            remaining[token] -= 1
            common += 1
    return common
