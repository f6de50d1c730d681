import random
import re

import pytest
from ftfy.badness import BADNESS_RE, is_bad

from tunesmith.data.encoding import SUSPECTS, TextIssue, _find_mojibake, repair_text, scan_text

# Real text that must come out of both functions untouched.
LEGITIMATE = [
    "Le cœur a ses raisons que la raison ne connaît point. « Ça va ? » — Où est l'hôtel ?",
    "À l'été, Élise mange des crêpes à Noël. Ébène, Île.",
    "Übergrößenträger müssen die Straße überqueren. Ärger über Öl. MÜNCHEN, ZÜRICH.",
    "Zażółć gęślą jaźń. Łódź i Śląsk.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Καλημέρα κόσμε, ΑΒΓΔ ωραία μέρα. «Αθήνα» — “Θεσσαλονίκη”.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖ",
    "我能吞下玻璃而不伤身体。你好，世界！",
    "私はガラスを食べられます。それは私を傷つけません。",
    "日本語\u3000テキスト",  # the ideographic space is normal CJK typography
    "한국어 텍스트입니다.",
    "مرحبا بالعالم، كيف حالك؟",
    "שלום עולם \u200fמה שלומך?",  # right-to-left mark
    "नमस्ते दुनिया",
    "می\u200cخواهم",  # ZWNJ is part of Persian spelling
    "Tiếng Việt có dấu rất đẹp.",
    "¿Qué tal? ¡Muy bien! Año, señor. São Paulo, ação.",
    "İstanbul'da ağaç, ÇĞŞÖÜ. Þetta er íslenska. Ørsted, Ålesund.",
    "Œuvre complète, sœur, bœuf.",
    "Family 👨\u200d👩\u200d👧\u200d👦, thumbs 👍🏽, flag 🇫🇷, ❤\ufe0f, keycap 1\ufe0f\u20e3",
    "Scotland 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # tag characters
    "∀x ∈ ℝ: x² ≥ 0, ∑ᵢ aᵢ ≤ π·r², √2 ≈ 1.414, ∞ ≠ 0, ±1, ½, 3×4, 8÷2",
    "“Curly quotes” and ‘single’ — em dash – en dash … ellipsis • bullet",
    "Prices: £5, €10, ¥100, ¢50; 5 °C; © 2024 Foo™ ®; § 3 ¶ 2; 5 µm, Ø 3 mm, №5",
    "He said: «Привет» and “Grüß Gott”.",
    "ﬁne ligature and ＡＢＣ full width",  # not ours to normalise
    "x &amp; y <b>bold</b>",  # HTML entities are legitimate in code answers
    "project/\n├── src/\n│   ├── main.py\n│   └── util.py\n└── README.md",  # `tree` output
    "┌─────┐\n│ box │\n└─────┘ Progress: ████░░░░ 50%",
    "def f(x):\n    if x:\n        return 1\n\treturn 2",
    "    indented_first_line = 1\n    indented_second_line = 2",
    "para one\n\n\n\npara two",
    "line one  \nline two",  # Markdown hard line break
    "col1\tcol2\tcol3",
    "",
]


@pytest.mark.parametrize("text", LEGITIMATE)
def test_legitimate_text_is_left_alone(text):
    assert scan_text(text) == []
    assert repair_text(text) == (text, [])


MOJIBAKE = [
    ("cafÃ©", "café"),
    ("Itâ€™s fine", "It’s fine"),
    ("Ã¼ber", "über"),
    ("â€œHelloâ€\x9d", "“Hello”"),
    ("dÃ©jÃ  vu", "déjà vu"),
    ("The price is Â£5", "The price is £5"),
    ("cafÃƒÂ©", "café"),  # encoded twice
    ("Ã¢â‚¬â„¢", "’"),  # encoded twice
    ("rÃ©sumÃ© and naÃ¯ve", "résumé and naïve"),
    ("SchÃ¶ne GrÃ¼ÃŸe", "Schöne Grüße"),
    ("ZaÅ¼Ã³Å‚Ä‡", "Zażółć"),
    ("ÐŸÑ€Ð¸Ð²ÐµÑ‚", "Привет"),
    ("Î‘Î¸Î®Î½Î±", "Αθήνα"),
    ("æ—¥æœ¬èªž", "日本語"),
    ("ðŸ˜€ great", "😀 great"),
    ("вЂ” dash", "— dash"),  # via windows-1251
    ("\x93smart\x94 quotes", "“smart” quotes"),  # C1 controls are cp1252 read as latin-1
    ("It\x92s", "It’s"),
    ("naïve café, then cafÃ©", "naïve café, then café"),  # only the damage changes
    ("Line one cafÃ©\nLine two “fine” ﬁ", "Line one café\nLine two “fine” ﬁ"),
]


