"""The forgetting check: a small general set, answered by base and tuned, checked by code.

The guide's failure mode: "Catastrophic forgetting: the model becomes great at your task but
forgets general capabilities. Fix by reducing learning rate, lowering epochs to 1-2, or
mixing your fine-tuning data with a small percentage of general instruction data."
`general_set.jsonl` (written for tunesmith, copied from no dataset) holds short questions of
three kinds, each saying what form of answer it wants, so a good small instruct model can
pass and a tuned model that lost the skill fails:

- `fact`: stable facts (capitals, chemical symbols, planets, authors, units, calendars);
- `arithmetic`: small sums, percentages and one-number word problems;
- `format`: following an instruction about form (N words, only JSON with given keys, all
  uppercase, a list of N items, a first word, a missing letter, a number only).

Each line: {"id": "fact-001", "kind": "fact", "prompt": "...", "check": {"type": ..., ...}}.
Checks are data; `check_answer` interprets them. The answer is stripped of surrounding
whitespace first. Check types (and their fields):

- `contains_any` (values: [str]): one of the values occurs in the answer as a whole word or
  phrase, ignoring case ("Au" matches "Au." but not "August").
- `number` (value: number): the answer states value: on the first line that holds a number,
  the first or the last number equals it ("42", "The answer is 42.", "17 + 25 = 42" and
  "42 (6 x 7)" pass; "17 + 25 = 32" fails). Small models show their working on one line
  whatever the prompt says; the format items test obedience, these test arithmetic.
  "42.", "42.0", "1,200", "-5", ".25" and the words zero to twenty and the tens to ninety
  are numbers; a number glued to letters ("H2O") is not.
- `json_keys` (keys: [str]): the answer is one JSON object (a ``` fence around it is
  allowed) with exactly these keys.
- `word_count` (value: int): exactly that many words (runs of non-space characters holding
  a letter or digit; "well-known" is one word, a lone "-" is none).
- `uppercase`: has letters, and none of them is lowercase.
- `list_items` (value: int, sep: str): split on sep, exactly that many non-empty items.
- `starts_with` (value: str): the answer's first word is value, ignoring case; quotes or
  markdown emphasis before it are skipped.
- `lacks_letter` (value: one letter): has letters, and not that one in either case.
- `regex` (pattern: str): Python `re.search` on the answer; anchor it as needed.
- `all` (checks: [check]): every inner check passes.
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from typing import Any

from tunesmith.errors import TunesmithError

KINDS = ("fact", "arithmetic", "format")
# Long enough for every answer the set asks for (the longest: a three-line poem, a ten-word
# sentence, a small JSON object) with room for a sentence around it; short, because both
# models answer every item and each token is paid for twice. On the demo model 19 of 139
# base answers ramble to any cap; cutting the 64-token answers at 48 changed 1 of 278 verdicts.
GENERAL_MAX_NEW_TOKENS = 48
# A drop in the share of items passed (base minus tuned) above this is flagged.
DEFAULT_THRESHOLD = 0.05

SET_FILE = "general_set.jsonl"
DAMAGED = "the installed package is damaged: reinstall tunesmith"
_ID = re.compile(r"^(fact|arithmetic|format)-\d{3}$")
# Which fields each check type takes, and what each must be.
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "contains_any": {"values": list},
    "number": {"value": (int, float)},
    "json_keys": {"keys": list},
    "word_count": {"value": int},
    "uppercase": {},
    "list_items": {"value": int, "sep": str},
    "starts_with": {"value": str},
    "lacks_letter": {"value": str},
    "regex": {"pattern": str},
    "all": {"checks": list},
}
CHECK_TYPES = tuple(_FIELDS)

# A number as people write it: thousands separators, a decimal part, a leading minus (ASCII
# or U+2212). Not preceded by a letter, digit or dot, so "H2O" and "v1.2" give no number.
_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
# "A hexagon has six sides." knows the fact; small numbers are often written as words.
_NUMBER_WORDS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
                                                     "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORD = re.compile(rf"\b(?:{'|'.join(_NUMBER_WORDS)})\b", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_LEADING_MARKS = "\"'*_`“‘ "


# ---------------------------------------------------------------- the set

def load_general_set() -> list[dict[str, Any]]:
    """The shipped general set, every item validated: a broken package file fails here
    (and in its test), not halfway through an evaluation."""
    text = (resources.files("tunesmith.eval") / SET_FILE).read_text(encoding="utf-8")
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"tunesmith/eval/{SET_FILE}:{number}"
        try:
            item = json.loads(line)
        except ValueError as e:
            raise TunesmithError(f"{where}: not JSON ({e}); {DAMAGED}") from None
        problem = item_problem(item) or (f"id {item['id']!r} is used twice" if item["id"] in seen else None)
        if problem:
            raise TunesmithError(f"{where}: {problem}; {DAMAGED}")
        seen.add(item["id"])
        items.append(item)
    return items


def item_problem(item: Any) -> str | None:
    """What is wrong with one item of the set, or None."""
    if not isinstance(item, dict) or set(item) != {"id", "kind", "prompt", "check"}:
        return "an item is an object with exactly the keys id, kind, prompt, check"
    if not isinstance(item["id"], str) or not _ID.match(item["id"]):
        return f"id {item['id']!r} is not KIND-NNN (kinds: {', '.join(KINDS)})"
    if item["kind"] not in KINDS or not item["id"].startswith(f"{item['kind']}-"):
        return f"kind {item['kind']!r} does not match id {item['id']!r}"
    if not isinstance(item["prompt"], str) or not item["prompt"].strip():
        return "prompt must be a non-empty string"
    problem = check_problem(item["check"])
    return f"check: {problem}" if problem else None


def check_problem(check: Any) -> str | None:
    """What is wrong with one check, or None: a known type, exactly its fields, each of
    the right type (a regex that compiles, a single letter, lists of strings)."""
    if not isinstance(check, dict) or check.get("type") not in _FIELDS:
        return f"type must be one of {', '.join(CHECK_TYPES)}"
    fields = _FIELDS[check["type"]]
    if set(check) - {"type"} != set(fields):
        return f"{check['type']} takes exactly the fields {sorted(fields) or 'none'}"
    for name, kind in fields.items():
        value = check[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{check['type']}.{name} has the wrong type"
    kind = check["type"]
    if kind in ("contains_any", "json_keys"):
        listed = check["values" if kind == "contains_any" else "keys"]
        if not listed or not all(isinstance(v, str) and v for v in listed):
            return f"{kind} needs a non-empty list of non-empty strings"
    if kind in ("word_count", "list_items") and check["value"] < 1:
        return f"{kind}.value must be at least 1"
    if kind == "lacks_letter" and not (len(check["value"]) == 1 and check["value"].isalpha()):
        return "lacks_letter.value must be one letter"
    if kind == "starts_with" and not check["value"].strip():
        return "starts_with.value must be a non-empty word"
    if kind == "list_items" and not check["sep"]:
        return "list_items.sep must be a non-empty string"
    if kind == "regex":
        try:
            re.compile(check["pattern"])
        except re.error as e:
            return f"regex.pattern does not compile: {e}"
    if kind == "all":
        if not check["checks"]:
            return "all needs at least one check"
        for inner in check["checks"]:
            problem = check_problem(inner)
            if problem:
                return f"all: {problem}"
    return None


# ---------------------------------------------------------------- checking one answer

def check_answer(item: dict[str, Any], answer: str) -> bool:
    """Whether `answer` passes the item's check (see the module docstring)."""
    return _passes(item["check"], answer.strip())


