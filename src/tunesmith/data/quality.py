"""Flag assistant turns that would teach a model something bad, without a model.

`quality_issues` looks at every assistant turn of one chat, next to the user turn before it.
The checks are heuristics tuned for precision: a flagged turn should almost always deserve a
look, at the cost of missing some. They are pure and cheap (string tests first; difflib and
json only run on the few turns that get that far). Issue codes:

- `trivial_response`: empty or whitespace-only, only punctuation (`...`, `?`), or a known
  placeholder (`TODO`, `N/A`, `null`, `lorem ipsum dolor...`, `{response}`). Short real
  answers are never trivial, whatever their length: `4`, `positive`, `yes`, `Paris`, `None`
  (a correct answer to "which of these are prime: 4, 6, 8?"). A placeholder word that the
  user turn itself mentions ("answer N/A if unknown") is an answer, not a placeholder.
  `[]` and `{}` are valid empty results of an extraction task.
- `echo`: the response repeats the user turn: equal once case, spacing and end punctuation
  are ignored; or starting with the whole user turn (the prompt leaked into the target); or
  at least 90% similar (difflib) while starting and ending with the same words as the user
  turn. The anchoring keeps edit tasks ("Fix the grammar: <text>" -> corrected text) from
  counting: their response lacks the instruction. User turns shorter than 20 characters are
  never echoed ("Hi" -> "Hi!" is a greeting).
- `truncated`: the response stops mid-way: an unclosed code fence, JSON that does not parse
  and has unclosed brackets, a final list marker with no item, or, without terminal
  punctuation, a trailing comma or colon, an unclosed bracket or quote on the last line, or a
  last word that cannot end a sentence ("the", "and", "because", ...; at least 3 words).
  Closed code blocks, valid JSON, lists, numbers, URLs, emoji and short answers pass.
- `refusal`: a refusal or AI disclaimer in the first 150 characters ("I'm sorry, but I
  can't", "As an AI language model", "I cannot help with", a response that opens with "I
  am unable to"). "I" must be the one refusing, and the verb must be about helping:
  "I can't believe how easy this is" and "you cannot divide by zero" pass.

Details start with the turn's position, as `messages[3]: ...`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = ["QualityIssue", "quality_issues"]


@dataclass(frozen=True)
class QualityIssue:
    code: str  # "trivial_response" | "echo" | "truncated" | "refusal"
    detail: str


def quality_issues(messages: list[dict[str, str]]) -> list[QualityIssue]:
    """Issues with every assistant turn, each judged against the user turn before it."""
    issues: list[QualityIssue] = []
    user_text = ""
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            continue  # the formats stage reports wrong types; nothing to judge here
        if role == "user":
            user_text = content
        elif role == "assistant":
            issues.extend(
                QualityIssue(code, f"messages[{index}]: {detail}")
                for code, detail in _response_problems(content, user_text)
            )
    return issues


def _response_problems(response: str, user_text: str) -> list[tuple[str, str]]:
    response = response.strip()
    trivial = _trivial_reason(response, user_text)
    if trivial:
        return [("trivial_response", trivial)]  # nothing else to say about an empty answer
    checks = (
        ("echo", _echo_reason(response, user_text)),
        ("truncated", _truncation_reason(response)),
        ("refusal", _refusal_reason(response)),
    )
    return [(code, reason) for code, reason in checks if reason]


# --- trivial_response -------------------------------------------------------------------

PLACEHOLDERS = frozenset(
    {
        "todo", "tbd", "tba", "fixme", "n/a", "null", "placeholder", "lorem ipsum",
        "insert answer here", "insert response here", "your answer here", "your response here",
        "answer here", "response here", "to be added", "to be completed", "coming soon",
    }
)  # fmt: skip
# Template variables that leaked instead of being filled: {response}, {{output}}, <answer>.
TEMPLATE_LEAK_RE = re.compile(
    r"[\[{<]{1,2}\s*(?:answer|response|output|completion|reply|result|target|assistant|generation)"
    r"(?:[ _](?:here|text))?\s*[\]}>]{1,2}",
    re.IGNORECASE,
)
LOREM_IPSUM_RE = re.compile(r"lorem ipsum dolor", re.IGNORECASE)
EMPTY_RESULTS = frozenset({"[]", "{}"})
# What surrounds a placeholder without changing it: "TODO.", "[TBD]", "'N/A'".
PLACEHOLDER_WRAPPING = " \t\n.,;:!?'\"`*_()[]"


def _trivial_reason(response: str, user_text: str) -> str | None:
    if not response:
        return "empty response"
    if response in EMPTY_RESULTS:
        return None
    if _is_punctuation_only(response):
        return f"only punctuation: {_quote(response)}"
    if TEMPLATE_LEAK_RE.fullmatch(response):
        return f"unfilled template variable: {_quote(response)}"
    if LOREM_IPSUM_RE.match(response):
        return "lorem ipsum filler"
    key = response.strip(PLACEHOLDER_WRAPPING).lower()
    if key in PLACEHOLDERS and not _mentions(user_text, key):
        return f"placeholder: {_quote(response)}"
    return None


def _is_punctuation_only(text: str) -> bool:
    # all() stops at the first letter, so real answers cost one character test.
    return all(char.isspace() or unicodedata.category(char).startswith("P") for char in text)


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


# --- echo -------------------------------------------------------------------------------

ECHO_MIN_CHARS = 20
ECHO_MIN_SIMILARITY = 0.9
ECHO_ANCHOR_WORDS = 3
EDGE_PUNCTUATION = " .,;:!?'\"`"


def _echo_reason(response: str, user_text: str) -> str | None:
    user = _normalise(user_text)
    if len(user) < ECHO_MIN_CHARS:
        return None
    reply = _normalise(response)
    if reply == user:
        return "response repeats the user turn"
    if reply.startswith(user):
        return "response starts with the whole user turn"
    similarity = _anchored_similarity(user, reply)
    if similarity >= ECHO_MIN_SIMILARITY:
        return f"response is {int(similarity * 100)}% the same as the user turn"
    return None


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split()).strip(EDGE_PUNCTUATION)


def _anchored_similarity(user: str, reply: str) -> float:
    """difflib's ratio over words, or 0 when the texts do not start and end with the same words."""
    shorter, longer = sorted((len(user), len(reply)))
    # ratio <= 2 * shorter / (shorter + longer): skip pairs that cannot reach the threshold.
    if 2 * shorter < ECHO_MIN_SIMILARITY * (shorter + longer):
        return 0.0
    user_words, reply_words = user.split(), reply.split()
    n = ECHO_ANCHOR_WORDS
    if user_words[:n] != reply_words[:n] or user_words[-n:] != reply_words[-n:]:
        return 0.0
    # Compared word by word: on characters difflib takes milliseconds for 500-char texts.
    matcher = SequenceMatcher(None, user_words, reply_words, autojunk=False)
    if matcher.quick_ratio() < ECHO_MIN_SIMILARITY:
        return 0.0
    return matcher.ratio()


