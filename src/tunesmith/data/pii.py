"""Find and redact personally identifiable information (PII) in training text.

Design
------
Structured PII (emails, phone numbers, payment cards, IBANs, IP addresses, US SSNs, API keys,
credentials in URLs) has a fixed shape and, for most types, a checksum or validity rule. So
each detector is a compiled regex that proposes candidates plus a validator that rejects
look-alikes: Luhn and an issuer prefix for cards, mod-97 and the country's length for IBANs,
octet ranges for IPv4, `ipaddress` for IPv6, reserved ranges for SSNs, and libphonenumber's
numbering plans for phone numbers. Done that way, detection is exact enough that redacting
does not eat version numbers, dates, order numbers or hashes, which are what training data is
full of. Phone numbers are the weak spot: two ten-digit integers in five are valid US
numbers, so PHONE also reads the shape and context of each one (a price, a version, an order
number, an integer in code) and lets it be.

Names, street addresses and other free-form PII cannot be found like this: they need a
named-entity recogniser, which is an optional extra (`clean.pii_ner`) plugged in elsewhere
through `register_detector`. This module never imports one.

Speed matters: `find_pii` runs on every message of every row, 100k rows in well under a
minute on two slow cores. So each detector first makes a cheap test and returns early when its
PII cannot be there: EMAIL and URL_CREDENTIALS look for "@" and "://", API_KEY for each
format's literal prefix, and the digit detectors (PHONE, CARD, SSN, IP, IBAN) share one scan
for runs of digits and separators, then search only inside runs long enough to hold their PII.
libphonenumber, at ~0.1 ms a call, only sees runs that could be a phone number. Patterns put a
literal or a character class first, lookbehinds after it, so that `re` can skip ahead to
where a match could start instead of trying every position.

Detectors may overlap (a phone number inside a card number, an email address inside a URL
with credentials). `find_pii` keeps the longer span; at equal length, the more specific type.

URL_CREDENTIALS spans cover the authority, `user:password@host[:port]`, and leave the scheme
and path in place: `postgres://<URL_CREDENTIALS>/db` keeps the text readable, and since the
span contains the host it always outranks the EMAIL match that `password@host` looks like.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import phonenumbers

from tunesmith.config import PII_TYPES as PII_TYPES  # re-exported; the names live in config, which validates clean.pii_types


@dataclass(frozen=True)
class PiiMatch:
    type: str
    start: int
    end: int
    text: str


Detector = Callable[[str], list[PiiMatch]]

# Every detector by name. A built-in detector's name is the type of the matches it returns;
# a plugin (an NER model) registers under its own name and may return other types.
DETECTORS: dict[str, Detector] = {}

# Most specific first: breaks ties between equally long spans (a card number that also reads
# as a phone number is a card). Types from plugins rank after all of these.
_MOST_SPECIFIC_FIRST = ("URL_CREDENTIALS", "API_KEY", "IBAN", "CARD", "SSN", "IP", "EMAIL", "PHONE")
_SPECIFICITY = {name: rank for rank, name in enumerate(_MOST_SPECIFIC_FIRST)}


def register_detector(name: str, detector: Detector, *, replace: bool = False) -> None:
    """Add a detector that `find_pii` runs by default and selects by `name`."""
    if name in DETECTORS and not replace:
        raise ValueError(f"a PII detector named {name!r} is already registered")
    DETECTORS[name] = detector


def _builtin(name: str) -> Callable[[Detector], Detector]:
    def register(detector: Detector) -> Detector:
        register_detector(name, detector)
        return detector

    return register


# --- public API -------------------------------------------------------------------------


def find_pii(text: str, types: Collection[str] | None = None) -> list[PiiMatch]:
    """All PII spans in text, sorted by start, non-overlapping.

    `types` names the detectors to run (the built-ins are named after their type); None runs
    every registered detector. Where spans overlap, the longer one is kept; at equal length,
    the more specific type.
    """
    candidates: list[PiiMatch] = []
    for name in _selected_detectors(types):
        candidates.extend(DETECTORS[name](text))
    return _without_overlaps(candidates)


def redact(text: str, matches: Sequence[PiiMatch]) -> str:
    """Replace each span with a typed placeholder (`<EMAIL>`); the rest of the text is kept as is."""
    parts: list[str] = []
    position = 0
    for match in sorted(matches, key=lambda m: m.start):
        if match.start < position:
            raise ValueError(f"overlapping PII matches at offset {match.start}: redact the output of find_pii")
        if text[match.start:match.end] != match.text:
            raise ValueError(f"PII match at {match.start}:{match.end} is not from this text")
        parts.append(text[position:match.start])
        parts.append(f"<{match.type}>")
        position = match.end
    parts.append(text[position:])
    return "".join(parts)


def _selected_detectors(types: Collection[str] | None) -> list[str]:
    if types is None:
        return list(DETECTORS)
    if isinstance(types, str):  # "EMAIL" would otherwise read as the types "E", "M", ...
        types = (types,)
    unknown = sorted(set(types) - DETECTORS.keys())
    if unknown:
        raise ValueError(f"unknown PII types {unknown}; known: {sorted(DETECTORS)}")
    return [name for name in DETECTORS if name in types]


def _without_overlaps(candidates: list[PiiMatch]) -> list[PiiMatch]:
    if len(candidates) < 2:
        return candidates
    # Greedy by preference: each span is kept unless it overlaps one already kept.
    by_preference = sorted(
        candidates, key=lambda m: (m.start - m.end, _SPECIFICITY.get(m.type, len(_SPECIFICITY)), m.start)
    )
    starts: list[int] = []
    kept: list[PiiMatch] = []  # sorted by start, parallel to `starts`
    for match in by_preference:
        i = bisect.bisect_right(starts, match.start)
        overlaps_previous = i > 0 and kept[i - 1].end > match.start
        overlaps_next = i < len(kept) and kept[i].start < match.end
        if not (overlaps_previous or overlaps_next):
            starts.insert(i, match.start)
            kept.insert(i, match)
    return kept


def _regex_matches(pattern: re.Pattern[str], text: str, pii_type: str, group: int | str = 0) -> list[PiiMatch]:
    return [PiiMatch(pii_type, m.start(group), m.end(group), m.group(group)) for m in pattern.finditer(text)]


def _context_before(text: str, start: int, width: int = 40) -> str:
    return text[max(0, start - width):start]


# --- number-like runs, shared by the digit detectors ------------------------------------

# Digits and the separators that cards, SSNs, IPs and phone numbers are written with; seven
# characters at least (1.1.1.1). Most texts hold none, or only short ones, so this one scan
# lets PHONE, CARD, SSN and IP skip their own regexes (and libphonenumber) on most texts.
_DIGIT_GROUPS = re.compile(r"\d+", re.ASCII)
_NUMBER_RUN = re.compile(r"[+\d](?<![+\d].)[\d ().\-/\u00a0\u2010-\u2015]{5,}\d", re.ASCII)


class _NumberRun(NamedTuple):
    start: int
    end: int
    digits: int
    dots: int


class _NumberRuns(NamedTuple):
    runs: tuple[_NumberRun, ...]
    most_digits: int  # in any one run
    most_dots: int


@functools.lru_cache(maxsize=1)  # find_pii runs every detector on the same text in a row
def _number_runs(text: str) -> _NumberRuns:
    runs = tuple(
        _NumberRun(m.start(), m.end(), sum(map(str.isdigit, m.group())), m.group().count("."))
        for m in _NUMBER_RUN.finditer(text)
    )
    return _NumberRuns(runs, max((r.digits for r in runs), default=0), max((r.dots for r in runs), default=0))


def _search_near_runs(
    pattern: re.Pattern[str], text: str, *, min_digits: int = 0, min_dots: int = 0, before: int = 0, after: int = 2
) -> Iterator[re.Match[str]]:
    """Matches of `pattern` near the number runs with enough digits and dots, and nowhere else.

    For a pattern whose matches lie inside one run, `before` is 0 (lookbehinds see the whole
    text anyway) and `after` 2, enough for its lookaheads. For one whose matches overlap a
    run (an IBAN), the most they can stick out either side.
    """
    found = _number_runs(text)
    if found.most_digits < min_digits or found.most_dots < min_dots:
        return
    windows: list[tuple[int, int]] = []
    for run in found.runs:
        if run.digits >= min_digits and run.dots >= min_dots:
            start, end = max(0, run.start - before), min(len(text), run.end + after)
            if windows and start <= windows[-1][1]:
                windows[-1] = (windows[-1][0], end)
            else:
                windows.append((start, end))
    for start, end in windows:
        yield from pattern.finditer(text, start, end)


# --- EMAIL ------------------------------------------------------------------------------

# The domain needs a dot and a TLD of 2+ letters: `user@localhost`, `@mention` and `a@b` in
# code are not addresses. The lookahead refuses `a@b.mean()` and a TLD cut out of a longer word.
_EMAIL = re.compile(
    r"[A-Za-z0-9](?<![\w.%+-].)[A-Za-z0-9._%+-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![\w(-]|\.[A-Za-z0-9])",
    re.ASCII,
)


# Characters of a local part, read backwards from the "@".
_LOCAL_PART_REVERSED = re.compile(r"[A-Za-z0-9._%+-]{1,65}", re.ASCII)


# File extensions that are no top-level domain: "data@1.txt" and "model@v2.pkl" are file names.
_FILE_EXTENSIONS = frozenset(
    "txt log csv tsv json jsonl yaml yml toml ini cfg xml html htm md5 pdf png jpg jpeg gif svg bmp webp "
    "wav mp3 mp4 pkl pickle npy npz pt pth ckpt bin safetensors gguf onnx parquet arrow tar gz bz2 xz "
    "zst whl egg ipynb pyc pyi js jsx tsx ts cpp hpp java kt rb lock tmp bak exe dll dylib".split()
)


@_builtin("EMAIL")
def find_emails(text: str) -> list[PiiMatch]:
    # Searching for the regex would try it at every letter of the text; working out from each
    # "@" costs nothing on texts without one and little on texts with a few.
    found: list[PiiMatch] = []
    at = text.find("@")
    while at != -1:
        local = _LOCAL_PART_REVERSED.match(text[max(0, at - 65):at][::-1])
        match = _EMAIL.match(text, at - local.end()) if local else None
        if match and match.group().rsplit(".", 1)[1].lower() not in _FILE_EXTENSIONS:
            found.append(PiiMatch("EMAIL", match.start(), match.end(), match.group()))
        at = text.find("@", match.end() if match else at + 1)
    return found


# --- PHONE ------------------------------------------------------------------------------

# How a number without a +country code is read: as a US number, unless it starts with the
# trunk prefix 0, which no US number does; then as a UK one, the commonest such in English text.
_PHONE_REGION = "US"
_TRUNK_PREFIX_REGION = "GB"
_PHONE_CONTEXT = 20  # characters either side of a number that libphonenumber gets to see
# libphonenumber parses every number-like candidate, ~0.2 ms each: a 1,000-character list of
# numbers costs 40 ms. Its own cap on invalid candidates per text bounds that; the price is
# that a phone number after 32 non-numbers in one unbroken run of numbers goes unseen.
_PHONE_MAX_TRIES = 32
_CURRENCY_BEFORE = re.compile(r"(?:[$€£¥₹]|\b(?:USD|EUR|GBP|JPY|CHF|CAD|AUD|INR|RMB|CNY))\s*$", re.IGNORECASE)
_VERSION_BEFORE = re.compile(r"(?:\bv|\bver|\bversion|\bbuild|\brelease)\.?\s*[:=]?\s*$", re.IGNORECASE)
# "Order #4155552671", "invoice no. 4155552671", "id=4155552671": identifiers, not phones.
_IDENTIFIER_BEFORE = re.compile(
    r"(?:#|\b(?:order|invoice|ticket|tracking|ref|reference|sku|serial|id|account|acct|transaction|txn)"
    r"(?:\s*(?:no\.?|number|num|#|id))?\s*[:=#]?)\s*$",
    re.IGNORECASE,
)
# How US numbers are written: 4155552671, 1 4155552671, (415) 5552671, 415-555-2671, 1-415-555-2671.
_US_GROUPINGS = {(10,), (11,), (1, 10), (3, 7), (3, 3, 4), (1, 3, 3, 4)}
_US_DOTTED_GROUPINGS = {(3, 3, 4), (1, 3, 3, 4)}  # 415.555.2671, 1.415.555.2671
_DECIMAL_END = re.compile(r"\d\.\d{1,2}$", re.ASCII)
# A bare ten-digit number in code: an argument, an operand, a negative number.
_CODE_BEFORE = re.compile(r"(?:[(\[{=*/%<>]\s*|(?<![\w)])-|\d\s+)$")
_CODE_AFTER = re.compile(r"\s*[)\]}*/%]")
# A number in a list of numbers ("1, 4, 108, 4031078400000").
_NUMBER_BEFORE = re.compile(r"\d\s*,\s*$")
_NUMBER_AFTER = re.compile(r"\s*,\s*-?\d")
_PHONE_LABEL_BEFORE = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|fax|call|whatsapp|sms)\b\W{0,3}$", re.IGNORECASE
)
# 2**31 - 1 and 2**31, the int32 limits, are valid Dallas numbers and in half the code there is.
_WELL_KNOWN_INTEGERS = frozenset({"2147483647", "2147483648"})
_EXTENSION = re.compile(r"[^\d\s().+/-]", re.ASCII)  # "ext.", "x", "#": where the number proper ends
_JOINED_AFTER = re.compile(r"[.,:/-]\d|\.[,;)\]}]", re.ASCII)  # 2075673600., in code: a float
_JOINED_BEFORE = re.compile(r"(?:\d[.,:/-]|[A-Za-z][-_])$", re.ASCII)


@_builtin("PHONE")
def find_phones(text: str) -> list[PiiMatch]:
    found = []
    for start, end, region in _phone_windows(text):
        matcher = phonenumbers.PhoneNumberMatcher(
            text[start:end], region, leniency=phonenumbers.Leniency.VALID, max_tries=_PHONE_MAX_TRIES
        )
        for m in matcher:
            match = _without_stray_bracket(PiiMatch("PHONE", start + m.start, start + m.end, m.raw_string))
            if not _is_phone_lookalike(text, match.start, match.end, match.text):
                found.append(match)
    return found


def _without_stray_bracket(match: PiiMatch) -> PiiMatch:
    # libphonenumber reads "(4155552671)" as "(4155552671": the "(" is the text's, not the number's.
    if match.text.startswith("(") and match.text.count("(") > match.text.count(")"):
        return PiiMatch(match.type, match.start + 1, match.end, match.text[1:])
    return match


def _phone_windows(text: str) -> list[tuple[int, int, str]]:
    """The stretches of text worth handing to libphonenumber, and the region to read them as.

    libphonenumber costs ~0.1 ms a call, and more on texts full of numbers, since it parses
    every one; so it only sees runs that could be a phone number, with some words either side
    for its context checks (an extension, a date or time around the number). Windows of one
    region are merged where they overlap.
    """
    windows: list[tuple[int, int, str]] = []
    for run in _number_runs(text).runs:
        if run.digits < 7 or not _could_be_phone_number(text, run):
            continue
        region = _TRUNK_PREFIX_REGION if text[run.start] == "0" else _PHONE_REGION
        start, end = _widen_to_whitespace(text, run.start - _PHONE_CONTEXT, run.end + _PHONE_CONTEXT)
        if windows and start <= windows[-1][1] and region == windows[-1][2]:
            windows[-1] = (windows[-1][0], end, region)
        else:
            windows.append((start, end, region))
    return windows


def _could_be_phone_number(text: str, run: _NumberRun) -> bool:
    """A cheap test that libphonenumber could find a number in this run.

    With "+", seven digits (the shortest international numbers). Without, ten digits in groups
    of three to eleven (a US number, "1 415 555 2671" aside from the "1"; or a UK one,
    "020 7946 0958"), which version strings (120.0.6099.109), lists of small numbers ("2024 12 250"),
    long integers and decimals (0.69314718055994529, seeds in code) are not. A run glued to a
    letter is part of a hash, UUID or identifier.
    """
    if _glued_to_a_word(text, run.start, run.end):
        return False
    groups = [len(group) for group in _DIGIT_GROUPS.findall(text, run.start, run.end)]
    if text[run.start] == "+":
        return run.digits >= 7 and max(groups) <= 15  # E.164 numbers have at most 15 digits
    longest = current = 0
    for size in groups:
        current = current + size if 3 <= size <= 11 else 0
        longest = max(longest, current)
    return longest >= 10


def _glued_to_a_word(text: str, start: int, end: int) -> bool:
    letter_before = start > 0 and text[start - 1].isalpha()
    letter_after = end < len(text) and text[end].isalpha() and text[end] not in "xX"  # x23: an extension
    return letter_before or letter_after


def _widen_to_whitespace(text: str, start: int, end: int) -> tuple[int, int]:
    start, end = max(0, start), min(len(text), end)
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end


def _is_phone_lookalike(text: str, start: int, end: int, raw: str) -> bool:
    """A number libphonenumber accepts that its shape or its context shows to be something else."""
    number = _EXTENSION.split(raw, maxsplit=1)[0].strip()  # "415-555-2671 ext. 45": 415-555-2671
    context = _context_before(text, start)
    return (
        _is_part_of_longer_token(text, start, end)
        or _has_no_phone_shape(number)
        or (number.isdigit() and _is_plain_integer(text, start, end, number, context))
        or _is_labelled_as_other(context)
    )


def _is_part_of_longer_token(text: str, start: int, end: int) -> bool:
    # A piece of a longer dotted, dashed or decimal number, or of an id (INV-2024-000123).
    return bool(_JOINED_AFTER.match(text, end) or _JOINED_BEFORE.search(text, max(0, start - 2), start))


def _has_no_phone_shape(number: str) -> bool:
    """Written as no one writes a phone number: the digits are something else."""
    if number.count("(") != number.count(")"):
        return True  # a bracket of the code or prose around it
    if _DECIMAL_END.search(number):
        return True  # 2025529095.0
    if number.startswith("+"):
        return not (number[1:2].isdigit() or number[1:2] == "(")  # "x + 2025529095": a plus sign
    groups = _digit_groups(number)
    if "." in number:  # 1.4155552671, 4.155.552.671, 658.227 5971 (a table of constants)
        return groups not in _US_DOTTED_GROUPINGS or set(_DIGIT_GROUPS.split(number)[1:-1]) != {"."}
    if number.startswith("0"):  # a UK number: 020 7946 0958, 0113 496 0000, 01632 960123
        return groups[0] < 3  # "0  -2001747478": a row number and a negative one
    return groups not in _US_GROUPINGS  # "(2012) 755-767": a year and pages


def _digit_groups(number: str) -> tuple[int, ...]:
    return tuple(len(group) for group in _DIGIT_GROUPS.findall(number))


def _is_plain_integer(text: str, start: int, end: int, number: str, context: str) -> bool:
    """A phone number without separators, in code or a list of numbers, and not labelled as one."""
    if _PHONE_LABEL_BEFORE.search(context):
        return False  # "phone=4155552671", "tel: 4155552671"
    return number in _WELL_KNOWN_INTEGERS or _is_in_code(text, start, end, context)


def _is_in_code(text: str, start: int, end: int, context: str) -> bool:
    # seed(7872425088), [.., 2362431729], x = 8324372644*C1: a bare number as code uses one.
    in_expression = _CODE_BEFORE.search(context) or _CODE_AFTER.match(text, end)
    return bool(in_expression) or _is_in_number_list(text, start, end)


def _is_in_number_list(text: str, start: int, end: int) -> bool:
    return bool(_NUMBER_BEFORE.search(_context_before(text, start, 20)) or _NUMBER_AFTER.match(text, end))


def _is_labelled_as_other(context: str) -> bool:
    # A price, a version or an identifier, by the words before it.
    return any(pattern.search(context) for pattern in (_CURRENCY_BEFORE, _VERSION_BEFORE, _IDENTIFIER_BEFORE))


# --- CARD -------------------------------------------------------------------------------

# 13-19 digits in groups split by one kind of separator (4-4-4-4, 4-6-5), or 13-16 run
# together (longer bare numbers are integers in code far more often than cards); not glued
# to a letter (a hash) nor part of a longer dotted or dashed number.
_CARD = re.compile(
    r"\d(?<![\w.,-].)(?:\d{12,15}|\d{3}(?P<sep>[ -])\d{2,6}(?:(?P=sep)\d{2,6}){1,3})(?![\w-]|[.,]\d)",
    re.ASCII,
)
_NON_DIGITS = re.compile(r"\D")
# (lowest prefix, highest prefix, allowed lengths): the IIN ranges of the major networks.
_CARD_ISSUERS: tuple[tuple[str, str, frozenset[int]], ...] = (
    # Visa: 13-digit cards are no longer issued, and a 13-digit number starting with 4 is
    # far more often an EAN-13 barcode (German prefixes 400-440), ~1 in 10 of which pass Luhn.
    ("4", "4", frozenset({16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),  # American Express
    ("6011", "6011", frozenset({16, 17, 18, 19})),  # Discover
    ("644", "649", frozenset({16, 17, 18, 19})),  # Discover
    ("65", "65", frozenset({16, 17, 18, 19})),  # Discover
    ("300", "305", frozenset({14, 16})),  # Diners Club
    ("36", "36", frozenset({14})),  # Diners Club
    ("38", "39", frozenset({14, 16})),  # Diners Club
    ("3528", "3589", frozenset({16, 17, 18, 19})),  # JCB
    ("62", "62", frozenset({16, 17, 18, 19})),  # UnionPay
    ("5018", "5018", frozenset(range(13, 20))),  # Maestro
    ("5020", "5020", frozenset(range(13, 20))),  # Maestro
    ("5038", "5038", frozenset(range(13, 20))),  # Maestro
    ("5893", "5893", frozenset(range(13, 20))),  # Maestro
    ("6304", "6304", frozenset(range(13, 20))),  # Maestro
    ("6759", "6759", frozenset(range(13, 20))),  # Maestro
    ("6761", "6763", frozenset(range(13, 20))),  # Maestro
)


@_builtin("CARD")
def find_cards(text: str) -> list[PiiMatch]:
    return [
        PiiMatch("CARD", m.start(), m.end(), m.group())
        for m in _search_near_runs(_CARD, text, min_digits=13)
        if _is_card_number(_NON_DIGITS.sub("", m.group()))
        # One in ten numbers passes Luhn: in a list of numbers, a bare one is just a number.
        and not (m.group().isdigit() and _is_in_number_list(text, m.start(), m.end()))
    ]


def _is_card_number(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and _has_issuer_prefix(digits) and _passes_luhn(digits)


def _has_issuer_prefix(digits: str) -> bool:
    for low, high, lengths in _CARD_ISSUERS:
        if len(digits) in lengths and int(low) <= int(digits[:len(low)]) <= int(high):
            return True
    return False


def _passes_luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        digit = int(char)
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


# --- IBAN -------------------------------------------------------------------------------

# IBAN lengths from the SWIFT IBAN registry: SEPA countries, GB and common others.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30,
    "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN_MAX_WIDTH = 34 + 8  # 34 characters at most, and a space every four
# Country, check digits, then the BBAN run together or printed in groups of four.
_IBAN = re.compile(
    r"[A-Z](?<![A-Za-z0-9].)[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])", re.ASCII
)


@_builtin("IBAN")
def find_ibans(text: str) -> list[PiiMatch]:
    found = []
    # Every BBAN holds seven digits or more in a row, and an IBAN is at most 42 characters long.
    for m in _search_near_runs(_IBAN, text, min_digits=7, before=_IBAN_MAX_WIDTH, after=_IBAN_MAX_WIDTH + 1):
        end = _iban_end(text, m.start(), m.end())
        if end is not None:
            found.append(PiiMatch("IBAN", m.start(), end, text[m.start():end]))
    return found


def _iban_end(text: str, start: int, end: int) -> int | None:
    """End of the valid IBAN starting at `start`, or None.

    The regex may run one group past the IBAN ("... 0130 00 1234"), so the candidate is cut to
    the country's length, provided the cut falls where a printed group ends.
    """
    expected = IBAN_LENGTHS.get(text[start:start + 2])
    if expected is None:
        return None
    seen = 0
    for position in range(start, end):
        if text[position] != " ":
            seen += 1
            if seen == expected:
                cut = position + 1
                if cut < end and text[cut] != " ":
                    return None
                return cut if _passes_mod97(text[start:cut].replace(" ", "")) else None
    return None


def _passes_mod97(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


# --- IP ---------------------------------------------------------------------------------

# Not inside a longer dotted number (1.2.3.4.5) nor after a letter (v1.2.3.4).
_IPV4 = re.compile(r"\d(?<![\w.].)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\.?\w)", re.ASCII)
# Candidates only; `ipaddress` decides. Optional dotted-quad tail for ::ffff:192.0.2.1.
_IPV6 = re.compile(
    r"[0-9A-Fa-f:](?<![\w:.].)[0-9A-Fa-f:]{1,38}(?:\d{1,3}(?:\.\d{1,3}){3})?(?![\w:]|\.\d)",
    re.ASCII,
)
# "version 1.2.3.4", user-agent product tokens such as Chrome/120.0.0.0, pins (foo==1.0.0.0).
_IP_VERSION_BEFORE = re.compile(
    r"(?:(?:\bv|\bver|\bversion|\bbuild|\brelease)\.?\s*[:=]?\s*|[A-Za-z]/|[=<>~!]=\s*)$", re.IGNORECASE
)


@_builtin("IP")
def find_ips(text: str) -> list[PiiMatch]:
    found = [
        PiiMatch("IP", m.start(), m.end(), m.group())
        for m in _search_near_runs(_IPV4, text, min_dots=3)
        if _is_ipv4(text, m.start(), m.group())
    ]
    if "::" in text or text.count(":") >= 7:  # an IPv6 address has "::" or eight groups
        found += [m for m in _regex_matches(_IPV6, text, "IP") if _is_ipv6(m.text)]
    return found


def _is_ipv4(text: str, start: int, candidate: str) -> bool:
    try:
        address = ipaddress.IPv4Address(candidate)  # refuses octets over 255 and leading zeros
    except ValueError:
        return False
    return _identifies_a_host(address) and not _IP_VERSION_BEFORE.search(_context_before(text, start, 20))


def _is_ipv6(candidate: str) -> bool:
    # "::2", "1::2" and "4::" are valid IPv6 but, in text, slices (x[1::2]) or reST markup
    # ("by 2::"); an address that identifies a host has a routing prefix and an interface id,
    # so three groups or more. Hex words joined by "::" (C++ `dead::beef`) have no digit.
    if _ipv6_groups(candidate) < 3 or not any(char.isdigit() for char in candidate):
        return False
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return _identifies_a_host(address)


def _ipv6_groups(candidate: str) -> int:
    groups = [group for group in candidate.split(":") if group]
    return len(groups) + (1 if groups and "." in groups[-1] else 0)  # a dotted-quad tail is two groups


def _identifies_a_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # 127.0.0.1, ::1, 0.0.0.0 and :: are in every code sample and point at no one; nor does a
    # netmask (255.255.255.0), which is written like an address.
    return not (address.is_loopback or address.is_unspecified or _is_netmask(address))


def _is_netmask(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    host_bits = ~int(address) & (2**address.max_prefixlen - 1)
    return int(address) != 0 and host_bits & (host_bits + 1) == 0  # ones, then only zeros


# --- SSN --------------------------------------------------------------------------------

# AAA-GG-SSSS, with dashes or spaces, not inside a longer number or identifier.
_SSN = re.compile(r"(\d(?<![\w-].)\d\d)([- ])(\d{2})\2(\d{4})(?![\w-])", re.ASCII)


@_builtin("SSN")
def find_ssns(text: str) -> list[PiiMatch]:
    return [
        PiiMatch("SSN", m.start(), m.end(), m.group())
        for m in _search_near_runs(_SSN, text, min_digits=9)
        if _is_valid_ssn(m.group(1), m.group(3), m.group(4))
    ]


def _is_valid_ssn(area: str, group: str, serial: str) -> bool:
    # The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000.
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


# --- API_KEY ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TokenFormat:
    hints: tuple[str, ...]  # the format is only tried on a text that holds one of these
    pattern: re.Pattern[str]
    group: int = 0  # the part that is the secret
    check: Callable[[str], bool] | None = None  # for shapes that names and words can also take


def _has_digit_and_letter(token: str) -> bool:
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def _has_digit_and_mixed_case(token: str) -> bool:
    # Random secrets have all three; names such as sk-learn-classifier-pipeline do not.
    return any(c.isdigit() for c in token) and _has_mixed_case(token)


def _has_mixed_case(token: str) -> bool:
    return any(c.isupper() for c in token) and any(c.islower() for c in token)


def _token(
    hints: tuple[str, ...], pattern: str, group: int = 0, check: Callable[[str], bool] | None = None
) -> _TokenFormat:
    return _TokenFormat(hints, re.compile(pattern, re.ASCII), group, check)


# Where it is cheap to, lookbehinds come after the literal prefix so that `re` can scan for
# the prefix quickly.
_TOKEN_FORMATS: tuple[_TokenFormat, ...] = (
    # AWS access key ids, long-lived (AKIA) and temporary (ASIA).
    _token(("AKIA", "ASIA"), r"A(?:KI|SI)A(?<![A-Za-z0-9]A..A)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    # GitHub: classic tokens (ghp_ personal, gho_ OAuth, ghu_/ghs_ app, ghr_ refresh), then fine-grained.
    _token(
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
        r"gh[opusr]_(?<![A-Za-z0-9_]gh._)[A-Za-z0-9]{36,251}(?![A-Za-z0-9_])",
    ),
    _token(("github_pat_",), r"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,251}(?![A-Za-z0-9_])"),
    # OpenAI (sk-..., sk-proj-...) and Anthropic (sk-ant-api03-...): one shape, one check.
    _token(("sk-",), r"sk-(?<![\w-]sk-)[A-Za-z0-9_-]{20,}(?![\w-])", check=_has_digit_and_mixed_case),
    # Slack bot, user, app, refresh and legacy tokens.
    _token(("xox",), r"xox[baprs]-(?<![\w-]xox.-)[A-Za-z0-9-]{10,}(?![\w-])", check=_has_digit_and_letter),
    # Stripe secret and restricted keys, live or test; publishable keys only when live.
    _token(
        ("_live_", "_test_"),
        r"(?<![A-Za-z0-9_])(?:(?:sk|rk|pk)_live|(?:sk|rk)_test)_[A-Za-z0-9]{16,}(?![A-Za-z0-9_])",
    ),
    _token(("AIza",), r"AIza(?<![\w-]AIza)[A-Za-z0-9_-]{35}(?![\w-])"),  # Google API key
    # Hugging Face access tokens: hf_ and 34 letters.
    _token(("hf_",), r"hf_(?<![A-Za-z0-9_]hf_)[A-Za-z0-9]{30,}(?![A-Za-z0-9_])", check=_has_mixed_case),
    # JWT: base64url header (a JSON object, so "eyJ"), payload and signature.
    _token(("eyJ",), r"eyJ(?<![\w-]eyJ)[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(?![\w-])"),
    # Any bearer token (RFC 6750 b64token); only the token is redacted, so that
    # "Authorization: Bearer <API_KEY>" stays readable.
    _token(
        ("earer", "EARER"),
        r"\b(?i:bearer)\s+([\w.~+/-]{20,}=*)(?![\w.~+/=-])",
        group=1,
        check=_has_digit_and_letter,
    ),
    # A private key block (PEM, OpenSSH, PGP), whole; one cut off by truncation runs to the end.
    _token(
        ("PRIVATE KEY",),
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    ),
)
# Each hint test scans the text; one test for "_" spares prose those of every underscore hint.
_UNDERSCORE_FORMATS = tuple(f for f in _TOKEN_FORMATS if all("_" in hint for hint in f.hints))
_OTHER_FORMATS = tuple(f for f in _TOKEN_FORMATS if not all("_" in hint for hint in f.hints))


@_builtin("API_KEY")
def find_api_keys(text: str) -> list[PiiMatch]:
    formats = _OTHER_FORMATS + _UNDERSCORE_FORMATS if "_" in text else _OTHER_FORMATS
    found: list[PiiMatch] = []
    for token in formats:
        if not _holds_any(text, token.hints):
            continue
        for match in _regex_matches(token.pattern, text, "API_KEY", token.group):
            if token.check is None or token.check(match.text):
                found.append(match)
    return found


def _holds_any(text: str, hints: tuple[str, ...]) -> bool:
    for hint in hints:
        if hint in text:
            return True
    return False


# --- URL_CREDENTIALS --------------------------------------------------------------------

# scheme://user:password@host[:port]; the span is the authority (see the module docstring).
# The user may be empty (redis://:password@host). People do not percent-encode passwords, so
# one may hold "@", ":", "#" or "?"; the last "@" before the path ends it.
_URL_CREDENTIALS = re.compile(
    r"://(?<=[A-Za-z0-9+.-]://)"  # after a scheme; the literal first lets `re` scan for "://" fast
    r"(?P<authority>[^\s/?#@:\"'<>]*:[^\s/\"'<>]+@"
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]*[A-Za-z0-9])(?::\d{1,5})?)",
    re.ASCII,
)


@_builtin("URL_CREDENTIALS")
def find_url_credentials(text: str) -> list[PiiMatch]:
    if "://" not in text or "@" not in text:
        return []
    return _regex_matches(_URL_CREDENTIALS, text, "URL_CREDENTIALS", "authority")