def _passes(check: dict[str, Any], answer: str) -> bool:
    kind = check["type"]
    if kind == "all":
        return all(_passes(inner, answer) for inner in check["checks"])
    if kind == "contains_any":
        return any(re.search(rf"(?<!\w){re.escape(v)}(?!\w)", answer, re.IGNORECASE) for v in check["values"])
    if kind == "number":
        return any(math.isclose(found, check["value"], rel_tol=1e-9, abs_tol=1e-9) for found in stated_numbers(answer))
    if kind == "json_keys":
        value = _json_object(answer)
        return value is not None and set(value) == set(check["keys"])
    if kind == "word_count":
        return len(words(answer)) == check["value"]
    if kind == "uppercase":
        letters = [c for c in answer if c.isalpha()]
        return bool(letters) and not any(c.islower() for c in letters)
    if kind == "list_items":
        items = [part.strip(" \t\n.") for part in answer.split(check["sep"])]
        return len(items) == check["value"] and all(items)
    if kind == "starts_with":
        rest = answer.lstrip(_LEADING_MARKS)
        head = rest[: len(check["value"])]
        after = rest[len(check["value"]):len(check["value"]) + 1]
        return head.casefold() == check["value"].casefold() and not (after.isalnum() or after == "_")
    if kind == "lacks_letter":
        return any(c.isalpha() for c in answer) and check["value"].casefold() not in answer.casefold()
    if kind == "regex":
        return re.search(check["pattern"], answer) is not None
    raise ValueError(f"unknown check type {kind!r}")  # load_general_set refuses these