@pytest.mark.parametrize("broken, expected", MOJIBAKE)
def test_mojibake_is_found_and_repaired_exactly(broken, expected):
    assert [issue.code for issue in scan_text(broken)] == ["mojibake"]
    assert repair_text(broken) == (expected, ["mojibake"])


def test_mojibake_detail_shows_the_word_and_its_repair():
    assert scan_text("un cafÃ© noir") == [
        TextIssue("mojibake", "'cafÃ©' looks like mis-decoded UTF-8 ('café')")
    ]


def test_mojibake_that_cannot_be_repaired_is_still_reported():
    assert scan_text("â€") == [TextIssue("mojibake", "'â€' looks like mis-decoded UTF-8 (no automatic fix)")]
    assert repair_text("â€") == ("â€", [])


CONTROL_CHARS = [
    ("bell\x07 ring", "bell ring", "U+0007 (control character) at char 5"),
    ("null\x00byte", "nullbyte", "U+0000 (control character) at char 5"),
    ("del\x7f", "del", "U+007F (control character) at char 4"),
    ("page\x0cbreak", "pagebreak", "U+000C (control character) at char 5"),
    ("zero\u200bwidth", "zerowidth", "U+200B (zero width space) at char 5"),
    ("word\u2060joiner", "wordjoiner", "U+2060 (word joiner) at char 5"),
    ("soft\u00adhyphen", "softhyphen", "U+00AD (soft hyphen) at char 5"),
    ("in\ufeffside", "inside", "U+FEFF (zero width no-break space) at char 3"),
    ("a\ud83db", "ab", "U+D83D (lone surrogate) at char 2"),
    ("\x1b[31mred\x1b[0m text", "red text", "U+001B (control character) at char 1 (+1 more)"),
    ("a\x01b\x02c\x03", "abc", "U+0001 (control character) at char 2 (+2 more)"),
]


@pytest.mark.parametrize("text, repaired, detail", CONTROL_CHARS)
def test_control_chars_are_found_and_removed(text, repaired, detail):
    assert scan_text(text) == [TextIssue("control_chars", detail)]
    assert repair_text(text) == (repaired, ["control_chars"])


BOMS = [
    ("\ufeffHello", "Hello", ["bom"]),
    ("\ufeff\ufeffHello", "Hello", ["bom"]),
    ("\ufeffcafÃ©", "café", ["bom", "mojibake"]),
    ("\ufeff", "", ["bom"]),
]


@pytest.mark.parametrize("text, repaired, fixes", BOMS)
def test_bom_at_the_start_is_stripped(text, repaired, fixes):
    assert [issue.code for issue in scan_text(text)] == fixes
    assert repair_text(text) == (repaired, fixes)


def test_positions_count_from_the_real_start_after_a_bom():
    assert scan_text("\ufeffab\x07")[1] == TextIssue("control_chars", "U+0007 (control character) at char 4")


