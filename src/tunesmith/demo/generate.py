"""Generate the demo dataset: pull a structured order out of a short customer message.

The task is chosen so that a 135M model visibly improves within a few CPU minutes: the
base model rarely answers with bare JSON in a fixed key order, while a little LoRA
training teaches the format and the copying. Messages come from varied templates so the
model has to find the fields rather than memorise positions.

train.jsonl also carries a few planted dirty rows (duplicates, personal data, mojibake,
empty responses) so the data-cleaning step has something real to find;
`planted_lines()` says where they are.

Run `python -m tunesmith.demo.generate` to rewrite the files under demo/sample/. The
output is byte-identical on every run: every random draw comes from a seeded
`random.Random`, and nothing depends on set or hash ordering.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SAMPLE_DIR = Path(__file__).parent / "sample"
N_TRAIN = 600
N_VAL = 60
KEYS = ("name", "city", "item", "quantity", "color")

# How many dirty rows of each kind go into train.jsonl. Insertion order fixes the order
# in which kinds are given positions, so keep it stable.
PLANT_COUNTS: dict[str, int] = {
    "exact_duplicate": 6,
    "near_duplicate": 6,
    "email": 3,
    "phone": 3,
    "mojibake": 3,
    "empty_response": 2,
}
# No dirty row lands in the first lines, so a duplicate always has an earlier original.
FIRST_PLANT_INDEX = 30

FIRST_NAMES = (
    "Maria", "James", "Aisha", "Tomasz", "Priya", "Lucas", "Mei", "Omar", "Sofia", "Daniel",
    "Ingrid", "Kwame", "Elena", "Ravi", "Chloe", "Mateo", "Hana", "Samuel", "Freya", "Diego",
    "Nadia", "Oliver", "Yuki", "Felix", "Amara", "Jonas", "Leila", "Marcus", "Clara", "Tariq",
    "Greta", "Noah", "Ana", "Victor", "Zara", "Emil", "Rosa", "Kenji", "José", "Zoë",
)
LAST_NAMES = (
    "Lopez", "Smith", "Khan", "Nowak", "Patel", "Silva", "Chen", "Haddad", "Rossi", "Meyer",
    "Larsen", "Mensah", "Petrova", "Iyer", "Dubois", "Fernandez", "Sato", "Okafor", "Berg", "Morales",
    "Novak", "Brown", "Tanaka", "Fischer", "Adeyemi", "Weber", "Rahimi", "Johnson", "Costa", "Aziz",
    "Lindqvist", "Walker", "Santos", "Horvat", "Malik", "Jensen", "Romero", "Ito", "Murphy", "Kowalski",
)
CITIES = (
    "Porto", "Leeds", "Lyon", "Gdansk", "Austin", "Osaka", "Nairobi", "Dublin", "Turin", "Ghent",
    "Bergen", "Accra", "Denver", "Seville", "Hamburg", "Cork", "Perth", "Quito", "Tallinn", "Vienna",
    "Bristol", "Lima", "Oslo", "Madrid", "Toronto", "Chennai", "Utrecht", "Boston", "Krakow", "Lisbon",
    "Glasgow", "Seattle", "Nantes", "Prague", "Dakar", "Helsinki", "Malmö", "Zürich", "Bogotá", "Montréal",
)
# Single words whose plural is just +s, so messages can say "three lamps" naturally.
ITEMS = (
    "kettle", "lamp", "mug", "backpack", "umbrella", "blanket", "toaster", "notebook", "pillow", "towel",
    "chair", "bottle", "jacket", "helmet", "wallet", "candle", "teapot", "speaker", "keyboard", "blender",
    "mirror", "basket", "clock", "bucket", "sweater", "glove", "rug", "stool", "cushion", "tray",
)
COLORS = (
    "red", "blue", "green", "black", "white", "grey",
    "yellow", "orange", "purple", "pink", "brown", "silver",
)
NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "ten", "eleven", "twelve",
)
MAX_QUANTITY = 12
# Share of messages that spell the quantity as a word ("three") rather than digits.
WORD_QUANTITY_SHARE = 0.3

INSTRUCTIONS = (
    "Extract the order as JSON with keys name, city, item, quantity, color.",
    "Return the order in this message as JSON with keys name, city, item, quantity, color.",
    "Turn the customer message into JSON (keys: name, city, item, quantity, color).",
    "Pull out the order details as JSON: name, city, item, quantity, color.",
    "Convert this order into a JSON object with name, city, item, quantity and color.",
)


@dataclass(frozen=True)
class Template:
    style: str
    text: str
    # Some layouts read wrongly with a spelled-out number ("x three"), so they keep digits.
    digits_only: bool = False


# Placeholders: {name} {city} {color} {qty}; {item} singular, {items} and {units} agree
# with the quantity.
TEMPLATES = (
    Template("casual", "Hi, it's {name} from {city}. Can I get {qty} {color} {items}?"),
    Template("casual", "hey! {qty} {color} {items} please, ship to {city}. thanks, {name}"),
    Template("casual", "{name} here, I need {qty} {items} in {color}, delivered to {city}."),
    Template("casual", "Could you send {qty} {color} {items} to {city}? Cheers, {name}"),
    Template("casual", "{name} in {city} wants {qty} {items}, {color} ones if you have them."),
    Template("casual", "I'm {name} and I live in {city}. I'd like {qty} {color} {items}, please."),
    Template("formal", "Dear team, I would like to order {qty} {color} {items}. Please deliver to {city}. Regards, {name}"),
    Template("formal", "Good afternoon. Please process an order of {qty} {items} in {color} for {name}, {city}."),
    Template("formal", "To whom it may concern: {name} of {city} requests {qty} {color} {items}."),
    Template("formal", "Hello, my name is {name}. I am writing from {city} to order {qty} {items}; colour: {color}."),
    Template("formal", "Order request from {name} ({city}): {qty} {units} of the {color} {item}."),
    Template("terse", "Name: {name}. City: {city}. Item: {item}. Qty: {qty}. Colour: {color}.", digits_only=True),
    Template("terse", "{qty} x {color} {item} -> {name}, {city}", digits_only=True),
    Template("terse", "ship to {city} / {name} / {item} ({color}) x{qty}", digits_only=True),
    Template("terse", "New order: {color} {item}, quantity {qty}, customer {name}, {city}."),
    Template("chatty", "We just moved to {city} and need {qty} {items}. Any colour is fine as long as it's {color}. - {name}"),
    Template("chatty", "My old one broke, so please send {qty} {color} {items} to me in {city}. Thanks a lot, {name}"),
    Template("chatty", "For delivery to {city}: {qty} {color} {items}. The order is for {name}."),
    Template("chatty", "Is it possible to get {qty} {items} in {color} shipped to {city}? My name is {name}."),
    Template("chatty", "Quick one from {name}: {qty} {color} {items}, please, to our place in {city}."),
)

EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
EMAIL_SENTENCES = (
    "You can reach me at {email}.",
    "Questions? Write to {email}.",
    "My e-mail is {email} if anything is unclear.",
)
# Numbers from ranges set aside for fiction (UK 020 7946 0xxx, US 555-01xx, AU 0491 570 xxx).
PHONE_NUMBERS = (
    "+44 20 7946 0958", "+1 202 555 0147", "+61 491 570 156",
    "+44 20 7946 0321", "+1 312 555 0183", "+61 491 570 110",
)
PHONE_SENTENCES = (
    "Call me on {phone} if there is a problem.",
    "My number is {phone}.",
    "Phone: {phone}",
)


def generate(seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Return (train_rows, val_rows): 600 clean + planted dirty train rows, 60 clean val rows."""
    rng = random.Random(f"tunesmith-demo-{seed}-train")
    plant_rng = random.Random(f"tunesmith-demo-{seed}-plant")
    clean = _clean_rows(rng, N_TRAIN, taken_inputs=set(), taken_orders=set())
    train = _plant(clean, _plan(seed), rng, plant_rng)

    val_rng = random.Random(f"tunesmith-demo-{seed}-val")
    # Val must not share an input or even a field combination with train, so the tuned
    # model is scored on orders it has never seen.
    taken_inputs = {row["input"] for row in train}
    taken_orders = {row["response"] for row in clean}
    val = _clean_rows(val_rng, N_VAL, taken_inputs, taken_orders)
    return train, val