def stated_numbers(text: str) -> tuple[float, ...]:
    """The numbers that may state an answer: the first and the last on the first line that
    holds a number ("1,200" -> 1200.0, "42." -> 42.0, "-5" -> -5.0, "six" -> 6.0); () when
    there is none."""
    for line in text.splitlines():
        found = sorted([(m.start(), float(m.group().replace(",", "").replace("\u2212", "-")))
                        for m in _NUMBER.finditer(line)]
                       + [(m.start(), float(_NUMBER_WORDS[m.group().lower()])) for m in _NUMBER_WORD.finditer(line)])
        if found:
            return found[0][1], found[-1][1]
    return ()


def words(text: str) -> list[str]:
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def _json_object(answer: str) -> dict[str, Any] | None:
    fenced = _FENCE.match(answer)
    try:
        value = json.loads(fenced.group(1) if fenced else answer)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------- scores and the verdict

def score_general(items: list[dict[str, Any]], answers: dict[str, list[str]]) -> dict[str, Any]:
    """Share of items each model passed, overall and by kind, and the ids each failed.
    `answers` maps a model ("base", "tuned", "compare") to its answers in item order."""
    for model, given in answers.items():
        if len(given) != len(items):
            raise ValueError(f"{model}: {len(given)} answers for {len(items)} general items")
    passed = {model: [check_answer(item, answer) for item, answer in zip(items, given)]
              for model, given in answers.items()}
    scores: dict[str, Any] = {"n": len(items)}
    scores.update({model: _share(flags) for model, flags in passed.items()})
    by_kind: dict[str, Any] = {}
    for kind in [k for k in KINDS if any(item["kind"] == k for item in items)]:
        index = [i for i, item in enumerate(items) if item["kind"] == kind]
        by_kind[kind] = {"n": len(index),
                         **{model: _share([flags[i] for i in index]) for model, flags in passed.items()}}
    scores["by_kind"] = by_kind
    scores["failed"] = {model: [item["id"] for item, ok in zip(items, flags) if not ok]
                        for model, flags in passed.items()}
    return scores


def _share(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def forgetting_verdict(scores: dict[str, Any], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """`scores` (from score_general, with base and tuned) plus drop = base - tuned,
    threshold, flagged (drop > threshold), advice (the guide's remedies, when flagged) and
    noise: how many items the drop is, and how many the tuned model lost and gained."""
    n = scores["n"]
    drop = round(scores["base"] - scores["tuned"], 4)
    verdict = {**scores, "drop": drop, "threshold": threshold, "flagged": drop > threshold}
    net = round(drop * n)
    failed = scores.get("failed", {})
    lost = gained = None
    if "base" in failed and "tuned" in failed:
        lost = len(set(failed["tuned"]) - set(failed["base"]))
        gained = len(set(failed["base"]) - set(failed["tuned"]))
        verdict["lost"], verdict["gained"] = lost, gained
    verdict["noise"] = noise_note(n, net, lost, gained)
    verdict["advice"] = advice(scores, drop, threshold, n, net) if verdict["flagged"] else None
    return verdict


def noise_note(n: int, net: int, lost: int | None, gained: int | None) -> str:
    """How much of the drop chance can explain: on a small set a few items either way is
    noise. With the items each model failed, an exact two-sided sign test on the items that
    changed (lost vs gained) says how often a drop this size comes from chance alone."""
    size = f"{abs(net)} of {n} items ({'fewer' if net >= 0 else 'more'} passed by tuned than by base)"
    if lost is None or gained is None:
        return f"the difference is {size}; on {n} items a few items either way can be chance"
    p = sign_test(lost, gained)
    return (f"the difference is {size}: tuned lost {lost} items base passed and gained {gained}; a sign test on "
            f"those {lost + gained} gives p = {p:.2f} (below 0.05: unlikely to be chance; above: a few items "
            f"either way can be chance)")


def sign_test(lost: int, gained: int) -> float:
    """Two-sided exact binomial test of lost vs gained at p = 1/2 (McNemar's exact test)."""
    changed = lost + gained
    if changed == 0:
        return 1.0
    tail = sum(math.comb(changed, k) for k in range(min(lost, gained) + 1)) / 2 ** changed
    return min(1.0, 2 * tail)


def advice(scores: dict[str, Any], drop: float, threshold: float, n: int, net: int) -> str:
    return (f"general skills dropped: tuned passes {scores['tuned']:.0%} of {n} general items, base "
            f"{scores['base']:.0%} (drop {drop:.1%} = {net} items, above the threshold {threshold:.0%}): the "
            f"model may have forgotten general capabilities (catastrophic forgetting). Remedies: lower the learning "
            f"rate (e.g. halve train.lr), train 1-2 epochs (--set train.epochs=1), or mix in a small share of "
            f"general instruction data (--set data.mix_general=0.1); then run eval again")
