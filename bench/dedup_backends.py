"""MinHash backends for near-duplicate removal: datasketch against rensa, on the same rows.

Both backends get the same generated rows (instruction-style examples of ~300-800 characters,
some of them planted near-duplicates of earlier rows, some distinct rows built from one shared
template), the same word shingles (`tunesmith.data.dedup.shingles`, computed once, not timed),
the same `num_perm`, the same LSH banding (`_lsh_bands`) and the same threshold. Each one builds
a MinHash per row, inserts all of them into its LSH index and queries each; a row counts as a
duplicate when the LSH returns an earlier row whose MinHash-estimated Jaccard is at least the
threshold (plain MinHash dedup, no exact Jaccard). Timed: MinHash build, LSH insert, query.

`tunesmith_find_duplicates` is `find_duplicates` itself on the same rows (exact dedup, then
rensa LSH with every candidate confirmed by the real Jaccard), timed end to end including
shingling. `demo_sample` runs it on the demo data (real-looking rows from 5 templates).

Precision and recall are against the planted near-duplicates: a planted row is one made by
editing an earlier row (1 to 5% of its words swapped, dropped, replaced or added, plus
punctuation, casing and whitespace edits); every other row is distinct, including template
rows that share their instruction with many others.

    python bench/dedup_backends.py [--rows 20000] [--num-perm 192] [--threshold 0.7]
                                   [--shingle-size 3] [--seed 0] [--sweep]

One JSON object goes to stdout, progress to stderr. `--sweep` instead prints the grid the
defaults in `tunesmith.data.dedup` come from: exact-Jaccard recall by edit rate and false
merges of distinct template rows per shingle size x threshold, then `find_duplicates` end to
end for a few (shingle size, threshold, num_perm) configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tunesmith.data.dedup import (
    DEFAULT_NUM_PERM,
    DEFAULT_SHINGLE_SIZE,
    DEFAULT_THRESHOLD,
    _lsh_bands,
    find_duplicates,
    normalise,
    shingles,
)

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------
# Rows: varied instruction/response texts, template rows and planted near-duplicates.

WORDS = """
the of and to in is that it for as with was on be by this are from at or an have not
which but all can has more one their there will been would when if so about what some into
than them only other its also after most could time very these two may first any new because
such where way many through well should each those people while how both just over same
still under much own part between long never again place around right however small large
great number every state world year work system program data model value result process
group case point problem fact water city house book school family story light music language
energy market price team game plan report change study method answer question example list
table line file code test error function class memory network server user account order
customer product service payment message email letter note recipe garden river mountain ocean
forest weather summer winter morning evening history science health body heart mind dream
idea reason choice chance effect cause design color shape size speed distance weight amount
level quality safety travel train plane road bridge street village country island coast
simple quick careful clear short early late open close full empty strong weak bright dark
warm cold fresh ready useful common rare modern ancient local public private natural basic
explain describe compare write list give show find choose build keep start stop move turn
help need want know think feel make take see look use try ask tell call read learn teach
grow bring hold carry cover fill share save spend pay buy sell send receive check measure
""".split()

TOPICS = """photosynthesis|compound interest|the water cycle|binary search|a sourdough starter|
volcanoes|supply and demand|the French revolution|vaccines|recursion|black holes|inflation|
composting|unit testing|the immune system|plate tectonics|sleep hygiene|a budget spreadsheet|
tides|database indexes|the printing press|solar panels|bird migration|a job interview|
password managers|climate zones|the stock market|garbage collection|the Roman empire|
coral reefs|electric cars|public libraries|rainforests|earthquakes|the internet|bread baking|
chess openings|marathon training|remote work|honey bees""".replace("\n", "").split("|")

INSTRUCTIONS = [
    "Explain {t} to a ten year old.",
    "Write a short paragraph about {t}.",
    "Give three practical tips about {t}.",
    "Summarise what most people get wrong about {t}.",
    "Describe {t} in plain language for a beginner.",
    "What are the pros and cons of {t}?",
    "Write a friendly email to a colleague about {t}.",
    "Compare {t} with something from everyday life.",
    "List the key facts a student should know about {t}.",
    "Answer briefly: why does {t} matter?",
]

# Template rows: distinct examples that share an instruction template, as real instruction
# data does (the demo sample is built this way). They must not be merged.
NAMES = "Ana Ben Chen Dara Emil Freya Greta Hana Ivan Jonas Kwame Lena Mateo Nina Omar Priya Ravi Sofia Tomasz Yuki".split()
SURNAMES = "Silva Berg Costa Novak Sato Rossi Okafor Jensen Fischer Dubois Morales Ito Malik Tanaka Smith Chen".split()
CITIES = "Lisbon Bristol Tallinn Osaka Seville Austin Utrecht Denver Krakow Oslo Accra Prague Dublin Nantes Cork Malmo".split()
ITEMS = "teapot bucket rug blanket lamp mirror kettle chair clock pillow tray jacket helmet sweater bottle cushion".split()
COLOURS = "red blue green yellow orange purple pink brown black grey silver white".split()

# Zipf-like weights: a few words are common, as in real text.
_WEIGHTS = [1.0 / (rank + 8) for rank in range(len(WORDS))]


def _sentence(rng: random.Random, n: int) -> str:
    words = rng.choices(WORDS, weights=_WEIGHTS, k=n)
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"])


def varied_row(rng: random.Random) -> str:
    instruction = rng.choice(INSTRUCTIONS).format(t=rng.choice(TOPICS))
    target = rng.randint(50, 125)
    parts: list[str] = []
    total = 0
    while total < target:
        n = rng.randint(6, 16)
        parts.append(_sentence(rng, n))
        total += n
    return instruction + "\n" + " ".join(parts)


def json_row(rng: random.Random) -> str:
    name = f"{rng.choice(NAMES)} {rng.choice(SURNAMES)}"
    city, item, colour, qty = rng.choice(CITIES), rng.choice(ITEMS), rng.choice(COLOURS), rng.randint(1, 12)
    message = rng.choice([
        f"Hi, it's {name} from {city}. Can I get {qty} {colour} {item}s?",
        f"Dear team, I would like to order {qty} {colour} {item}s. Please deliver to {city}. Regards, {name}",
        f"Order request from {name} ({city}): {qty} units of the {colour} {item}.",
        f"Name: {name}. City: {city}. Item: {item}. Qty: {qty}. Colour: {colour}.",
        f"Good afternoon. Please process an order of {qty} {item}s in {colour} for {name}, {city}.",
    ])
    response = json.dumps({"name": name, "city": city, "item": item, "quantity": qty, "color": colour})
    return "Extract the order as JSON with keys name, city, item, quantity, color.\n" + message + "\n" + response


def translate_row(rng: random.Random) -> str:
    # "Translate X to French" where X is a different sentence of a few words each time; the
    # "French" is a made-up word-by-word rendering, so the response differs as X does.
    english = rng.choices(WORDS, weights=_WEIGHTS, k=rng.randint(5, 12))
    french = [_FRENCH.get(w, w[::-1] + "e") for w in english]
    return ("Translate the following sentence into French.\n" + " ".join(english).capitalize() + ".\n"
            + " ".join(french).capitalize() + ".")


_FRENCH = {"the": "le", "of": "de", "and": "et", "to": "à", "in": "dans", "is": "est", "that": "que",
           "it": "il", "for": "pour", "with": "avec", "was": "était", "on": "sur", "be": "être"}


def template_row(rng: random.Random) -> str:
    return json_row(rng) if rng.random() < 0.6 else translate_row(rng)


def plant(rng: random.Random, text: str, word_edits: int, cosmetic: int = 2) -> str:
    """A near-duplicate of `text`: `word_edits` word-level edits plus `cosmetic` ones."""
    words = text.split(" ")
    for _ in range(word_edits):
        i = rng.randrange(len(words))
        op = rng.choice(("swap", "drop", "replace", "add"))
        if op == "swap" and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == "drop" and len(words) > 2:
            del words[i]
        elif op == "add":
            words.insert(i, rng.choice(WORDS))
        else:
            words[i] = rng.choice(WORDS)
    for _ in range(cosmetic):
        i = rng.randrange(len(words))
        op = rng.choice(("punct", "case", "space"))
        if op == "punct":
            words[i] = words[i] + rng.choice([",", "!", ";", " -", "..."])
        elif op == "case":
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].capitalize()
        else:
            words[i] = words[i] + rng.choice(["  ", "\n", "\t"])
    return " ".join(words)


def generate(n: int, seed: int = 0, dup_share: float = 0.15, template_share: float = 0.25,
             edit_rate: float = 0.05) -> tuple[list[str], dict[int, int]]:
    """`n` rows and {planted row: the row it was made from}.

    A planted row gets between 1 and `edit_rate` x its word count word edits, plus two
    cosmetic edits (punctuation, casing, whitespace).
    """
    rng = random.Random(seed)
    rows: list[str] = []
    planted: dict[int, int] = {}
    originals: list[int] = []
    seen: set[str] = set()
    for i in range(n):
        r = rng.random()
        if originals and r < dup_share:
            src = rng.choice(originals)
            k = rng.randint(1, max(1, round(edit_rate * len(rows[src].split()))))
            rows.append(plant(rng, rows[src], k))
            planted[i] = src
            continue
        while True:  # distinct rows are distinct: no accidental exact repeats
            text = template_row(rng) if r < dup_share + template_share else varied_row(rng)
            if normalise(text) not in seen:
                break
        seen.add(normalise(text))
        rows.append(text)
        originals.append(i)
    return rows, planted


def precision_recall(flagged: Sequence[int] | set[int], planted: dict[int, int]) -> dict[str, float]:
    flagged = set(flagged)
    hits = len(flagged & planted.keys())
    return {
        "flagged": len(flagged),
        "planted": len(planted),
        "precision": round(hits / len(flagged), 4) if flagged else 1.0,
        "recall": round(hits / len(planted), 4) if planted else 1.0,
    }


# ---------------------------------------------------------------------------------------------
# Backends. Same tokens, same num_perm, same bands, same rule.


def _flag(hashes: list, query: Callable[[object], list[int]], threshold: float) -> set[int]:
    """Rows with an earlier LSH candidate whose estimated Jaccard is >= threshold."""
    flagged: set[int] = set()
    for i, m in enumerate(hashes):
        if any(j < i and hashes[j].jaccard(m) >= threshold for j in query(m)):
            flagged.add(i)
    return flagged


def run_datasketch(tokens: list[list[bytes]], num_perm: int, threshold: float, bands: int, seed: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    hashes = []
    for toks in tokens:
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(toks)
        hashes.append(m)
    t1 = time.perf_counter()
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))
    with lsh.insertion_session() as session:
        for i, m in enumerate(hashes):
            session.insert(i, m, check_duplication=False)
    t2 = time.perf_counter()
    flagged = _flag(hashes, lsh.query, threshold)
    t3 = time.perf_counter()
    return {"minhash_s": t1 - t0, "insert_s": t2 - t1, "query_s": t3 - t2, "flagged": flagged}


def run_rensa(tokens: list[list[str]], num_perm: int, threshold: float, bands: int, seed: int) -> dict:
    from rensa import RMinHash, RMinHashLSH

    t0 = time.perf_counter()
    hashes = []
    for toks in tokens:  # as tunesmith does; RMinHash.from_token_sets is no faster on 2 cores
        m = RMinHash(num_perm, seed)
        m.update(toks)
        hashes.append(m)
    t1 = time.perf_counter()
    lsh = RMinHashLSH(threshold, num_perm, bands)
    lsh.insert_many(hashes, 0)
    t2 = time.perf_counter()
    flagged = _flag(hashes, lsh.query, threshold)
    t3 = time.perf_counter()
    return {"minhash_s": t1 - t0, "insert_s": t2 - t1, "query_s": t3 - t2, "flagged": flagged}


def demo_sample(threshold: float, shingle_size: int, num_perm: int) -> dict | None:
    """find_duplicates on the demo sample: real-looking rows from 5 templates."""
    path = ROOT / "src" / "tunesmith" / "demo" / "sample" / "train.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = ["\n".join(str(r.get(k, "")) for k in ("instruction", "input", "response")) for r in rows]
    dups = find_duplicates(texts, threshold=threshold, shingle_size=shingle_size, num_perm=num_perm)
    kept = [i for i in range(len(texts)) if i not in dups]
    sets = [shingles(texts[i], shingle_size) for i in kept]
    closest = max((_jaccard(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]), default=0.0)
    return {
        "rows": len(texts),
        "exact": sum(d.kind == "exact" for d in dups.values()),
        "near": sorted(round(d.similarity, 3) for d in dups.values() if d.kind == "near"),
        "closest_pair_left_jaccard": round(closest, 3),
    }


# ---------------------------------------------------------------------------------------------
# Sweep: exact Jaccard, no MinHash, to see which shingle size and threshold separate planted
# near-duplicates from distinct template rows.


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def sweep(seed: int) -> dict:
    rng = random.Random(seed)
    sizes = (1, 2, 3, 4, 5)
    thresholds = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8)
    # Positives: (original, planted) pairs at several edit rates, varied and template rows.
    positives: dict[str, list[tuple[str, str]]] = {}
    for label, rate in (("1 edit", 0.0), ("2%", 0.02), ("5%", 0.05), ("8%", 0.08), ("12%", 0.12)):
        pairs = []
        for i in range(400):
            base = varied_row(rng) if i % 3 else template_row(rng)
            k = max(1, round(rate * len(base.split())))
            pairs.append((base, plant(rng, base, k)))
        positives[label] = pairs
    # Negatives: pairs of distinct rows of the same template (the hard case for dedup).
    negatives = [(json_row(rng), json_row(rng)) for _ in range(3000)]
    negatives += [(translate_row(rng), translate_row(rng)) for _ in range(1000)]
    negatives = [(a, b) for a, b in negatives if a != b]
    result: dict = {"negatives": len(negatives), "positives_per_rate": 400, "grid": {}}
    for size in sizes:
        pos = {label: [_jaccard(shingles(a, size), shingles(b, size)) for a, b in pairs]
               for label, pairs in positives.items()}
        neg = sorted(_jaccard(shingles(a, size), shingles(b, size)) for a, b in negatives)
        row: dict = {"negative_jaccard_max": round(neg[-1], 3),
                     "negative_jaccard_p999": round(neg[int(0.999 * (len(neg) - 1))], 3)}
        for t in thresholds:
            row[f"t={t}"] = {
                "false_merge_rate": round(sum(j >= t for j in neg) / len(neg), 4),
                **{f"recall_{label}": round(sum(j >= t for j in js) / len(js), 3) for label, js in pos.items()},
            }
        result["grid"][f"word_{size}gram"] = row

    # End to end (find_duplicates: LSH + exact confirmation) for a few configurations, on mixed
    # rows with planted near-duplicates and on rows of one JSON template only (the slow case:
    # their pairs sit at Jaccard 0.2-0.5, so a shallow LSH curve makes them candidates).
    rows, planted = generate(10_000, seed + 1)
    jrng = random.Random(seed + 2)
    json_rows = [json_row(jrng) for _ in range(10_000)]
    pipeline = []
    for size, threshold, num_perm in ((3, 0.7, 128), (3, 0.7, 192), (3, 0.7, 240), (2, 0.7, 192),
                                      (3, 0.65, 200), (3, 0.6, 200)):
        t0 = time.perf_counter()
        dups = find_duplicates(rows, threshold=threshold, shingle_size=size, num_perm=num_perm)
        mixed_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        json_dups = find_duplicates(json_rows, threshold=threshold, shingle_size=size, num_perm=num_perm)
        json_s = time.perf_counter() - t0
        pipeline.append({
            "shingle_size": size, "threshold": threshold, "num_perm": num_perm,
            "lsh_bands": _lsh_bands(threshold, num_perm),
            **precision_recall(dups.keys(), planted), "seconds_10k_mixed": round(mixed_s, 2),
            "json_template_rows_merged_of_10k": len(json_dups), "seconds_10k_json_template": round(json_s, 2),
        })
        print(pipeline[-1], file=sys.stderr)
    result["pipeline"] = pipeline
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM)
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    p.add_argument("--shingle-size", type=int, default=DEFAULT_SHINGLE_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", action="store_true", help="print the exact-Jaccard grid instead")
    args = p.parse_args(argv)
    if args.sweep:
        print(json.dumps(sweep(args.seed), indent=1))
        return 0

    rows, planted = generate(args.rows, args.seed)
    bands = _lsh_bands(args.threshold, args.num_perm)
    t0 = time.perf_counter()
    tokens = [sorted(shingles(r, args.shingle_size)) for r in rows]
    shingle_s = time.perf_counter() - t0
    tokens_bytes = [[t.encode() for t in toks] for toks in tokens]  # datasketch hashes bytes
    print(f"{len(rows)} rows, {len(planted)} planted; shingled in {shingle_s:.2f}s", file=sys.stderr)

    out: dict = {
        "rows": len(rows),
        "mean_chars": round(sum(map(len, rows)) / len(rows)),
        "planted_near_duplicates": len(planted),
        "shingles": f"word {args.shingle_size}-grams",
        "num_perm": args.num_perm,
        "threshold": args.threshold,
        "lsh": f"{bands} bands x {args.num_perm // bands} rows",
        "shingling_s_not_timed_below": round(shingle_s, 3),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
    for name, fn, toks in (("rensa", run_rensa, tokens), ("datasketch", run_datasketch, tokens_bytes)):
        print(f"running {name} ...", file=sys.stderr)
        r = fn(toks, args.num_perm, args.threshold, bands, args.seed)
        seconds = r["minhash_s"] + r["insert_s"] + r["query_s"]
        out[name] = {
            "seconds": round(seconds, 3),
            "minhash_s": round(r["minhash_s"], 3), "insert_s": round(r["insert_s"], 3), "query_s": round(r["query_s"], 3),
            "rows_per_s": round(len(rows) / seconds),
            **precision_recall(r["flagged"], planted),
        }
    out["datasketch_seconds_over_rensa"] = round(out["datasketch"]["seconds"] / out["rensa"]["seconds"], 1)

    print("running tunesmith find_duplicates ...", file=sys.stderr)
    t0 = time.perf_counter()
    dups = find_duplicates(rows, threshold=args.threshold, shingle_size=args.shingle_size,
                           num_perm=args.num_perm, seed=args.seed)
    seconds = time.perf_counter() - t0
    found = planted.keys() & dups.keys()
    out["tunesmith_find_duplicates"] = {
        "note": "rensa MinHash, numpy LSH bands, exact Jaccard confirmation; includes shingling and exact dedup",
        "seconds": round(seconds, 3), "rows_per_s": round(len(rows) / seconds),
        "exact": sum(d.kind == "exact" for d in dups.values()),
        **precision_recall(dups.keys(), planted),
        "of_is_the_planted_source": round(sum(dups[i].of == planted[i] for i in found) / max(1, len(found)), 4),
    }
    out["demo_sample"] = demo_sample(args.threshold, args.shingle_size, args.num_perm)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