# --- truncated --------------------------------------------------------------------------

FENCE_RE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
LIST_MARKER = r"[ \t]*(?:[-*+•]|\d{1,3}[.)])"
BARE_LIST_MARKER_RE = re.compile(LIST_MARKER)
LIST_ITEM_RE = re.compile(LIST_MARKER + r"[ \t]+\S")
# A response that ends with one of these ended on purpose (or at least is not mid-word).
TERMINAL_CHARS = frozenset(".!?…。！？)]}>\"'`»”’*_|~")
# Words that cannot end an English sentence. Prepositions are left out on purpose: a
# stranded one ("what it's made of", "I'd love to") is normal in answers.
DANGLING_WORDS = frozenset(
    {"the", "an", "and", "or", "nor", "but", "because", "whose", "its", "my", "your", "their",
     "our", "than", "whether", "including"}
)  # fmt: skip
DANGLING_MIN_WORDS = 3
EMOTICON_PARENS_RE = re.compile(r"[:;=]-?[()]")
OPENING_QUOTE_RE = re.compile(r'(?:^|(?<=[\s(\[]))"(?=\S)')


def _truncation_reason(response: str) -> str | None:
    if ("```" in response or "~~~" in response) and len(FENCE_RE.findall(response)) % 2:
        return "code block opened with ``` but never closed"
    if response[0] in "{[":
        if _parses_as_json(response):
            return None
        depth = _json_bracket_depth(response)
        if depth > 0:
            return f"JSON cut off ({depth} unclosed bracket{'s' if depth > 1 else ''})"
        # "[1] Smith et al. ..." is not JSON at all: judge it as text.
    if _ends_with_empty_list_item(response):
        return "ends with a list marker and no item"
    if response[-1] in TERMINAL_CHARS:
        return None
    return _unfinished_ending(response)


def _ends_with_empty_list_item(response: str) -> bool:
    # The line before must be a list item too: a result on a line of its own ("Total:\n42.")
    # looks like a bare "42." marker.
    last_break = response.rfind("\n")
    if last_break < 0 or not BARE_LIST_MARKER_RE.fullmatch(response, last_break + 1):
        return False
    previous_line = response[response.rfind("\n", 0, last_break) + 1 : last_break]
    return LIST_ITEM_RE.match(previous_line) is not None


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _json_bracket_depth(text: str) -> int:
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
    return depth + in_string  # an unterminated string is one more thing left open