def planted_lines(seed: int = 0) -> dict[str, list[int]]:
    """Kind of dirty row -> 1-based line numbers in train.jsonl, as `generate(seed)` places them."""
    lines: dict[str, list[int]] = {kind: [] for kind in PLANT_COUNTS}
    for index, kind in sorted(_plan(seed).items()):
        lines[kind].append(index + 1)
    return lines


def write_sample(out_dir: Path) -> None:
    """Write train.jsonl and val.jsonl for seed 0 into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = generate()
    _write_jsonl(out_dir / "train.jsonl", train)
    _write_jsonl(out_dir / "val.jsonl", val)


def to_jsonl_line(row: dict[str, Any]) -> str:
    # ensure_ascii=False keeps "Zürich" readable and lets mojibake show up as it would in
    # a real export, instead of hiding behind \u escapes.
    return json.dumps(row, ensure_ascii=False) + "\n"


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    # newline="" so Windows does not turn "\n" into "\r\n" and break byte-identity.
    with path.open("w", encoding="utf-8", newline="") as f:
        f.writelines(to_jsonl_line(row) for row in rows)


# --- clean rows ---------------------------------------------------------------------


def _order(rng: random.Random) -> dict[str, Any]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {
        "name": f"{first} {last}",
        "city": rng.choice(CITIES),
        "item": rng.choice(ITEMS),
        "quantity": rng.randint(1, MAX_QUANTITY),
        "color": rng.choice(COLORS),
    }


def _response(order: dict[str, Any]) -> str:
    return json.dumps({key: order[key] for key in KEYS}, ensure_ascii=False)


def _render(template: Template, order: dict[str, Any], rng: random.Random) -> str:
    quantity = order["quantity"]
    spelled = not template.digits_only and rng.random() < WORD_QUANTITY_SHARE
    plural = "" if quantity == 1 else "s"
    return template.text.format(
        name=order["name"],
        city=order["city"],
        color=order["color"],
        qty=NUMBER_WORDS[quantity] if spelled else str(quantity),
        item=order["item"],
        items=order["item"] + plural,
        units="unit" + plural,
    )


def _example(rng: random.Random) -> tuple[dict[str, str], dict[str, Any]]:
    order = _order(rng)
    return _row(rng.choice(TEMPLATES), order, rng), order


def _row(template: Template, order: dict[str, Any], rng: random.Random) -> dict[str, str]:
    return {
        "instruction": rng.choice(INSTRUCTIONS),
        "input": _render(template, order, rng),
        "response": _response(order),
        "category": template.style,
    }


def _clean_rows(
    rng: random.Random, count: int, taken_inputs: set[str], taken_orders: set[str]
) -> list[dict[str, str]]:
    """`count` rows whose inputs and orders are unique and not in the taken sets."""
    rows: list[dict[str, str]] = []
    inputs, orders = set(taken_inputs), set(taken_orders)
    while len(rows) < count:
        row, _ = _example(rng)
        # Redraw on a clash so the only duplicates in the file are the planted ones.
        if row["input"] in inputs or row["response"] in orders:
            continue
        inputs.add(row["input"])
        orders.add(row["response"])
        rows.append(row)
    return rows


# --- planted dirty rows -------------------------------------------------------------


def _plan(seed: int) -> dict[int, str]:
    """0-based index in train.jsonl -> kind of dirty row placed there."""
    rng = random.Random(f"tunesmith-demo-{seed}-positions")
    total = N_TRAIN + sum(PLANT_COUNTS.values())
    kinds = [kind for kind, n in PLANT_COUNTS.items() for _ in range(n)]
    positions = rng.sample(range(FIRST_PLANT_INDEX, total), len(kinds))
    return dict(zip(positions, kinds))


def _plant(
    clean: list[dict[str, str]], plan: dict[int, str], rng: random.Random, plant_rng: random.Random
) -> list[dict[str, str]]:
    """Interleave the clean rows with dirty rows at the planned positions."""
    rows: list[dict[str, str]] = []
    emitted_clean: list[dict[str, str]] = []
    used_sources: set[int] = set()
    taken = {row["input"] for row in clean}
    pending = iter(clean)
    for index in range(len(clean) + len(plan)):
        kind = plan.get(index)
        if kind is None:
            row = next(pending)
            emitted_clean.append(row)
        elif kind in ("exact_duplicate", "near_duplicate"):
            source = _pick_source(emitted_clean, used_sources, plant_rng)
            row = dict(source) if kind == "exact_duplicate" else _near_duplicate(source, plant_rng, taken)
        else:
            row = _dirty_row(kind, rng, plant_rng, taken)
        taken.add(row["input"])
        rows.append(row)
    return rows


def _pick_source(
    emitted: list[dict[str, str]], used: set[int], rng: random.Random
) -> dict[str, str]:
    # Each original is copied at most once, so every duplicate is a clean pair.
    choices = [i for i in range(len(emitted)) if i not in used]
    index = rng.choice(choices)
    used.add(index)
    return emitted[index]


def _dirty_row(kind: str, rng: random.Random, plant_rng: random.Random, taken: set[str]) -> dict[str, str]:
    while True:
        if kind == "mojibake":
            row = _mojibake_row(rng)
        else:
            row, order = _example(rng)
            if kind == "email":
                sentence = plant_rng.choice(EMAIL_SENTENCES).format(email=_email(order["name"], plant_rng))
                row["input"] = _append_sentence(row["input"], sentence)
            elif kind == "phone":
                sentence = plant_rng.choice(PHONE_SENTENCES).format(phone=plant_rng.choice(PHONE_NUMBERS))
                row["input"] = _append_sentence(row["input"], sentence)
            elif kind == "empty_response":
                row["response"] = ""
            else:
                raise ValueError(f"unknown dirty row kind: {kind}")
        if row["input"] not in taken:
            return row


def _append_sentence(text: str, sentence: str) -> str:
    # Terse templates end without a full stop; add one so the extra sentence reads naturally.
    end = "" if text.endswith((".", "!", "?")) else "."
    return f"{text}{end} {sentence}"


def _email(name: str, rng: random.Random) -> str:
    # Strip accents so "José" gives a plausible address ("jose.silva@...").
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    local = ascii_name.lower().replace(" ", ".")
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def _mojibake_row(rng: random.Random) -> dict[str, str]:
    """A row whose input went through UTF-8 bytes read back as Windows-1252.

    The template has an apostrophe (typed as a curly one, the way word processors do)
    and the city has an accent, so the damage shows: "I’d" -> "Iâ€™d", "Zürich" -> "ZÃ¼rich".
    The response keeps the correct spelling, as the order system would have it.
    """
    with_apostrophe = tuple(t for t in TEMPLATES if "'" in t.text)
    accented = tuple(c for c in CITIES if not c.isascii())
    order = _order(rng)
    order["city"] = rng.choice(accented)
    row = _row(rng.choice(with_apostrophe), order, rng)
    curly = row["input"].replace("'", "\u2019")
    row["input"] = curly.encode("utf-8").decode("cp1252")
    return row


def _near_duplicate(source: dict[str, str], rng: random.Random, taken: set[str]) -> dict[str, str]:
    """A copy of source whose input differs by casing, punctuation or one word."""
    edits = (_lowercase, _change_punctuation, _drop_filler_word, _swap_filler_words)
    order = json.loads(source["response"])
    # The spelled-out quantity counts as a field too, or "three" could be dropped.
    # Names are split into words, so "Mei" in "Mei Okafor" is never treated as filler.
    fields = {word.lower() for value in order.values() for word in str(value).split()}
    fields.add(NUMBER_WORDS[order["quantity"]])
    for edit in rng.sample(edits, len(edits)):
        text = edit(source["input"], fields, rng)
        if text is not None and text != source["input"] and text not in taken:
            return {**source, "input": text}
    raise RuntimeError(f"no near-duplicate edit applies to: {source['input']!r}")


_WORD = re.compile(r"\S+")


def _lowercase(text: str, fields: set[str], rng: random.Random) -> str | None:
    return text.lower()


def _change_punctuation(text: str, fields: set[str], rng: random.Random) -> str | None:
    without_commas = text.replace(",", "")
    if without_commas != text:
        return without_commas
    return text.rstrip(".!?") + "!"


def _filler_spans(text: str, fields: set[str]) -> list[re.Match[str]]:
    # Only words that carry no field value, so the edited input still means the same order.
    return [m for m in _WORD.finditer(text) if not any(f in m.group().lower() for f in fields)]


def _drop_filler_word(text: str, fields: set[str], rng: random.Random) -> str | None:
    spans = _filler_spans(text, fields)
    if len(spans) < 2:
        return None
    span = rng.choice(spans)
    return (text[: span.start()] + text[span.end():]).replace("  ", " ").strip()


def _swap_filler_words(text: str, fields: set[str], rng: random.Random) -> str | None:
    spans = _filler_spans(text, fields)
    pairs = [(a, b) for a, b in zip(spans, spans[1:]) if text[a.end(): b.start()] == " " and a.group() != b.group()]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    return text[: a.start()] + b.group() + " " + a.group() + text[b.end():]


def main() -> None:
    write_sample(SAMPLE_DIR)
    counts = {kind: len(lines) for kind, lines in planted_lines().items()}
    print(f"wrote {SAMPLE_DIR}: {N_TRAIN} clean train rows + planted {counts}, {N_VAL} val rows")


if __name__ == "__main__":
    main()
