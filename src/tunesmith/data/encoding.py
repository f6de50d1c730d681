"""Find and safely repair encoding damage in one text field of a training example.

`scan_text` reports what is wrong; `repair_text` fixes only what can be fixed without
guessing and says which fixes changed the text. Both are pure and run on every message of
every row, so clean ASCII text (the common case) takes a fast path of a few string scans.

Issue codes, one `TextIssue` per code at most (the detail names the first occurrence):

- `bom`: U+FEFF at the start of the field (a byte-order mark that survived decoding).
- `mojibake`: UTF-8 that was decoded as cp1252/latin-1 somewhere upstream (`cafÃ©`,
  `â€™`), as judged by ftfy's badness heuristic, which is tuned not to fire on real text in
  any script. C1 control characters (U+0080-U+009F) count as mojibake too: they are almost
  always cp1252 bytes read as latin-1, and ftfy maps them back (`\\x93` -> `“`).
- `control_chars`: C0 controls other than tab, newline and carriage return, DEL, lone
  surrogates (they make UTF-8 encoding fail later) and invisible junk format characters
  (zero-width space, word joiner, soft hyphen, U+FEFF inside the text). Joiners that carry
  meaning are kept: ZWJ (emoji sequences), ZWNJ (Persian, Indic scripts), direction marks
  (right-to-left text) and emoji tag characters (subdivision flags).
- `odd_whitespace`: Unicode space separators other than the plain space (NBSP, thin and
  em spaces...), line/paragraph separators, CRLF or lone CR line endings, and whitespace at
  either end of the field (it becomes training tokens). The ideographic space U+3000 is
  normal CJK typography and is left alone; so are tabs, indentation, runs of blank lines
  and trailing spaces at the end of inner lines (a Markdown hard line break).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import ftfy
from ftfy.badness import BADNESS_RE, MOJIBAKE_CATEGORIES

__all__ = ["TextIssue", "scan_text", "repair_text"]

BOM = "\ufeff"

# Only the fixes that undo mis-decoding. The rest of ftfy's defaults would rewrite
# legitimate text: curly quotes, ligatures, full-width letters, Unicode normalisation,
# HTML entities (a code answer may legitimately contain `&amp;`). Control characters and
# line breaks are handled below, so that their fixes are reported under their own codes.
MOJIBAKE_ONLY = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_encoding=True,
    restore_byte_a0=True,
    replace_lossy_sequences=True,
    decode_inconsistent_utf8=True,
    fix_c1_controls=True,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    fix_surrogates=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)

# ftfy's BADNESS_RE (behind `ftfy.badness.is_bad`) costs ~100 us per 300 non-ASCII
# characters, whatever the script, so it only runs on small windows around suspects. Each of
# its alternatives needs a "suspect" character (below) no more than 3 characters after the
# start of the match and 4 before its end; and that suspect has a non-ASCII neighbour,
# except for the five kinds in SOLITARY_SUSPECTS. So plain Cyrillic, Greek, CJK, lowercase
# accented Latin, and "Ärger", « guillemets », “quotes” or 5 °C between ASCII letters and
# spaces never reach the big regex. tests/test_encoding.py checks, also on random strings,
# that the verdict is the same as `is_bad`.
SUSPECTS = (
    "{c1}{bad}{law}{currency}{start_punctuation}{end_punctuation}{numeric}{upper_accented}{box}"
    "\u0152\u0153\u00d8\u00d9\u00b0\u0402".format(**MOJIBAKE_CATEGORIES)
)
SOLITARY_SUSPECTS = "{c1}\u0152\u0153\u00c2\u00c3".format(**MOJIBAKE_CATEGORIES)  # Œ œ Â Ã
# Written to start with the plain class so that the regex engine skips ahead to candidates
# fast; the lookarounds then check for a non-ASCII neighbour.
SUSPECT_RE = re.compile(
    f"[{SUSPECTS}](?:(?<=[^\\x00-\\x7f].)|(?=[^\\x00-\\x7f])|(?<=[{SOLITARY_SUSPECTS}]))"
)
SUSPECT_MAX_OFFSET = 3
SUSPECT_MAX_TAIL = 4

# Invisible format characters that never carry meaning in training text.
INVISIBLE_JUNK = "\u00ad\u200b\u2060\ufeff"
# What `scan_text` reports as control_chars. C1 controls are left to the mojibake check.
CONTROL_RE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f{INVISIBLE_JUNK}\ud800-\udfff]")
ASCII_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# An ANSI terminal escape goes as a whole: removing only ESC would leave `[31m` behind.
ANSI_ESCAPE_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# What `repair_text` removes: C1 controls are included because any that are left after the
# mojibake repair could not be mapped to a character and are junk.
REMOVABLE_CONTROL_RE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{INVISIBLE_JUNK}\ud800-\udfff]")
# Space separators (category Zs) other than U+0020 and U+3000, plus U+2028/U+2029.
ODD_SPACE_RE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u2028\u2029]")
LINE_SEPARATORS = "\u2028\u2029"
# A later line that starts indented: the field has indentation structure (code, nested
# lists), so the first line's indentation is part of it and must stay.
INDENTED_LATER_LINE_RE = re.compile(r"\n[ \t]+\S")

MAX_SNIPPET = 40
# unicodedata has no names for these categories.
FALLBACK_NAMES = {"Cc": "control character", "Cs": "lone surrogate"}


@dataclass(frozen=True)
class TextIssue:
    code: str  # "mojibake" | "control_chars" | "bom" | "odd_whitespace"
    detail: str


def scan_text(text: str) -> list[TextIssue]:
    """Every encoding problem in one field, at most one issue per code."""
    if text.isascii():
        return _scan_ascii(text)
    issues: list[TextIssue] = []
    body = text.lstrip(BOM)
    bom_length = len(text) - len(body)  # positions in details count from the real start
    if bom_length:
        issues.append(TextIssue("bom", "U+FEFF byte-order mark at the start"))
    bad = _find_mojibake(body)
    if bad:
        issues.append(TextIssue("mojibake", _describe_mojibake(body, bad.start(), bad.end())))
    _check_controls(body, CONTROL_RE, bom_length, issues)
    _check_whitespace(body, bom_length, issues)
    return issues


def repair_text(text: str) -> tuple[str, list[str]]:
    """The text with the safe fixes applied, and the codes of the fixes that changed it."""
    fixes: list[str] = []
    if text.isascii():
        steps = (("control_chars", _remove_controls), ("odd_whitespace", _fix_whitespace))
    else:
        steps = (
            ("bom", _strip_bom),
            ("mojibake", _fix_mojibake),
            ("control_chars", _remove_controls),
            ("odd_whitespace", _fix_whitespace),
        )
    for code, fix in steps:
        fixed = fix(text)
        if fixed != text:
            fixes.append(code)
            text = fixed
    return text, fixes


# --- scanning ---------------------------------------------------------------------------


def _scan_ascii(text: str) -> list[TextIssue]:
    # No BOM, mojibake or Unicode space can hide in ASCII text; only two cheap checks remain.
    issues: list[TextIssue] = []
    _check_controls(text, ASCII_CONTROL_RE, 0, issues)
    _check_whitespace(text, 0, issues)
    return issues


def _check_controls(text: str, pattern: re.Pattern[str], offset: int, issues: list[TextIssue]) -> None:
    first = pattern.search(text)
    if first is None:
        return
    count = len(pattern.findall(text))
    detail = f"{_codepoint(first.group())} at char {first.start() + offset + 1}"
    issues.append(TextIssue("control_chars", detail + _more(count)))


def _check_whitespace(text: str, offset: int, issues: list[TextIssue]) -> None:
    problems: list[str] = []
    odd = ODD_SPACE_RE.search(text) if not text.isascii() else None
    if odd:
        count = len(ODD_SPACE_RE.findall(text))
        problems.append(f"{_codepoint(odd.group())} at char {odd.start() + offset + 1}{_more(count)}")
    if "\r" in text:
        crlf = text.count("\r\n")
        lone = text.count("\r") - crlf
        if crlf:
            problems.append(f"{crlf} CRLF line ending{'s' if crlf > 1 else ''}")
        if lone:
            problems.append(f"{lone} lone CR line ending{'s' if lone > 1 else ''}")
    if text[:1].isspace() and _trim_leading(text) != text:
        problems.append("leading whitespace")
    if text[-1:].isspace():
        problems.append("trailing whitespace")
    if problems:
        issues.append(TextIssue("odd_whitespace", "; ".join(problems)))


def _find_mojibake(text: str) -> re.Match[str] | None:
    """The same verdict as `ftfy.badness.is_bad`, searching only around suspect characters."""
    window_start = window_end = -1
    for suspect in SUSPECT_RE.finditer(text):
        start = max(0, suspect.start() - SUSPECT_MAX_OFFSET)
        if start > window_end:  # not overlapping the current window: search that one first
            found = _search_window(text, window_start, window_end)
            if found:
                return found
            window_start = start
        window_end = suspect.end() + SUSPECT_MAX_TAIL
    return _search_window(text, window_start, window_end)


def _search_window(text: str, start: int, end: int) -> re.Match[str] | None:
    # A `pos` argument keeps `^` anchored at the real start of the text, as it should be.
    return BADNESS_RE.search(text, start, end) if start >= 0 else None


def _describe_mojibake(text: str, start: int, end: int) -> str:
    snippet = _enclosing_words(text, start, end)
    fixed = ftfy.fix_text(snippet, MOJIBAKE_ONLY)
    if fixed == snippet:
        return f"{snippet!r} looks like mis-decoded UTF-8 (no automatic fix)"
    return f"{snippet!r} looks like mis-decoded UTF-8 ({fixed!r})"


def _enclosing_words(text: str, start: int, end: int) -> str:
    """The whole words around a match, so the detail reads `cafÃ©`, not `fÃ©`."""
    while start < end and text[start].isspace():
        start += 1
    while start > 0 and not text[start - 1].isspace() and end - start < MAX_SNIPPET:
        start -= 1
    while end < len(text) and end - start < MAX_SNIPPET and not _word_ends_at(text, end):
        end += 1
    return text[start:end]


def _word_ends_at(text: str, index: int) -> bool:
    # `à` is C3 A0 in UTF-8; read as cp1252 it is `Ã` + NBSP, and the NBSP is often a plain
    # space by now. That space is part of the damage: keep going so `déjà vu` can be shown.
    return text[index].isspace() and text[index - 1] not in "\u00c2\u00c3"


def _codepoint(char: str) -> str:
    name = unicodedata.name(char, "") or FALLBACK_NAMES.get(unicodedata.category(char), "")
    return f"U+{ord(char):04X}" + (f" ({name.lower()})" if name else "")


def _more(count: int) -> str:
    return f" (+{count - 1} more)" if count > 1 else ""


# --- repairing --------------------------------------------------------------------------


def _strip_bom(text: str) -> str:
    return text.lstrip(BOM)


def _fix_mojibake(text: str) -> str:
    # Gate on the same heuristic the scan uses: ftfy's other fixes (C1 mapping, lossy
    # sequences) would otherwise run on text nobody flagged.
    if _find_mojibake(text) is None:
        return text
    return ftfy.fix_text(text, MOJIBAKE_ONLY)


def _remove_controls(text: str) -> str:
    quick_check = ASCII_CONTROL_RE if text.isascii() else REMOVABLE_CONTROL_RE
    if quick_check.search(text) is None:
        return text
    if "\x1b" in text:
        text = ANSI_ESCAPE_RE.sub("", text)
    return REMOVABLE_CONTROL_RE.sub("", text)


def _fix_whitespace(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = ODD_SPACE_RE.sub(_replacement_space, text)
    return _trim_field_ends(text)


def _replacement_space(match: re.Match[str]) -> str:
    return "\n" if match.group() in LINE_SEPARATORS else " "


def _trim_field_ends(text: str) -> str:
    return _trim_leading(text.rstrip())


def _trim_leading(text: str) -> str:
    """Drop leading blank lines; drop the first line's indentation unless it is structure."""
    if not text[:1].isspace():
        return text
    content_start = len(text) - len(text.lstrip())
    line_start = text.rfind("\n", 0, content_start) + 1
    first_line_onwards = text[line_start:]
    if line_start < content_start and INDENTED_LATER_LINE_RE.search(first_line_onwards):
        return first_line_onwards
    return text[content_start:]