def _unfinished_ending(response: str) -> str | None:
    last_char = response[-1]
    if last_char in ",:":
        return f"ends with {last_char!r}" if len(response.split()) >= DANGLING_MIN_WORDS else None
    last_line = response[response.rfind("\n") + 1 :]
    if _unclosed_brackets(last_line):
        return "ends with an unclosed bracket"
    if _unclosed_quote(response, last_line):
        return "ends inside a quotation"
    words = response.split()
    last_word = words[-1]
    if len(words) >= DANGLING_MIN_WORDS and last_word in DANGLING_WORDS:
        return f"ends with {last_word!r}"
    return None


def _unclosed_brackets(line: str) -> bool:
    # Both kinds together, so that a half-open interval "[0, 1)" balances.
    line = EMOTICON_PARENS_RE.sub("", line)
    return line.count("(") + line.count("[") > line.count(")") + line.count("]")


def _unclosed_quote(response: str, last_line: str) -> bool:
    # German quotes „…“ close with “, so only count curly quotes in text without „.
    if "„" not in response and response.count("“") > response.count("”"):
        return True
    # Straight quotes: an odd count is ambiguous (5'11", 15" screen); the last one must also
    # look like an opening quote: after a space or bracket, before a word.
    if last_line.count('"') % 2 == 0:
        return False
    last_quote = last_line.rfind('"')
    return OPENING_QUOTE_RE.match(last_line, last_quote) is not None


# --- refusal ----------------------------------------------------------------------------

REFUSAL_WINDOW = 150
# Verbs that make "I can't ..." a refusal to help rather than "I can't believe ...".
HELP_VERBS = (
    r"(?:help(?!\s+but\b)|assist|provide|comply|fulfil|fulfill|generate|create|produce|write|"
    r"engage|participate|support|answer|respond|do\s+(?:that|this|so)|continue|complete|share|"
    r"give\s+you|offer|discuss|translate)"
)
I_CANNOT = (
    r"(?:can't|cannot|can\s+not|won't|will\s+not|am\s+unable\s+to|'m\s+unable\s+to|"
    r"am\s+not\s+able\s+to|'m\s+not\s+able\s+to|am\s+not\s+allowed\s+to|'m\s+not\s+allowed\s+to|"
    r"am\s+not\s+going\s+to|'m\s+not\s+going\s+to|must\s+decline\s+to|have\s+to\s+decline\s+to|"
    r"don't\s+feel\s+comfortable|do\s+not\s+feel\s+comfortable|'m\s+not\s+comfortable|"
    r"am\s+not\s+comfortable)"
)
AFTER_APOLOGY = rf",?\s+(?:but\s+)?i\s*{I_CANNOT}"
INAPPROPRIATE = r"\s+(?:is|would\s+be)\s+(?:not\s+appropriate|inappropriate|unethical)\s+for\s+me\s+to\b"
# Matched against the lowercased opening. Grouped by first letter, each group checking right
# after it that a word starts there: the regex engine then skips straight to candidate
# letters, where a leading \b on every alternative made it 10x slower.
REFUSAL_RE = re.compile(
    rf"""
      a(?<![\w']a)(?:
          s\s+an\s+ai(?:\s+language|\s+text-based)?(?:\s+model|\s+assistant)\b
        | s\s+an\s+ai,
        | s\s+a\s+(?:large\s+)?language\s+model\b
        | gainst\s+my\s+(?:programming|guidelines|policies|policy|ethical\s+guidelines)\b
        | (?:fraid|pologi[sz]e){AFTER_APOLOGY}
      )
    | i(?<![\w']i)(?:
          (?:'m|\s+am)\s+(?:just|only)\s+an\s+ai\b
        | (?:'m\s+|\s+am\s+|\s+)(?:sorry|afraid|apologi[sz]e){AFTER_APOLOGY}
        | \s*{I_CANNOT}\s+{HELP_VERBS}
        | \s+(?:must|have\s+to)\s+(?:respectfully\s+|politely\s+)?decline\b
        | t{INAPPROPRIATE}
      )
    | s(?<![\w']s)orry{AFTER_APOLOGY}
    | t(?<![\w']t)his{INAPPROPRIATE}
    """,
    re.VERBOSE,
)
# Only a refusal when the response opens with it: "I am unable to reproduce the bug, but..."
# later on is help, not a refusal.
REFUSAL_OPENING_RE = re.compile(r"(?:unfortunately,?\s+)?i(?:'m|\s+am)\s+(?:unable|not\s+able)\s+to\b")


def _refusal_reason(response: str) -> str | None:
    original = response[:REFUSAL_WINDOW].replace("\u2019", "'")  # curly apostrophe
    opening = original.lower()
    found = REFUSAL_OPENING_RE.match(opening) or REFUSAL_RE.search(opening)
    if found is None:
        return None
    # lower() can change the length of a few characters (İ); then show the lowercased text.
    shown = original if len(original) == len(opening) else opening
    phrase = " ".join(shown[found.start() : found.end()].split())
    return f"refusal phrase {_quote(phrase)} at char {found.start() + 1}"


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