ODD_WHITESPACE = [
    ("a\u00a0b", "a b", "U+00A0 (no-break space) at char 2"),
    ("thin\u2009space and\u2009more", "thin space and more", "U+2009 (thin space) at char 5 (+1 more)"),
    ("narrow\u202fnbsp", "narrow nbsp", "U+202F (narrow no-break space) at char 7"),
    ("a\u2028b", "a\nb", "U+2028 (line separator) at char 2"),
    ("line1\r\nline2\r\n", "line1\nline2", "2 CRLF line endings; trailing whitespace"),
    ("line1\rline2", "line1\nline2", "1 lone CR line ending"),
    ("  padded  ", "padded", "leading whitespace; trailing whitespace"),
    ("answer\n", "answer", "trailing whitespace"),
    ("\n\nanswer", "answer", "leading whitespace"),
    (" Sure.\nNext line", "Sure.\nNext line", "leading whitespace"),
    # Leading blank lines go, the indentation of the code's first line stays.
    ("\n\n    x = 1\n    y = 2\n", "    x = 1\n    y = 2", "leading whitespace; trailing whitespace"),
    ("   \n\t ", "", "leading whitespace; trailing whitespace"),
]


@pytest.mark.parametrize("text, repaired, detail", ODD_WHITESPACE)
def test_odd_whitespace_is_found_and_normalised(text, repaired, detail):
    assert scan_text(text) == [TextIssue("odd_whitespace", detail)]
    assert repair_text(text) == (repaired, ["odd_whitespace"])


def test_code_indentation_and_blank_lines_survive_repair():
    code = "Here:\r\n\r\n```python\r\ndef f(x):\r\n    if x:\r\n\r\n\r\n        return 1\r\n```\r\n"
    expected = "Here:\n\n```python\ndef f(x):\n    if x:\n\n\n        return 1\n```"
    assert repair_text(code) == (expected, ["odd_whitespace"])


ALL_DAMAGED = (
    [broken for broken, _ in MOJIBAKE]
    + [text for text, _, _ in CONTROL_CHARS]
    + [text for text, _, _ in BOMS]
    + [text for text, _, _ in ODD_WHITESPACE]
    + ["\ufeff  cafÃ©\u00a0au\x07 lait\r\n", "\x93quoted\x94\u200b  "]
)


@pytest.mark.parametrize("text", ALL_DAMAGED)
def test_repair_fixes_only_what_scan_reports_and_leaves_nothing_behind(text):
    repaired, fixes = repair_text(text)
    assert set(fixes) <= {issue.code for issue in scan_text(text)}
    assert scan_text(repaired) == []
    assert repair_text(repaired) == (repaired, [])


def test_several_issues_are_fixed_in_one_pass():
    text = "\ufeff  cafÃ©\u00a0au\x07 lait\r\n"
    assert [issue.code for issue in scan_text(text)] == ["bom", "mojibake", "control_chars", "odd_whitespace"]
    assert repair_text(text) == ("café au lait", ["bom", "mojibake", "control_chars", "odd_whitespace"])


# `_find_mojibake` only runs ftfy's regex around suspect characters; it must agree with
# `is_bad` everywhere, which random strings over the characters ftfy cares about probe.
def _characters_in_badness_regex() -> tuple[list[str], list[str]]:
    pattern = BADNESS_RE.pattern
    chars = {c for c in pattern if not c.isascii()}
    for low, high in re.findall(r"(.)-(.)", pattern):
        if 0 < ord(high) - ord(low) < 300:
            chars.update(chr(code) for code in range(ord(low), ord(high) + 1))
    suspect = re.compile(f"[{SUSPECTS}]")
    return sorted(c for c in chars if suspect.match(c)), sorted(c for c in chars if not suspect.match(c))


def test_windowed_search_agrees_with_ftfy_is_bad():
    suspects, others = _characters_in_badness_regex()
    ascii_chars = list("abcXYZ .,?!\t\n-0")
    rng = random.Random(1234)

    def pick() -> str:
        roll = rng.random()
        return rng.choice(suspects if roll < 0.1 else others if roll < 0.55 else ascii_chars)

    samples = [t for t, _ in MOJIBAKE] + LEGITIMATE + ["ГўВЂВ™s", "Ã ", "x Ã y", "Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©"]
    samples += ["".join(pick() for _ in range(rng.randint(1, 30))) for _ in range(20_000)]
    disagreements = [t for t in samples if is_bad(t) != (_find_mojibake(t) is not None)]
    assert disagreements == []
