"""`tunesmith data clean` on a large generated file with planted problems: speed, memory, accuracy.

The bench writes N instruction-tuning rows (seeded), plants duplicates, near-duplicates, PII
and PII look-alikes in them with their line numbers kept as labels, runs
`tunesmith data clean FILE --out DIR` in a subprocess (wall time, RSS sampled every 0.2 s),
then scores clean.jsonl / removed.jsonl against the labels.

Rows: six categories (support replies, summarisation, code explanation, extraction to JSON,
translation, explanations), ~270-1300 characters each, ~80% `{"instruction", "response",
"category"}` and ~20% `{"messages": [...]}` (some with a system turn, some with two user
turns). Sentences are put together from slot lists (product names, quantities, subjects,
verbs, objects, code statements), so two unrelated rows share almost no word 3-grams, and two
rows from one template differ in most of their words. Nothing in an unplanted row looks like
PII: no "@", no "://", no digit run longer than four.

Planted, each at a later line than the row it copies:
  - exact duplicates (~2%): verbatim, whitespace changed, case changed, or the same example
    in the other JSON format;
  - near-duplicates (~3%): 1-5 word edits (swap, drop, replace, insert) plus 0-3 cosmetic ones
    (punctuation, casing), kept only if the word-3-gram Jaccard with the source stays >= 0.75
    (the same shingles as the cleaner: casefolded words, apostrophes dropped, system turns
    left out; edits never touch a system turn);
  - PII (~3% of rows, one value each, all eight types and several formats per type);
  - look-alikes (~2%): versions, dates, times, Luhn-failing 16-digit numbers, IBANs with a bad
    checksum, invalid SSNs, prices, git SHAs, UUIDs, ISBNs, coordinates, ... none of them PII.
A few duplicates copy a PII or look-alike row; those are scored as duplicates, and for PII
only when the cleaner keeps them.

    python bench/data_check.py [--rows 100000] [--seed 0] [--keep DIR] [--extra="ARGS"] [-- ARGS]

One JSON object goes to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import shlex
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

TARGET_SECONDS = 60
SHARES = {"exact": 0.02, "near": 0.03, "pii": 0.03, "lookalike": 0.02}
NEAR_MIN_JACCARD = 0.75
PII_TYPES = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "API_KEY", "URL_CREDENTIALS")


def log(*parts: object) -> None:
    print("[data_check]", *parts, file=sys.stderr, flush=True)


# ============================================================================ vocabulary

BRANDS = """Aldervane Brightwell Corvel Dunmore Elvaro Fennick Glenrose Harrowgate Istra Jorvik
Kestrel Lumora Marlowe Northam Ostrava Pellham Quarrel Rivenhall Solway Tamsin Ulverton Vantor
Westmere Yarrow Zephra Ashcombe Birchley Coldridge Dovecote Eastleigh Foxhollow Greystone Hollins
Ironbridge Juniper Kingsley Larkspur Millbrook Nettlebed Oakhurst Penrose Quillon Redfern Stanmore
Thornbury Underhill Valemont Wrenfield Amberly Brockwell Cindervale Drayfield""".split()
ITEMS = """kettle|blender|desk lamp|air purifier|backpack|standing desk|office chair|coffee grinder|
rice cooker|electric toothbrush|robot vacuum|bike helmet|hiking boots|rain jacket|yoga mat|monitor arm|
keyboard|wireless mouse|headphones|smart thermostat|water filter|baby monitor|garden hose|lawn mower|
cordless drill|tent|sleeping bag|camera bag|phone case|laptop stand|label printer|space heater|
humidifier|dehumidifier|toaster|slow cooker|food processor|stand mixer|ceiling fan|doorbell camera|
fitness tracker|e-reader|tablet cover|car seat|stroller|suitcase|travel mug|water bottle|bread maker|
juicer|sewing machine|electric scooter|projector|soundbar|router|power bank|dash cam|smoke alarm|
pressure cooker|espresso machine|steam iron|hair dryer""".replace("\n", "").split("|")
VARIANTS = ["", "", "", " Mini", " Pro", " Plus", " Max", " Lite", " 2", " 3", " Duo", " Go", " Air", " XL"]
FIRST_NAMES = """Maria James Aisha Tomasz Yuki Lena Omar Priya Lucas Freya Mateo Nina Ravi Sofia Jonas Hana
Kwame Greta Ivan Chen Dara Emil Amara Felix Ingrid Leo Mei Noah Olga Pablo Rosa Samir Tara Viktor Zara
Elif Bruno Carmen Diego Hugo Ines Jakob Kofi Lina Marco Nadia Oscar Petra Rania Stefan Ulla Wanda""".split()
SURNAMES = """Silva Berg Costa Novak Sato Rossi Okafor Jensen Fischer Dubois Morales Ito Malik Tanaka
Smith Keller Moreau Larsen Horvat Bianchi Mensah Nowak Petrov Romero Schmidt Varga Walsh Young Zhang
Lindqvist Achterberg Brennan Castillo Duarte Eriksen Fontaine Gallagher Hoffmann""".split()
CITIES = """Lisbon Bristol Tallinn Osaka Seville Austin Utrecht Denver Krakow Oslo Accra Prague Dublin
Nantes Cork Malmo Leeds Porto Ghent Bergen Graz Turin Lyon Bremen Aarhus Tampere Riga Vilnius Split
Bilbao Leipzig Glasgow Cardiff Halifax Quebec Tucson Boise Raleigh Omaha Spokane Hobart Perth
Dunedin Nagoya Busan Pune Mombasa""".split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
COLOURS = "red blue green yellow orange purple grey silver white black teal navy olive coral".split()
NUMBER_WORDS = "two three four five six seven eight nine ten twelve fifteen twenty".split()

ADJ = """quiet busy careful local regional small large modern older shared private public rural
urban seasonal weekly monthly annual temporary permanent informal formal simple detailed costly
cheaper faster slower remote nearby coastal northern southern eastern western independent
experimental traditional digital manual volunteer municipal national popular unusual reliable
fragile flexible strict generous cautious ambitious practical noisy crowded empty recent""".split()
NOUNS = """council warehouse library clinic bakery museum orchestra hospital school harbour garden
farm factory studio laboratory archive theatre market station bridge tunnel airport highway
railway ferry stadium reservoir vineyard brewery cooperative newsroom charity startup agency
committee union university college kitchen workshop observatory pharmacy bookshop cinema
gallery hostel campsite marina orchard greenhouse depot canteen""".split()
GROUPS = """residents engineers nurses farmers teachers volunteers researchers drivers students
shopkeepers pilots fishermen accountants designers librarians gardeners builders chefs
inspectors planners auditors surveyors curators technicians translators editors""".split()
VERBS = """approved rejected reviewed postponed expanded reduced replaced repaired inspected funded
delayed announced tested measured redesigned relocated restored upgraded simplified documented
questioned defended publicised cancelled extended shortened audited mapped surveyed modernised
rebuilt renamed merged divided paused resumed evaluated promoted criticised praised""".split()
THINGS = """budget|timetable|parking plan|recycling scheme|training course|safety rules|opening hours|
water supply|heating system|booking process|delivery routes|staff rota|price list|seating plan|
lighting|roof repairs|flood defences|cycle lanes|waiting list|loyalty programme|menu|website|
database|inventory|survey results|annual report|grant application|exhibition|concert series|
reading club|vaccination drive|tree planting|noise limits|speed limits|school meals|bus service|
night market|charging stations|solar panels|rainwater tanks|wildlife survey|archive catalogue|
radio programme|exam schedule|parking fees|office move|signage|visitor centre|playground|footpath""".replace("\n", "").split("|")
TAILS = """after a long public meeting|before the end of the quarter|despite strong objections|with help
from a {adj} {noun}|following a {adj} review|to save money over the winter|for the first time in years|
without telling the {group}|at the request of the {group}|in response to complaints from {group}|
as part of a {adj} pilot|during the spring holidays|after a {adj} storm|because of rising costs|
to make room for the {thing}|while the {noun} was closed|under pressure from the {group}|
in time for the {adj} festival|with a {adj} budget|ahead of the {adj} election|after two months of
delays|once the {thing} was finished|so that the {group} could plan ahead|with very little notice|
following advice from the {noun}""".replace("\n", " ").split("|")
TAILS = [t.strip() for t in TAILS]
TOPICS = """photosynthesis|compound interest|the water cycle|binary search|sourdough starters|volcanoes|
supply and demand|vaccines|recursion|black holes|inflation|composting|unit testing|the immune system|
plate tectonics|sleep hygiene|tides|database indexes|the printing press|solar power|bird migration|
password managers|climate zones|garbage collection|coral reefs|electric cars|public libraries|
rainforests|earthquakes|chess openings|marathon training|remote work|honey bees|glaciers|
caching|version control|crop rotation|wind turbines|the nitrogen cycle|lighthouses|sea ice|
beekeeping|fermentation|load balancing|the metric system|river deltas|sundials|tidal power""".replace("\n", "").split("|")
ASPECTS = """how it works|why it matters|common mistakes|the main trade-offs|a short history|where it is
used today|what beginners often miss|how to get started|the biggest risks|how experts measure it""".replace("\n", " ").split("|")
ISSUES = """stopped working after {days} days|makes a loud rattling noise|arrived with a cracked {part}|
keeps switching itself off|will not pair with my phone|is missing the {part}|smells of burnt plastic|
leaks from the {part}|shows a blinking {colour} light|charges very slowly|is much louder than described|
came in the wrong colour|has a loose {part}|does not heat up properly|was delivered to the wrong town|
was charged twice on my statement|overheats after a few minutes|lost its settings overnight|
has a scratched {part}|arrived {days} days late""".replace("\n", "").split("|")
PARTS = """lid|handle|cable|charger|base|filter|button|screen|hinge|strap|wheel|battery|plug|switch|
nozzle|cover|blade|tray|clip|stand""".replace("\n", "").split("|")

# Sentence frames for each category. Slots are filled per use, so the frames repeat but the
# sentences rarely do.
SUPPORT_REPLY = [
    "I am sorry to hear that your {product} {issue}.",
    "Thank you for letting us know about the problem with the {part}.",
    "Could you check whether the {part} is seated firmly before using it again?",
    "A replacement {part} can be sent to you within {n} working days.",
    "If the {part} still gives trouble, our repair team in {city} can take a look.",
    "Please keep the original box, since the courier will collect the {product} from your door.",
    "We have added a note to your account so that the {group} at our {city} office can follow up.",
    "Most customers find that a full reset fixes this; hold the {part} button for {n} seconds.",
    "As a thank you for your patience, we will add {n} months to your warranty.",
    "Our {adj} returns process means you do not need to print anything.",
    "The {colour} light usually means the {part} needs cleaning.",
    "You are welcome to exchange it for the {product2} instead if you prefer.",
    "A refund will appear on your statement within {n} days of the return arriving.",
    "I have asked our warehouse in {city} to check the rest of that batch.",
    "Please do not open the {part} yourself, as that would void the warranty.",
    "We usually see this when the {part} has been stored somewhere cold.",
    "If you send us a photo of the {part}, we can confirm the fault quickly.",
    "The {product2} uses the same {part}, so a spare from that model will fit.",
    "Our technicians have updated the guide for the {product} with clearer steps.",
    "Thanks again for your order, and I hope the {product} serves you well from now on.",
    "I can also arrange a collection on {weekday} morning if that suits you better.",
    "Let me know which option works best and I will set it up today.",
    "We are sorry that the delivery to {city} took longer than promised.",
    "The courier has confirmed that a new {product} will reach you by {weekday}.",
    "Your feedback about the {part} has been passed to our design team.",
]
SUPPORT_ASK = [
    "Customer message: \"My {product} {issue}. What should I do?\" Write a polite reply from the support team.",
    "Reply to this customer on behalf of {brand} support. They wrote: \"The {product} I bought {issue}.\"",
    "Draft a short, friendly answer to {name}, whose {product} {issue}.",
    "A customer in {city} says their {product} {issue}. Write the support reply.",
    "Write an apology and next steps for a customer whose {product} {issue}.",
    "You work in customer support for {brand}. A buyer reports that the {product} {issue}. Respond helpfully.",
]
DOC_TYPES = "article|meeting notes|news report|blog post|press release|memo|letter|newsletter item".split("|")
SUMMARY_ASK = [
    "Summarise the following {doc} in {k} sentences.\n\n{passage}",
    "Give a brief summary of this {doc}:\n\n{passage}",
    "Read the {doc} below and write a short summary for a busy reader.\n\n{passage}",
    "TL;DR this {doc} in plain language.\n\n{passage}",
    "Write a one-paragraph summary of the {doc} that follows.\n\n{passage}",
]
SUMMARY_LEAD = [
    "The {doc} explains that", "In short,", "The main point is that", "According to the {doc},",
    "The {doc} reports that", "Put simply,", "The key news is that",
]
QA_ASK = [
    "Explain {topic} to a ten year old, focusing on {aspect}.",
    "Write a short paragraph about {topic}: {aspect}.",
    "What should a beginner know about {topic}? Cover {aspect}.",
    "Describe {topic} in plain language, including {aspect}.",
    "I keep hearing about {topic}. Can you explain {aspect}?",
    "Give a clear explanation of {topic} for a newsletter, with a note on {aspect}.",
]
QA_SENT = [
    "When people talk about {topic}, they usually mean something quite {adj}.",
    "A good way to picture {topic} is to think of a {adj} {noun} run by {group}.",
    "Much of the confusion about {topic} comes from {aspect}.",
    "Experts who study {topic} often start with {aspect}.",
    "In practice, {topic} shows up in places like the {noun} and the {noun2}.",
    "It helps to remember that {topic} changes slowly, over {n} years or more.",
    "Many {group} learn about {topic} by watching a {adj} example first.",
    "The {adj} part of {topic} is easy to overlook.",
    "For a beginner, {aspect} is the best place to start.",
]
EXTRACT_ASK = [
    "Extract the customer, product, quantity, city and delivery day from this message as JSON.\n\n{text}",
    "Return a JSON object with keys customer, product, quantity, city and delivery for the order below.\n\n{text}",
    "Parse this order request into JSON (customer, product, quantity, city, delivery).\n\n{text}",
    "Turn the following note into structured JSON with the fields customer, product, quantity, city, delivery.\n\n{text}",
]
EXTRACT_TEXT = [
    "Hi, this is {name} from {city}. Could you send {qty} of the {product} by {day}?",
    "Dear team, please deliver {qty} units of the {product} to our {city} {noun} on {day}. Kind regards, {name}.",
    "Order request from {name} in {city}: {qty} x {product}, needed {day}.",
    "{name} called about the {product}; they want {qty} delivered to {city} on {day}.",
    "Good afternoon. {name} here. We need {qty} of your {product} for the {noun} in {city}, ideally {day}.",
    "Quick note from {name}: {qty} {product} units, {city} address, delivery {day} please.",
]
EXTRACT_FILLER = [
    "The last delivery was a little late, so please confirm the time.",
    "Our {noun} is closed at lunch, so the morning would be best.",
    "Please leave the boxes with the {group} at the side entrance.",
    "We were very happy with the previous order from {brand}.",
    "If the {colour} version is out of stock, any colour will do.",
    "Let me know if the price has changed since the spring.",
    "The {group} will unpack everything the same afternoon.",
]
CODE_ASK = [
    "Explain what this Python function does:\n\n{code}",
    "What does the following code do? Walk through it step by step.\n\n{code}",
    "Describe the behaviour of this function in plain English.\n\n{code}",
    "Review this function and explain its purpose.\n\n{code}",
    "Add a short explanation for a junior developer of what this code does.\n\n{code}",
]
CODE_VERBS = """load save parse count filter group merge split clean rank score sort format check build
collect update remove find fetch render send index resolve validate summarise prune tally select
export import bucket dedupe refresh archive""".split()
CODE_NOUNS = """orders users invoices events rows tickets records items entries readings samples
messages bookings payments routes stations products visits shipments accounts sessions tasks
reviews scores files comments alerts jobs pending_orders open_tickets old_files
drafts claims trips parcels leads quotes refunds""".split()
CODE_FIELDS = """name status total price city owner weight rating priority region created kind label
size category score title level source amount""".split()
# (code, explanation): a list-building or a dict-building loop, filters, then post-steps
CODE_FILTERS = [
    ("        if {var}.{field} is None:\n            continue",
         "Entries whose {field} is missing are skipped.|"
         "Any {var} without a {field} is passed over.|"
         "It ignores {noun} that have no {field} set."),
    ("        if {var}.{field} < {lim}:\n            continue",
         "Anything with a {field} below {lim} is ignored.|"
         "A {var} only counts when its {field} is at least {lim}.|"
         "Small values are filtered out: the {field} has to reach {lim}."),
    ("        if not {var}.{field2}:\n            continue",
         "Entries with an empty {field2} are left out.|"
         "It drops every {var} whose {field2} is empty or zero.|"
         "A blank {field2} means the {var} is not used."),
    ("        if {var}.{field} in {seen}:\n            continue",
         "Entries whose {field} was already seen are skipped.|"
         "Anything whose {field} appears in {seen} is skipped.|"
         "It uses {seen} to leave out known {noun}."),
]
CODE_LIST = (
    "    {acc} = []",
    "It starts with an empty list called {acc}.|"
    "First it creates an empty list, {acc}.|"
    "The list {acc} collects the output.",
    "        {acc}.append({var})",
    "Each remaining entry is added to {acc}.|"
    "Whatever survives the checks is appended to {acc}.|"
    "The {noun} that pass are collected in {acc}.",
)
CODE_DICT = (
    "    {acc} = {{}}",
    "It starts with an empty dictionary called {acc}.|"
    "The dictionary {acc} holds the groups.|"
    "First it sets up {acc} as an empty dict.",
    "        {acc}.setdefault({var}.{field}, []).append({var})",
    "Entries are grouped by their {field} inside {acc}.|"
    "Each {var} goes into a list keyed by its {field}.|"
    "The {noun} end up grouped by {field}.",
)
CODE_AFTER_LIST = [
    ("    {acc}.sort(key=lambda x: x.{field2}, reverse=True)",
         "The result is sorted by {field2}, largest first.|"
         "It sorts {acc} in descending order of {field2}.|"
         "The highest {field2} values come first after sorting."),
    ("    {acc} = {acc}[:{lim}]",
         "Only the first {lim} results are kept.|"
         "It then trims {acc} to {lim} items.|"
         "Anything after the first {lim} is cut off."),
    ("    log.info(\"{verb} %d {noun}\", len({acc}))",
         "It logs how many {noun} it kept.|"
         "A log line reports the number of {noun} left.|"
         "It writes the count to the log."),
    ("    if not {acc}:\n        raise ValueError(\"no {noun} to {verb}\")",
         "If nothing is left it raises a ValueError.|"
         "An empty result is treated as an error.|"
         "When no {noun} remain, it raises ValueError instead of returning."),
]
CODE_PURPOSE = [
    "It was written for the {adj} {noun} in {city}, where the {group} run it before the {weekday} meeting.",
    "The {group} at the {noun} use it to tidy the {thing} data.",
    "A similar helper exists in the {brand} codebase for the {thing}.",
    "In the {adj} version of the script it also fed the {thing} dashboard.",
    "Nothing in it depends on the {noun} setup, so the {group} can reuse it elsewhere.",
    "The docstring mentions the {thing} report, which the {group} read every {weekday}.",
]
CODE_AFTER_DICT = [
    ("    log.info(\"{verb}: %d groups\", len({acc}))",
         "It logs how many groups it found.|"
         "The number of groups is logged.|"
         "It reports the group count in the log."),
    ("    if not {acc}:\n        raise ValueError(\"no {noun} to {verb}\")",
         "If nothing is left it raises a ValueError.|"
         "An empty result is treated as an error.|"
         "When no {noun} remain, it raises ValueError instead of returning."),
    ("    {acc} = {{k: v for k, v in {acc}.items() if len(v) >= {lim}}}",
         "Groups with fewer than {lim} entries are dropped.|"
         "Small groups, under {lim} members, are removed.|"
         "Only groups of {lim} or more survive."),
]
TRANSLATE = [  # (English, German, French, Spanish)
    ("{name} is travelling to {city} on {weekday_en}.", "{name} reist am {weekday_de} nach {city}.",
     "{name} part pour {city} {weekday_fr}.", "{name} viaja a {city} el {weekday_es}."),
    ("The {product} costs less than last year.", "Der {product} kostet weniger als letztes Jahr.",
     "Le {product} coûte moins cher que l'année dernière.", "El {product} cuesta menos que el año pasado."),
    ("We ordered {num_en} boxes for the office.", "Wir haben {num_de} Kisten für das Büro bestellt.",
     "Nous avons commandé {num_fr} cartons pour le bureau.", "Pedimos {num_es} cajas para la oficina."),
    ("The museum in {city} opens at {num_en}.", "Das Museum in {city} öffnet um {num_de}.",
     "Le musée de {city} ouvre à {num_fr} heures.", "El museo de {city} abre a las {num_es}."),
    ("Please send the report to {name} before noon.", "Bitte schick den Bericht vor Mittag an {name}.",
     "Merci d'envoyer le rapport à {name} avant midi.", "Por favor, envía el informe a {name} antes del mediodía."),
    ("My sister works in a small bakery in {city}.", "Meine Schwester arbeitet in einer kleinen Bäckerei in {city}.",
     "Ma sœur travaille dans une petite boulangerie à {city}.", "Mi hermana trabaja en una pequeña panadería en {city}."),
    ("The meeting with {name} has been moved to {weekday_en}.", "Das Treffen mit {name} wurde auf {weekday_de} verschoben.",
     "La réunion avec {name} a été déplacée à {weekday_fr}.", "La reunión con {name} se ha movido al {weekday_es}."),
    ("{name}, could you open the window a little?", "{name}, könntest du das Fenster ein wenig öffnen?",
     "{name}, pourrais-tu ouvrir un peu la fenêtre ?", "{name}, ¿podrías abrir un poco la ventana?"),
    ("The {product} arrived {num_en} days late.", "Der {product} kam {num_de} Tage zu spät an.",
     "Le {product} est arrivé avec {num_fr} jours de retard.", "El {product} llegó con {num_es} días de retraso."),
    ("The children of {name} are playing in the garden.", "Die Kinder von {name} spielen im Garten.",
     "Les enfants de {name} jouent dans le jardin.", "Los hijos de {name} juegan en el jardín."),
    ("{name} has lived in {city} for {num_en} years.", "{name} wohnt seit {num_de} Jahren in {city}.",
     "{name} habite à {city} depuis {num_fr} ans.", "{name} vive en {city} desde hace {num_es} años."),
    ("The shop in {city} closes at {num_en}.", "Der Laden in {city} schließt um {num_de}.",
     "Le magasin de {city} ferme à {num_fr} heures.", "La tienda de {city} cierra a las {num_es}."),
    ("I would like to return the {product}.", "Ich möchte den {product} zurückgeben.",
     "Je voudrais retourner le {product}.", "Quisiera devolver el {product}."),
    ("The train to {city} is full this morning.", "Der Zug nach {city} ist heute Morgen voll.",
     "Le train pour {city} est complet ce matin.", "El tren a {city} está lleno esta mañana."),
    ("Our team finished the project {num_en} weeks early.", "Unser Team hat das Projekt {num_de} Wochen früher abgeschlossen.",
     "Notre équipe a terminé le projet {num_fr} semaines plus tôt.", "Nuestro equipo terminó el proyecto {num_es} semanas antes."),
    ("The weather in {city} was cold and windy.", "Das Wetter in {city} war kalt und windig.",
     "Le temps à {city} était froid et venteux.", "El tiempo en {city} fue frío y ventoso."),
    ("{name} forgot the keys at the hotel.", "{name} hat die Schlüssel im Hotel vergessen.",
     "{name} a oublié les clés à l'hôtel.", "{name} olvidó las llaves en el hotel."),
    ("{name} thinks this book is better than the film.", "{name} findet dieses Buch besser als den Film.",
     "{name} trouve ce livre meilleur que le film.", "A {name} le parece que este libro es mejor que la película."),
    ("{name} lost the receipt for the {product}.", "{name} hat die Quittung für den {product} verloren.",
     "{name} a perdu le ticket de caisse du {product}.", "{name} perdió el recibo del {product}."),
    ("The flight from {city} was cancelled on {weekday_en}.", "Der Flug aus {city} wurde am {weekday_de} gestrichen.",
     "Le vol de {city} a été annulé {weekday_fr}.", "El vuelo desde {city} se canceló el {weekday_es}."),
    ("{name} recommends the {product} to everyone.", "{name} empfiehlt den {product} allen.",
     "{name} recommande le {product} à tout le monde.", "{name} recomienda el {product} a todo el mundo."),
    ("We need {num_en} more chairs for the party in {city}.", "Wir brauchen {num_de} Stühle mehr für die Feier in {city}.",
     "Il nous faut {num_fr} chaises de plus pour la fête à {city}.", "Necesitamos {num_es} sillas más para la fiesta en {city}."),
    ("{name} is learning to cook with the {product}.", "{name} lernt, mit dem {product} zu kochen.",
     "{name} apprend à cuisiner avec le {product}.", "{name} está aprendiendo a cocinar con el {product}."),
    ("The hotel in {city} has {num_en} free rooms.", "Das Hotel in {city} hat {num_de} freie Zimmer.",
     "L'hôtel de {city} a {num_fr} chambres libres.", "El hotel de {city} tiene {num_es} habitaciones libres."),
    ("The new {product} is much quieter.", "Der neue {product} ist viel leiser.",
     "Le nouveau {product} est beaucoup plus silencieux.", "El nuevo {product} es mucho más silencioso."),
    ("We will meet {name} at the café near the river.", "Wir treffen {name} im Café am Fluss.",
     "Nous retrouverons {name} au café près de la rivière.", "Nos veremos con {name} en el café junto al río."),
    ("The library is closed for repairs until {weekday_en}.", "Die Bibliothek ist bis {weekday_de} wegen Reparaturen geschlossen.",
     "La bibliothèque est fermée pour travaux jusqu'à {weekday_fr}.", "La biblioteca está cerrada por obras hasta el {weekday_es}."),
    ("{name} bought {num_en} tickets for the concert.", "{name} hat {num_de} Karten für das Konzert gekauft.",
     "{name} a acheté {num_fr} billets pour le concert.", "{name} compró {num_es} entradas para el concierto."),
]
LANGS = ["German", "French", "Spanish"]
WEEKDAY_T = {"de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag".split(),
             "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche".split(),
             "es": "lunes martes miércoles jueves viernes sábado domingo".split()}
NUM_T = {"en": "two three four five six seven eight nine ten".split(),
         "de": "zwei drei vier fünf sechs sieben acht neun zehn".split(),
         "fr": "deux trois quatre cinq six sept huit neuf dix".split(),
         "es": "dos tres cuatro cinco seis siete ocho nueve diez".split()}
TRANSLATE_ASK = [
    "Translate the following text into {lang}.\n\n{src}",
    "Please translate this into {lang}:\n\n{src}",
    "{lang} translation, please:\n\n{src}",
    "How would you say this in {lang}?\n\n{src}",
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise, friendly assistant for {brand}.",
    "Answer clearly and politely. Keep replies short.",
    "You are an experienced support agent. Be kind and specific.",
]
FOLLOW_UPS = [
    ("Thanks. Can you make that a bit shorter?", "Of course. {short}"),
    ("Could you say that in one sentence?", "Sure: {short}"),
    ("Great, what is the single most important point?", "The most important point: {short}"),
]


# ============================================================================ row generator

_FIELDS: dict[str, list[str]] = {}
_A_VOWEL = re.compile(r"\ba ([aeiou])")
POOL_SIZE = 8000


class Gen:
    """Seeded generator of clean rows, PII values and look-alikes."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        rnd = self.r.random
        # random.choice and random.randint, three times faster (the bench makes ~30 picks a row)
        self.pick = lambda seq: seq[int(rnd() * len(seq))]
        self.ri = lambda lo, hi: lo + int(rnd() * (hi - lo + 1))
        # Sentence pools, filled once: a few thousand variants of each kind. {product}, {issue},
        # {topic} and {aspect} stay open and are set per row.
        keep = {k: "{" + k + "}" for k in ("product", "issue", "topic", "aspect")}
        self.generic_pool = [self.generic_sentence() for _ in range(POOL_SIZE)]
        # one list of variants per frame, so that a row never uses one frame twice
        per_frame = POOL_SIZE // len(SUPPORT_REPLY)
        self.support_pool = [[self.fill(f, **keep) for _ in range(per_frame)] for f in SUPPORT_REPLY]
        self.qa_pool = [[self.fill(f, **keep) for _ in range(POOL_SIZE // 4 // len(QA_SENT))] for f in QA_SENT]
        self.filler_pool = [self.fill(self.pick(EXTRACT_FILLER)) for _ in range(POOL_SIZE // 4)]

    # ---- slot fillers
    def product(self) -> str:
        return f"{self.pick(BRANDS)} {self.pick(ITEMS)}{self.pick(VARIANTS)}"

    def name(self) -> str:
        return self.pick(FIRST_NAMES)

    def fill(self, frame: str, **extra: str) -> str:
        """The frame with its slots filled: `extra` first, the rest at random."""
        fields = _FIELDS.get(frame)
        if fields is None:
            fields = _FIELDS[frame] = [f for _, f, _, _ in string.Formatter().parse(frame) if f]
        return frame.format(**{f: extra[f] if f in extra else self.SLOTS[f](self) for f in fields})

    SLOTS = {
        "product": product, "product2": product, "name": name,
        "part": lambda g: g.pick(PARTS), "city": lambda g: g.pick(CITIES), "group": lambda g: g.pick(GROUPS),
        "adj": lambda g: g.pick(ADJ), "noun": lambda g: g.pick(NOUNS), "noun2": lambda g: g.pick(NOUNS),
        "thing": lambda g: g.pick(THINGS), "colour": lambda g: g.pick(COLOURS),
        "weekday": lambda g: g.pick(WEEKDAYS), "brand": lambda g: g.pick(BRANDS),
        "n": lambda g: str(g.ri(2, 30)), "days": lambda g: str(g.ri(2, 40)),
    }

    def generic_sentence(self) -> str:
        p = self.pick
        form = int(self.r.random() * 5)
        if form == 0:
            subject = f"the {p(ADJ)} {p(NOUNS)}"
        elif form == 1:
            subject = f"a group of {p(ADJ)} {p(GROUPS)}"
        elif form == 2:
            subject = f"the {p(NOUNS)} in {p(CITIES)}"
        elif form == 3:
            subject = f"{p(NUMBER_WORDS)} {p(GROUPS)}"
        else:
            subject = f"the {p(GROUPS)} at the {p(NOUNS)}"
        form = int(self.r.random() * 3)
        obj = (f"the {p(THINGS)}", f"a {p(ADJ)} {p(THINGS)}", f"the {p(THINGS)} for the {p(NOUNS)}")[form]
        s = _A_VOWEL.sub(r"an \1", f"{subject} {p(VERBS)} {obj} {self.fill(p(TAILS))}.")
        return s[0].upper() + s[1:]

    def sentences(self, pool: list[Any], lo: int, hi: int, **slots: str) -> list[str]:
        """lo..hi different sentences from a pool (or one each from lo..hi of its frames), with the open slots set."""
        if isinstance(pool[0], list):
            out = [self.pick(variants) for variants in self.r.sample(pool, self.ri(lo, hi))]
        else:
            out = list(dict.fromkeys(self.pick(pool) for _ in range(self.ri(lo, hi))))
        for key, value in slots.items():
            out = [x.replace("{" + key + "}", value) for x in out]
        return out

    # ---- categories: each returns (instruction, response)
    def support(self) -> tuple[str, str]:
        r = self.r
        issue = self.fill(self.pick(ISSUES))
        product, name = self.product(), self.name()
        ask = self.fill(self.pick(SUPPORT_ASK), issue=issue, product=product, name=name)
        body = self.sentences(self.support_pool, 3, 6, product=product, issue=issue)
        greet = self.pick([f"Hi {name},", f"Dear {name},", "Hello,", f"Hello {name},"])
        close = self.pick(["Best wishes,", "Kind regards,", "Thanks,", "All the best,"])
        return ask, f"{greet}\n\n{' '.join(body)}\n\n{close}\n{self.pick(FIRST_NAMES)} at {self.pick(BRANDS)} support"

    def summary(self) -> tuple[str, str]:
        r = self.r
        passage = self.sentences(self.generic_pool, 3, 7)
        doc = self.pick(DOC_TYPES)
        ask = self.pick(SUMMARY_ASK).format(doc=doc, k=self.pick(["two", "three"]), passage=" ".join(passage))
        picked = r.sample(passage, min(2, len(passage)))
        out = []
        for s in picked:
            lead = self.pick(SUMMARY_LEAD).format(doc=doc)
            out.append(f"{lead} {s[0].lower()}{s[1:]}")
        return ask, " ".join(out)

    def qa(self) -> tuple[str, str]:
        r = self.r
        topic, aspect = self.pick(TOPICS), self.pick(ASPECTS)
        ask = self.pick(QA_ASK).format(topic=topic, aspect=aspect)
        parts = self.sentences(self.qa_pool, 1, 3, topic=topic, aspect=aspect)
        parts += self.sentences(self.generic_pool, 2, 5)
        r.shuffle(parts)
        return ask, " ".join(p[0].upper() + p[1:] for p in parts)

    def extract(self) -> tuple[str, str]:
        r = self.r
        name = f"{self.name()} {self.pick(SURNAMES)}"
        product, city = self.product(), self.pick(CITIES)
        qty = self.ri(1, 250)
        day = self.pick([f"{self.pick(WEEKDAYS)}", f"{self.pick(MONTHS)} {self.ri(1, 28)}",
                        f"next {self.pick(WEEKDAYS)}", f"the end of {self.pick(MONTHS)}"])
        text = self.fill(self.pick(EXTRACT_TEXT), name=name, product=product, city=city, qty=str(qty), day=day)
        extras = self.sentences(self.filler_pool, 1, 3)
        text = " ".join([text] + extras) if r.random() < 0.5 else " ".join(extras + [text])
        ask = self.pick(EXTRACT_ASK).format(text=text)
        answer = json.dumps({"customer": name, "product": product, "quantity": qty, "city": city, "delivery": day},
                            indent=self.pick([None, 2]))
        return ask, answer

    def code(self) -> tuple[str, str]:
        r = self.r
        verb, noun = self.pick(CODE_VERBS), self.pick(CODE_NOUNS)
        var = noun[:-3] + "y" if noun.endswith("ies") else noun[:-1]
        slots = {"verb": verb, "noun": noun, "arg": noun, "var": var,
                 "acc": self.pick(["result", "out", "kept", "groups", "found", "picked", "chosen", "selected",
                                   "matches", "buckets", "batch", "rows_out", "good", "valid"]),
                 "field": self.pick(CODE_FIELDS), "field2": self.pick(CODE_FIELDS), "lim": str(self.ri(2, 99))}
        shape, after = (CODE_LIST, CODE_AFTER_LIST) if r.random() < 0.6 else (CODE_DICT, CODE_AFTER_DICT)
        slots["seen"] = self.pick(["blocked", "skip", "known", "excluded"])
        loop = ("    for {var} in {arg}:", "It loops over every entry in {arg}, calling each one {var}.|"
                "It walks through {arg} one {var} at a time.|The loop visits each {var} in {arg}.")
        steps = [shape[:2], loop]
        steps += r.sample(CODE_FILTERS, self.ri(1, 2)) + [shape[2:]]
        steps += r.sample(after, self.ri(1, 2))
        fn = f"{verb}_{noun}"
        lines = [f"def {fn}({noun}, {self.pick(['limit', 'threshold', 'cutoff', 'size'])}={slots['lim']}):",
                 f'    """{verb.capitalize()} the {noun} for the {self.pick(ADJ)} {self.pick(THINGS)} report."""']
        lines += [s.format(**slots) for s, _ in steps] + [f"    return {slots['acc']}"]
        code = "\n".join(lines)
        expl = [self.pick([f"`{fn}` takes a collection of {noun} and returns {slots['acc']}.",
                           f"This function, `{fn}`, works through a list of {noun}.",
                           f"The helper `{fn}` builds {slots['acc']} from the {noun} it is given."])]
        expl += [self.pick(e.split("|")).format(**slots) for _, e in steps]
        expl += [self.fill(f) for f in r.sample(CODE_PURPOSE, self.ri(1, 2))]
        expl.append(self.pick([f"You might call it after loading {noun} from the {self.pick(NOUNS)} database.",
                              f"It is a typical helper in a {self.pick(ADJ)} reporting script.",
                              f"A test for it would pass in a few {noun} with different {slots['field']} values.",
                              "The function has no side effects apart from what it returns."]))
        ask = self.pick(CODE_ASK).format(code=code)
        return ask, " ".join(expl)

    def translate(self) -> tuple[str, str]:
        r = self.r
        lang = self.pick(LANGS)
        idx = {"German": 1, "French": 2, "Spanish": 3}[lang]
        code = {"German": "de", "French": "fr", "Spanish": "es"}[lang]
        src, dst = [], []
        for frame in r.sample(TRANSLATE, self.ri(3, 6)):
            w, k = r.randrange(7), r.randrange(9)
            slots = {"name": self.name(), "city": self.pick(CITIES), "product": self.product(),
                     "weekday_en": WEEKDAYS[w], f"weekday_{code}": WEEKDAY_T[code][w],
                     "num_en": NUM_T["en"][k], f"num_{code}": NUM_T[code][k]}
            src.append(frame[0].format(**slots))
            dst.append(frame[idx].format(**slots))
        ask = self.pick(TRANSLATE_ASK).format(lang=lang, src=" ".join(src))
        return ask, " ".join(dst)

    CATEGORIES = {"support": support, "summarisation": summary, "qa": qa, "extraction": extract,
                  "code_explanation": code, "translation": translate}
    WEIGHTS = {"support": 3, "summarisation": 2, "qa": 2, "extraction": 2, "code_explanation": 2, "translation": 1}

    def example(self) -> dict[str, Any]:
        """One clean example, as a row dict (instruction format or messages format)."""
        r = self.r
        for _ in range(20):
            category = self.pick(CATEGORY_DRAW)
            ask, answer = self.CATEGORIES[category](self)
            if 200 <= len(ask) + len(answer) <= 1000:
                break
        if r.random() < 0.8:
            return {"instruction": ask, "response": answer, "category": category}
        messages = []
        if r.random() < 0.4:
            messages.append({"role": "system", "content": self.fill(self.pick(SYSTEM_PROMPTS))})
        messages += [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
        if r.random() < 0.3:
            q, a = self.pick(FOLLOW_UPS)
            first = re.split(r"(?<=[.!?])\s", answer.strip())[0]
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a.format(short=first)}]
        row: dict[str, Any] = {"messages": messages}
        if r.random() < 0.5:
            row["category"] = category
        return row

    # ---- PII values: (type, format, value)
    def pii(self, pii_type: str) -> tuple[str, str]:
        return getattr(self, "pii_" + pii_type.lower())()

    def pii_email(self) -> tuple[str, str]:
        r = self.r
        first, last = self.pick(FIRST_NAMES).lower(), self.pick(SURNAMES).lower()
        fmt = self.pick(["personal", "company", "plus_tag", "country_tld", "mixed_case"])
        local = self.pick([f"{first}.{last}", f"{first}{last}{self.ri(1, 99)}", f"{first[0]}.{last}", f"{first}_{last}"])
        if fmt == "personal":
            domain = self.pick(["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me", "hotmail.com"])
        elif fmt == "company":
            domain = f"{self.pick(BRANDS).lower()}.{self.pick(['com', 'io', 'net', 'org'])}"
        elif fmt == "plus_tag":
            local, domain = f"{local}+{self.pick(['orders', 'news', 'shop', 'work'])}", "gmail.com"
        elif fmt == "country_tld":
            domain = self.pick(["web.de", "gmx.de", "orange.fr", "btinternet.com", "yahoo.co.uk",
                               f"mail.{self.pick(BRANDS).lower()}.co.uk", "libero.it", "telefonica.es"])
        else:
            local, domain = f"{first.capitalize()}.{last.capitalize()}", f"{self.pick(BRANDS)}.com"
        return fmt, f"{local}@{domain}"

    def pii_phone(self) -> tuple[str, str]:
        r = self.r
        for _ in range(50):
            fmt = self.pick(["us_paren", "us_dash", "us_dot", "us_plus1", "uk_intl_london", "uk_intl_mobile",
                            "de_intl_berlin", "de_intl_mobile", "de_intl_0", "fr_intl", "uk_national",
                            "e164_compact", "us_plain"])
            area = self.pick([212, 213, 305, 312, 415, 503, 512, 617, 646, 702, 713, 718, 808, 917,
                             206, 303, 404, 480, 602, 615, 720, 773, 818, 858, 919])
            ex, sub = self.ri(201, 989), self.ri(0, 9999)
            if ex in (555,) or ex % 100 == 11:
                continue
            if fmt == "us_paren":
                v, region = f"({area}) {ex}-{sub:04d}", "US"
            elif fmt == "us_dash":
                v, region = f"{area}-{ex}-{sub:04d}", "US"
            elif fmt == "us_dot":
                v, region = f"{area}.{ex}.{sub:04d}", "US"
            elif fmt == "us_plus1":
                v, region = f"+1 {area} {ex} {sub:04d}", "US"
            elif fmt == "uk_intl_london":
                v, region = f"+44 20 {self.ri(7000, 8999)} {self.ri(0, 9999):04d}", "GB"
            elif fmt == "uk_intl_mobile":
                v, region = f"+44 {self.pick(['7700', '7911', '7812', '7456', '7590'])} {self.ri(100000, 999999)}", "GB"
            elif fmt == "us_plain":
                v, region = f"{area}{ex}{sub:04d}", "US"
            elif fmt == "e164_compact":
                v, region = self.pick([(f"+4479{self.ri(10, 99)}{self.ri(100000, 999999)}", "GB"),
                                       (f"+4917{self.ri(0, 9)}{self.ri(1000000, 9999999)}", "DE"),
                                       (f"+1{area}{ex}{sub:04d}", "US")])
            elif fmt == "uk_national":
                v, region = f"020 {self.ri(7000, 8999)} {self.ri(0, 9999):04d}", "GB"
            elif fmt == "de_intl_berlin":
                v, region = f"+49 30 {self.ri(2000000, 99999999)}", "DE"
            elif fmt == "de_intl_mobile":
                v, region = f"+49 {self.pick(['151', '160', '170', '176', '157'])} {self.ri(1000000, 99999999)}", "DE"
            elif fmt == "de_intl_0":
                v, region = f"+49 (0)89 {self.ri(100, 999)} {self.ri(1000, 9999)}", "DE"
            else:
                v, region = f"+33 {self.pick(['1', '4', '6', '7'])} {' '.join(f'{self.ri(0, 99):02d}' for _ in range(4))}", "FR"
            if _valid_phone(v, region):
                return fmt, v
        raise RuntimeError("could not make a valid phone number")

    def pii_card(self) -> tuple[str, str]:
        r = self.r
        fmt = self.pick(["test_spaced", "visa_spaced", "visa_dashed", "mc_plain", "amex_4_6_5", "discover_spaced"])
        if fmt == "test_spaced":
            digits = self.pick(["4111111111111111", "5555555555554444", "4012888888881881", "5105105105105100",
                               "4242424242424242", "6011111111111117", "5200828282828210"])
        elif fmt.startswith("visa"):
            digits = _luhn_complete("4" + "".join(self.pick(string.digits) for _ in range(14)))
        elif fmt == "mc_plain":
            digits = _luhn_complete(str(self.ri(51, 55)) + "".join(self.pick(string.digits) for _ in range(13)))
        elif fmt == "amex_4_6_5":
            digits = _luhn_complete(self.pick(["34", "37"]) + "".join(self.pick(string.digits) for _ in range(12)))
            return fmt, f"{digits[:4]} {digits[4:10]} {digits[10:]}"
        else:
            digits = _luhn_complete("6011" + "".join(self.pick(string.digits) for _ in range(11)))
        if fmt == "mc_plain":
            return fmt, digits
        sep = "-" if fmt == "visa_dashed" else " "
        return fmt, sep.join(digits[i:i + 4] for i in range(0, 16, 4))

    def iban(self, country: str, valid: bool = True) -> str:
        r = self.r
        if country == "DE":
            bban = "".join(self.pick(string.digits) for _ in range(18))
        elif country == "GB":
            bban = self.pick(["NWBK", "BARC", "LOYD", "HBUK", "MIDL"]) + "".join(self.pick(string.digits) for _ in range(14))
        else:  # FR: bank 5, branch 5, account 11, RIB key 2
            bank, branch = f"{self.ri(10000, 99999)}", f"{self.ri(0, 99999):05d}"
            account = "".join(self.pick(string.digits) for _ in range(11))
            key = 97 - (89 * int(bank) + 15 * int(branch) + 3 * int(account)) % 97
            bban = f"{bank}{branch}{account}{key:02d}"
        check = 98 - _mod97(bban + country + "00")
        if not valid:
            check = (check + self.ri(1, 96)) % 97 or 1  # any other value fails mod-97
            check = max(check, 2)
        iban = f"{country}{check:02d}{bban}"
        return iban

    def pii_iban(self) -> tuple[str, str]:
        r = self.r
        country = self.pick(["DE", "GB", "FR"])
        iban = self.iban(country)
        if r.random() < 0.6:
            return f"{country.lower()}_grouped", " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
        return f"{country.lower()}_compact", iban

    def pii_ip(self) -> tuple[str, str]:
        r = self.r
        fmt = r.choices(["v4_public", "v4_private", "v6"], weights=[6, 2, 2])[0]
        if fmt == "v4_public":
            first = self.pick([23, 31, 45, 52, 62, 77, 81, 89, 91, 104, 137, 145, 151, 176, 185, 193, 203, 212, 217])
            return fmt, f"{first}.{self.ri(0, 255)}.{self.ri(0, 255)}.{self.ri(1, 254)}"
        if fmt == "v4_private":
            return fmt, self.pick([f"192.168.{self.ri(0, 255)}.{self.ri(2, 254)}",
                                  f"10.{self.ri(0, 255)}.{self.ri(0, 255)}.{self.ri(2, 254)}"])
        words = [f"{self.ri(0, 0xffff):x}" for _ in range(8)]
        words[0] = self.pick(["2001", "2a02", "2a01", "2600", "2604"])
        if r.random() < 0.5:
            return fmt, ":".join(words)
        return fmt, ":".join(words[:3]) + "::" + ":".join(words[6:])

    def pii_ssn(self) -> tuple[str, str]:
        r = self.r
        area = self.pick([a for a in range(1, 900) if a != 666])
        fmt = self.pick(["dashed", "dashed", "spaced"])
        sep = "-" if fmt == "dashed" else " "
        return fmt, f"{area:03d}{sep}{self.ri(1, 99):02d}{sep}{self.ri(1, 9999):04d}"

    def pii_api_key(self) -> tuple[str, str]:
        r = self.r
        fmt = self.pick(["aws", "github", "openai", "jwt"])
        alnum = string.ascii_letters + string.digits
        if fmt == "aws":
            return fmt, "AKIA" + "".join(self.pick(string.ascii_uppercase + string.digits) for _ in range(16))
        if fmt == "github":
            return fmt, "ghp_" + _mixed(r, alnum, 36)
        if fmt == "openai":
            return fmt, self.pick(["sk-", "sk-proj-"]) + _mixed(r, alnum, 48)
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")
        payload = json.dumps({"sub": str(self.ri(10 ** 6, 10 ** 7)), "name": f"{self.name()} {self.pick(SURNAMES)}",
                              "iat": self.ri(1_600_000_000, 1_750_000_000)}).encode()
        sig = bytes(r.randrange(256) for _ in range(32))
        header = b64(b'{"alg":"HS256","typ":"JWT"}')
        return fmt, f"{header}.{b64(payload)}.{b64(sig)}"

    def pii_url_credentials(self) -> tuple[str, str]:
        r = self.r
        fmt = self.pick(["https", "postgres", "mongodb", "ftp"])
        user = self.pick([self.pick(FIRST_NAMES).lower(), "admin", "deploy", "svc_backup", "root"])
        password = _mixed(r, string.ascii_letters + string.digits, self.ri(8, 16)) + self.pick(["", "!", "#9", "_x"])
        host = ".".join([self.pick(["db", "files", "api", "git", "backup"]), self.pick(BRANDS).lower(),
                         self.pick(["com", "io", "net", "internal"])])
        if fmt == "https":
            return fmt, f"https://{user}:{password}@{host}/{self.pick(CODE_NOUNS)}/{self.pick(CODE_VERBS)}"
        if fmt == "postgres":
            return fmt, f"postgres://{user}:{password}@{host}:5432/{self.pick(CODE_NOUNS)}"
        if fmt == "mongodb":
            return fmt, f"mongodb://{user}:{password}@{host}:27017/{self.pick(CODE_NOUNS)}?authSource=admin"
        return fmt, f"ftp://{user}:{password}@{host}/uploads/"

    # ---- look-alikes: (kind, value); none of them is PII
    def lookalike(self) -> tuple[str, str]:
        r = self.r
        kind = self.pick(LOOKALIKE_KINDS)
        hexd = "0123456789abcdef"
        if kind == "semver":
            v = f"{self.ri(1, 9)}.{self.ri(0, 30)}.{self.ri(0, 40)}"
        elif kind == "windows_build":
            v = self.pick([f"v10.0.{self.pick([19041, 19044, 19045, 22000, 22621, 22631])}",
                          f"10.0.{self.pick([19045, 22631])}.{self.ri(1000, 4999)}"])
        elif kind == "date_iso":
            v = f"20{self.ri(10, 29)}-{self.ri(1, 12):02d}-{self.ri(1, 28):02d}"
        elif kind == "datetime_iso":
            v = (f"20{self.ri(10, 29)}-{self.ri(1, 12):02d}-{self.ri(1, 28):02d}"
                 f"T{self.ri(0, 23):02d}:{self.ri(0, 59):02d}:{self.ri(0, 59):02d}Z")
        elif kind == "time":
            v = f"{self.ri(0, 23):02d}:{self.ri(0, 59):02d}:{self.ri(0, 59):02d}"
        elif kind == "order_16_digits":
            while True:
                d = str(self.pick([4, 5, 6])) + "".join(self.pick(string.digits) for _ in range(15))
                if not _luhn_ok(d):
                    break
            v = self.pick([d, " ".join(d[i:i + 4] for i in range(0, 16, 4))])
        elif kind == "iban_bad_checksum":
            iban = self.iban(self.pick(["DE", "GB", "FR"]), valid=False)
            v = self.pick([iban, " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))])
        elif kind == "ssn_invalid":
            v = self.pick([f"000-{self.ri(10, 99)}-{self.ri(1000, 9999)}", f"666-{self.ri(10, 99)}-{self.ri(1000, 9999)}",
                          f"9{self.ri(0, 99):02d}-{self.ri(10, 99)}-{self.ri(1000, 9999)}",
                          f"{self.ri(100, 665)}-00-{self.ri(1000, 9999)}", f"{self.ri(100, 665)}-{self.ri(10, 99)}-0000"])
        elif kind == "price":
            v = self.pick([f"${self.ri(1, 9)},{self.ri(0, 999):03d}.{self.ri(0, 99):02d}",
                          f"£{self.ri(10, 999)}.{self.ri(0, 99):02d}",
                          f"€{self.ri(1, 9)}.{self.ri(0, 999):03d},{self.ri(0, 99):02d}",
                          f"USD {self.ri(100, 99999)}.00"])
        elif kind == "git_sha":
            v = "".join(self.pick(hexd) for _ in range(self.pick([7, 12, 40])))
        elif kind == "uuid":
            v = str(uuid.UUID(int=r.getrandbits(128), version=4))
        elif kind == "isbn":
            body = "978" + "".join(self.pick(string.digits) for _ in range(9))
            check = (10 - sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body)) % 10) % 10
            v = f"{body[:3]}-{body[3]}-{body[4:7]}-{body[7:12]}-{check}"
        elif kind == "coordinates":
            v = f"{r.uniform(-60, 70):.4f}, {r.uniform(-170, 170):.4f}"
        elif kind == "localhost_port":
            v = self.pick(["127.0.0.1", "0.0.0.0", "localhost"]) + f":{self.pick([3000, 5000, 8000, 8080, 8443])}"
        elif kind == "phone_shaped_order_no":
            v = f"{self.ri(200, 999)}{self.ri(2, 9)}{self.ri(0, 99):02d}{self.ri(0, 9999):04d}"  # NXX-NXX-XXXX
        elif kind == "hex_colour":
            v = "#" + "".join(self.pick(hexd) for _ in range(6))
        elif kind == "version_4part":
            v = f"{self.ri(1, 9)}.{self.ri(0, 20)}.{self.ri(0, 9)}.{self.ri(1, 200)}"
        elif kind == "unix_timestamp":
            v = str(self.ri(1_500_000_000, 1_800_000_000))
        elif kind == "date_slash":
            v = f"{self.ri(1, 28):02d}/{self.ri(1, 12):02d}/20{self.ri(10, 29)}"
        elif kind == "ean13_barcode":
            body = self.pick(["400", "401", "500", "690", "870"]) + "".join(str(self.ri(0, 9)) for _ in range(9))
            check = (10 - sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body)) % 10) % 10
            v = body + str(check)
        else:  # big_count
            v = f"{self.ri(1, 99)},{self.ri(0, 999):03d},{self.ri(0, 999):03d}"
        return kind, v


CATEGORY_DRAW = [c for c, w in Gen.WEIGHTS.items() for _ in range(w)]
LOOKALIKE_KINDS = ["semver", "windows_build", "date_iso", "datetime_iso", "time", "order_16_digits",
                   "iban_bad_checksum", "ssn_invalid", "price", "git_sha", "uuid", "isbn", "coordinates",
                   "localhost_port", "phone_shaped_order_no", "hex_colour", "big_count", "version_4part",
                   "unix_timestamp", "date_slash", "ean13_barcode"]

PII_CONTEXT = {
    "EMAIL": ["You can reach me at {v} if anything is unclear.", "Please send the invoice to {v}.",
              "My email address is {v}.", "I have copied {v} on this thread."],
    "PHONE": ["You can call me on {v} after five.", "My number is {v}.", "Please ring {v} to arrange the visit.",
              "Our office line is {v}."],
    "CARD": ["The card I used was {v}.", "Please refund it to card {v}.", "I paid with {v}, expiry next year.",
             "Please charge this card instead: {v}."],
    "IBAN": ["Please transfer the refund to {v}.", "My IBAN is {v}.", "Our bank account is {v}, in the company name.",
             "Send the deposit to IBAN {v}."],
    "IP": ["The requests came from {v} overnight.", "My router shows the address {v}.",
           "The server at {v} stopped responding.", "Logins from {v} were blocked."],
    "SSN": ["My social security number is {v}.", "For the tax form, the SSN is {v}.",
            "The employee's SSN is {v}, please update the record."],
    "API_KEY": ["Here is the key I am using: {v}", "I set the token to {v} in the config file.",
                "The service returns 401 with the key {v}.", "Our CI uses {v} for the deploy step."],
    "URL_CREDENTIALS": ["The app connects to {v} on startup.", "I cloned it from {v} this morning.",
                        "The config file points at {v}.", "Backups are uploaded to {v} every night."],
}
LOOKALIKE_CONTEXT = {
    "semver": ["After updating to {v} the app crashes on start.", "This was fixed in release {v}.", "We pinned the library at {v}."],
    "windows_build": ["The laptop runs Windows {v}.", "It started after the {v} update.", "Tested on Windows {v} only."],
    "date_iso": ["The invoice is dated {v}.", "The contract ends on {v}.", "Please deliver before {v}."],
    "datetime_iso": ["The log entry at {v} shows the error.", "The job last ran at {v}."],
    "time": ["The backup finished at {v}.", "The alarm went off at {v} exactly.", "Lap time was {v}."],
    "order_16_digits": ["My order number is {v}.", "The tracking code is {v}.", "Reference {v} appears on the receipt."],
    "iban_bad_checksum": ["The form rejected the account {v} as invalid.", "Is {v} a valid format for a bank account?"],
    "ssn_invalid": ["The sample record uses the dummy value {v}.", "The test data has {v} in the SSN column, which is never issued."],
    "price": ["The price went up to {v} this month.", "It costs {v} including delivery.", "The quote came to {v}."],
    "git_sha": ["The bug was introduced in commit {v}.", "Please cherry-pick {v} onto the release branch."],
    "uuid": ["The request id was {v}.", "Look for the record with id {v}.", "Session {v} expired early."],
    "isbn": ["The textbook's ISBN is {v}.", "Order the second edition, ISBN {v}."],
    "coordinates": ["The meeting point is at {v}.", "The sensor is installed at {v}."],
    "localhost_port": ["The dev server listens on {v}.", "Open {v} in your browser to see it."],
    "phone_shaped_order_no": ["My order #{v} has not arrived.", "Invoice no. {v} is still unpaid.",
                              "Ticket {v} was closed without an answer.".replace("Ticket {v}", "Ticket #{v}")],
    "hex_colour": ["The button colour is {v}.", "Use {v} for the header background."],
    "big_count": ["The video has {v} views.", "The library lends {v} books a year."],
    "version_4part": ["We run version {v} of the agent.", "Upgrade the firmware to version {v} first."],
    "unix_timestamp": ["The event has the timestamp {v} in the log.", "The created_at field is {v}."],
    "date_slash": ["The letter is dated {v}.", "The warranty ran out on {v}."],
    "ean13_barcode": ["The barcode on the box reads {v}.", "Scan EAN {v} at the till."],
}


def _mixed(r: random.Random, alphabet: str, n: int) -> str:
    """Random token with at least one digit, one upper and one lower case letter."""
    while True:
        s = "".join(r.choice(alphabet) for _ in range(n))
        if any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s):
            return s


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _luhn_complete(prefix: str) -> str:
    for last in string.digits:
        if _luhn_ok(prefix + last):
            return prefix + last
    raise AssertionError


def _mod97(s: str) -> int:
    return int("".join(str(int(c, 36)) for c in s)) % 97


_phone_lib: Any = None


def _valid_phone(value: str, region: str) -> bool:
    """Ground truth only: the planted numbers must be real, valid numbers (libphonenumber)."""
    global _phone_lib
    if _phone_lib is None:
        try:
            import phonenumbers
            _phone_lib = phonenumbers
        except ImportError:
            _phone_lib = False
    if not _phone_lib:
        return True
    try:
        return _phone_lib.is_valid_number(_phone_lib.parse(value, region))
    except _phone_lib.NumberParseException:
        return False


# ============================================================================ text helpers

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`\u00b4]")
_WORD = re.compile(r"\w+")


def messages_of(row: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]


def conv_text(messages: list[dict[str, str]]) -> str:
    """What duplicates are judged on, as the cleaner does: user and assistant turns with roles
    (a system prompt shared by many rows would make them look alike)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")


def all_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def shingle_set(text: str, size: int = 3) -> set[str]:
    words = _WORD.findall(_APOSTROPHES.sub("", text.casefold()))
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / max(1, len(sa | sb))


def with_messages(row: dict[str, Any], messages: list[dict[str, str]]) -> dict[str, Any]:
    """The row in its own format with new message contents."""
    if "messages" in row:
        return {**row, "messages": messages}
    return {**row, "instruction": messages[0]["content"], "response": messages[1]["content"]}


def insert_sentence(text: str, sentence: str, r: random.Random) -> str:
    """Put `sentence` at a sentence boundary of a prose paragraph of `text` (not in code,
    JSON or a greeting line); at the end when there is none."""
    paragraphs = text.split("\n\n")
    prose = [i for i, p in enumerate(paragraphs) if len(p) >= 40 and not p.lstrip().startswith(("def ", "{"))]
    if not prose:
        return text + " " + sentence
    i = r.choice(prose)
    parts = re.split(r"(?<=[.!?])\s+", paragraphs[i])
    parts.insert(r.randint(0, len(parts)), sentence)
    paragraphs[i] = " ".join(parts)
    return "\n\n".join(paragraphs)


def plant_value(gen: Gen, row: dict[str, Any], sentence: str) -> dict[str, Any]:
    r = gen.r
    messages = [dict(m) for m in messages_of(row)]
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    assistants = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    i = r.choice(users) if r.random() < 0.7 else r.choice(assistants)
    messages[i]["content"] = insert_sentence(messages[i]["content"], sentence, r)
    return with_messages(row, messages)


# ---- exact and near duplicates

def exact_copy(gen: Gen, row: dict[str, Any], protect: str | None = None) -> tuple[str, dict[str, Any]]:
    """A copy that is the same text after casefolding and collapsing whitespace; a planted
    value (`protect`) keeps its case, since a lowercased key or IBAN is no longer one."""
    r = gen.r
    kind = r.choices(["verbatim", "whitespace", "case", "reformatted"], weights=[5, 2, 2, 1])[0]
    messages = [dict(m) for m in messages_of(row)]
    if kind == "whitespace":
        for m in messages:
            c = m["content"]
            c = r.choice([c + " ", "  " + c, c.replace(". ", ".  ", 2), c.replace(" ", "\t", 1), c + "\n"])
            m["content"] = c
    elif kind == "case":
        change = r.choice([str.lower, str.upper, str.swapcase])
        for m in messages:
            parts = m["content"].split(protect) if protect else [m["content"]]
            m["content"] = (protect or "").join(change(p) for p in parts)
    elif kind == "reformatted":
        if "messages" in row and [m["role"] for m in messages] == ["user", "assistant"]:
            out = {"instruction": messages[0]["content"], "response": messages[1]["content"]}
        elif "messages" in row:
            out = {"messages": messages}
            out.update({k: v for k, v in row.items() if k != "messages"})  # key order changed
            return kind, out
        else:
            out = {"messages": messages}
        if "category" in row:
            out["category"] = row["category"]
        return kind, out
    return kind, with_messages(row, messages)


VOCAB = sorted(set(ADJ + NOUNS + GROUPS + VERBS + CITIES + COLOURS + [w for t in THINGS for w in t.split()]))
SENTINEL = "\u2063PII\u2063"


def near_copy(gen: Gen, row: dict[str, Any], protect: str | None) -> tuple[dict[str, Any], float, int] | None:
    """A near-duplicate of `row`: word and cosmetic edits, Jaccard >= NEAR_MIN_JACCARD, not exact."""
    r = gen.r
    source = messages_of(row)
    src_text = conv_text(source)
    from_norm = " ".join(src_text.casefold().split())
    for word_edits in (r.choice([1, 2, 2, 3, 3, 4, 5]), 2, 1):
        messages = [dict(m) for m in source]
        weights = [0 if m["role"] == "system" else len(m["content"]) for m in messages]
        for _ in range(word_edits):
            _edit(r, messages, weights, protect, cosmetic=False)
        for _ in range(r.randint(0, 3)):
            _edit(r, messages, weights, protect, cosmetic=True)
        text = conv_text(messages)
        if " ".join(text.casefold().split()) == from_norm:
            continue
        sim = jaccard(src_text, text)
        if NEAR_MIN_JACCARD <= sim < 1.0:
            return with_messages(row, messages), sim, word_edits
    return None


def _edit(r: random.Random, messages: list[dict[str, str]], weights: list[int], protect: str | None,
          cosmetic: bool) -> None:
    i = r.choices(range(len(messages)), weights=weights)[0]
    content = messages[i]["content"]
    if protect and protect in content:
        content = content.replace(protect, SENTINEL)
    tokens = content.split(" ")
    j = r.randrange(len(tokens))
    if SENTINEL in tokens[j] or (j + 1 < len(tokens) and SENTINEL in tokens[j + 1]) or not tokens[j].strip():
        return
    if cosmetic:
        op = r.choice(["punct_add", "punct_drop", "case"])
        if op == "punct_add":
            tokens[j] += r.choice([",", ";", " -", "!"])
        elif op == "punct_drop" and tokens[j][-1:] in ".,!?;:":
            tokens[j] = tokens[j][:-1]
        else:
            tokens[j] = tokens[j].upper() if r.random() < 0.3 else tokens[j].capitalize()
    else:
        op = r.choice(["swap", "drop", "replace", "insert"])
        if op == "swap" and j + 1 < len(tokens):
            tokens[j], tokens[j + 1] = tokens[j + 1], tokens[j]
        elif op == "drop" and len(tokens) > 3:
            del tokens[j]
        elif op == "insert":
            tokens.insert(j, r.choice(VOCAB))
        else:
            trail = re.search(r"[^\w]*$", tokens[j]).group()
            tokens[j] = r.choice(VOCAB) + trail
    content = " ".join(tokens)
    if protect:
        content = content.replace(SENTINEL, protect)
    messages[i]["content"] = content


# ---- the file

def generate(n: int, seed: int) -> tuple[list[str], dict[str, Any]]:
    """`n` JSONL lines and the labels, keyed by 1-based line number."""
    gen = Gen(seed)
    r = gen.r
    rows: list[dict[str, Any]] = []
    labels: dict[str, Any] = {"exact": {}, "near": {}, "pii": {}, "lookalike": {}}
    base: list[int] = []  # 0-based indexes of rows that are not copies
    plain: list[int] = []  # ... of those, rows with nothing planted
    plain_set: set[int] = set()
    pii_types = list(PII_TYPES)
    kinds = list(SHARES)
    edges = [sum(list(SHARES.values())[:i + 1]) for i in range(len(SHARES))]
    for idx in range(n):
        line = idx + 1
        x = r.random()
        kind = next((k for k, edge in zip(kinds, edges) if x < edge), "clean") if len(base) >= 20 else "clean"
        if kind in ("exact", "near"):
            src = r.choice(base)
            if src not in plain_set and r.random() < 0.7:
                src = r.choice(plain)
            protect = None
            if src + 1 in labels["pii"]:
                protect = labels["pii"][src + 1][0]["value"]
            elif src + 1 in labels["lookalike"]:
                protect = labels["lookalike"][src + 1][0]["value"]
            if kind == "exact":
                sub, row = exact_copy(gen, rows[src], protect)
                labels["exact"][line] = {"of": src + 1, "kind": sub}
            else:
                made = near_copy(gen, rows[src], protect)
                if made is None:
                    kind = "clean"
                else:
                    row, sim, edits = made
                    labels["near"][line] = {"of": src + 1, "similarity": round(sim, 3), "edits": edits}
            if kind != "clean":
                for key in ("pii", "lookalike"):  # a copy carries what its source carries
                    if src + 1 in labels[key]:
                        labels[key][line] = labels[key][src + 1]
                rows.append(row)
                continue
        row = gen.example()
        if kind == "pii":
            pii_type = pii_types[idx % len(pii_types)] if r.random() < 0.5 else r.choice(pii_types)
            fmt, value = gen.pii(pii_type)
            row = plant_value(gen, row, r.choice(PII_CONTEXT[pii_type]).format(v=value))
            labels["pii"][line] = [{"type": pii_type, "format": fmt, "value": value}]
        elif kind == "lookalike":
            lk, value = gen.lookalike()
            row = plant_value(gen, row, r.choice(LOOKALIKE_CONTEXT[lk]).format(v=value))
            labels["lookalike"][line] = [{"kind": lk, "value": value}]
        else:
            plain.append(idx)
            plain_set.add(idx)
        base.append(idx)
        rows.append(row)
    encode = json.JSONEncoder(ensure_ascii=False).encode
    lines = [encode(row) for row in rows]
    return lines, labels


# ============================================================================ run the cleaner

def rss_kb(pid: int) -> int:
    """RSS of a process and its descendants, in kB (0 when it is gone)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        total += int(ln.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run_clean(data: Path, out: Path, extra: list[str], log_path: Path) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("tunesmith")
    cmd = [str(exe) if exe.exists() else "tunesmith", "data", "clean", str(data), "--out", str(out), *extra]
    log("running:", " ".join(shlex.quote(c) for c in cmd))
    samples: list[tuple[float, int]] = []
    with open(log_path, "wb") as logf:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                kb = rss_kb(proc.pid)
                if kb:
                    samples.append((time.perf_counter() - start, kb))
                done.wait(0.2)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        rc = proc.wait()
        seconds = time.perf_counter() - start
        done.set()
        t.join()
    output = log_path.read_text(errors="replace")
    for ln in output.splitlines()[-15:]:
        log("  |", ln)
    peak = max((kb for _, kb in samples), default=0)
    profile: dict[str, float] = {}
    for frac in (0.1, 0.25, 0.5, 0.75, 0.9):
        at = [kb for ts, kb in samples if ts <= frac * seconds]
        profile[f"{int(frac * 100)}%"] = round(at[-1] / 1024, 1) if at else None
    profile["peak"] = round(peak / 1024, 1)
    return {"rc": rc, "seconds": seconds, "peak_rss_mb": round(peak / 1024, 1), "rss_profile_mb": profile,
            "rss_samples": len(samples), "output_tail": output[-3000:]}


# ============================================================================ scoring

def _pr(tp: int, fp: int, fn: int) -> dict[str, Any]:
    return {"precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None, "tp": tp, "fp": fp, "fn": fn}


def _codes(reasons: list[str]) -> set[str]:
    return {x.split(":", 1)[0] for x in reasons}


def _short(text: str, around: str | None = None, width: int = 160) -> str:
    if around and around in text:
        i = text.index(around)
        text = text[max(0, i - width // 2): i + len(around) + width // 2]
    return text[:width * 2]


def score(lines: list[str], labels: dict[str, Any], out: Path) -> dict[str, Any]:
    kept = {row["line"]: row for row in map(json.loads, (out / "clean.jsonl").read_text().splitlines()) if row}
    removed = {row["line"]: row for row in map(json.loads, (out / "removed.jsonl").read_text().splitlines()) if row}
    report = json.loads((out / "report.json").read_text())
    n = len(lines)
    both = set(kept) & set(removed)
    missing = [ln for ln in range(1, n + 1) if ln not in kept and ln not in removed]

    # ---- duplicates
    exact_l, near_l = labels["exact"], labels["near"]
    planted = set(exact_l) | set(near_l)
    by_code: dict[str, set[int]] = {"duplicate": set(), "near_duplicate": set(), "semantic_duplicate": set()}
    for ln, row in removed.items():
        for code in _codes(row["reasons"]) & set(by_code):
            by_code[code].add(ln)
    any_dup = set().union(*by_code.values())
    dedup: dict[str, Any] = {}
    for name, truth, code in (("exact", set(exact_l), "duplicate"), ("near", set(near_l), "near_duplicate")):
        flagged = by_code[code]
        # precision: rows removed with this code that were planted as any kind of copy;
        # recall: rows planted as this kind that were removed as any kind of duplicate
        prec_tp = len(flagged & planted)
        found = truth & any_dup
        dedup[name] = {
            "precision": round(prec_tp / len(flagged), 4) if flagged else None,
            "recall": round(len(found) / len(truth), 4) if truth else None,
            "removed_with_code": len(flagged), "false_positives": len(flagged - planted),
            "planted": len(truth), "found": len(found), "found_with_this_code": len(truth & flagged),
        }
    comb_tp = len(any_dup & planted)
    dedup["combined"] = _pr(comb_tp, len(any_dup - planted), len(planted - any_dup))
    by_sub: dict[str, Counter] = defaultdict(Counter)
    for ln, lab in exact_l.items():
        by_sub[lab["kind"]]["planted"] += 1
        by_sub[lab["kind"]]["found"] += ln in any_dup
    dedup["exact"]["by_kind"] = {k: dict(v) for k, v in sorted(by_sub.items())}
    sims = sorted(lab["similarity"] for lab in near_l.values())
    missed_near = sorted(set(near_l) - any_dup)
    buckets: dict[str, Counter] = defaultdict(Counter)
    for ln, lab in near_l.items():
        b = "0.75-0.80" if lab["similarity"] < 0.8 else "0.80-0.90" if lab["similarity"] < 0.9 else "0.90-1.00"
        buckets[b]["planted"] += 1
        buckets[b]["found"] += ln in any_dup
    dedup["near"]["planted_similarity"] = {"min": sims[0] if sims else None, "median": sims[len(sims) // 2] if sims else None}
    dedup["near"]["by_similarity"] = {k: dict(v) for k, v in sorted(buckets.items())}
    # removed copies that name another line than the planted source
    root = {ln: lab["of"] for ln, lab in {**exact_l, **near_l}.items()}
    wrong_source = 0
    for ln in any_dup & planted:
        m = re.search(r"line (\d+)", " ".join(removed[ln]["reasons"]))
        if m and int(m.group(1)) != root[ln] and root.get(int(m.group(1))) != root[ln]:
            wrong_source += 1
    dedup["combined"]["named_other_source"] = wrong_source
    examples: dict[str, list] = {"false_positive": [], "missed_exact": [], "missed_near": []}
    for ln in sorted(any_dup - planted)[:5]:
        m = re.search(r"line (\d+)", " ".join(removed[ln]["reasons"]))
        other = int(m.group(1)) if m else None
        sim = jaccard(conv_text(messages_of(json.loads(lines[ln - 1]))),
                      conv_text(messages_of(json.loads(lines[other - 1])))) if other else None
        examples["false_positive"].append({"line": ln, "reasons": removed[ln]["reasons"], "bench_jaccard": sim,
                                           "row": lines[ln - 1][:300], "other": lines[other - 1][:300] if other else None})
    for ln in sorted(set(exact_l) - any_dup)[:3]:
        examples["missed_exact"].append({"line": ln, **exact_l[ln], "row": lines[ln - 1][:300],
                                         "source": lines[exact_l[ln]["of"] - 1][:300],
                                         "status": removed[ln]["reasons"] if ln in removed else "kept"})
    for ln in missed_near[:3]:
        examples["missed_near"].append({"line": ln, **near_l[ln], "status": removed[ln]["reasons"] if ln in removed else "kept",
                                        "row": lines[ln - 1][:300], "source": lines[near_l[ln]["of"] - 1][:300]})
    dedup["examples"] = examples

    # ---- PII
    def types_of(ln: int) -> Counter | None:
        """PII types the cleaner found in a line; None when the row was removed for another reason."""
        if ln in kept:
            found = Counter(kept[ln].get("redacted") or {})
            for w in kept[ln].get("warnings") or []:  # --pii report: found, only counted
                if w.startswith("pii:"):
                    found.update(t for t in PII_TYPES if re.search(rf"\b{t}\b", w))
            return found
        reasons = removed[ln]["reasons"] if ln in removed else []
        pii = [x for x in reasons if x.startswith("pii:")]
        if pii:
            return Counter(t for x in pii for t in PII_TYPES if re.search(rf"\b{t}\b", x))
        return None

    per_type = {t: Counter() for t in PII_TYPES}
    per_format: dict[str, Counter] = defaultdict(Counter)
    unscored = 0
    misses: dict[str, list] = defaultdict(list)
    leaks: list[dict[str, Any]] = []
    wrong_type: Counter = Counter()
    for ln, values in labels["pii"].items():
        found = types_of(ln)
        if found is None:
            unscored += 1
            continue
        for v in values:
            t = v["type"]
            hit = found.get(t, 0) > 0
            per_type[t]["tp" if hit else "fn"] += 1
            per_format[f"{t}/{v['format']}"]["planted"] += 1
            per_format[f"{t}/{v['format']}"]["found"] += hit
            if not hit:
                for other in found:
                    wrong_type[f"{t} found as {other}"] += 1
                if len(misses[t]) < 4:
                    misses[t].append({"line": ln, "format": v["format"], "value": v["value"],
                                      "cleaner_types": dict(found),
                                      "context": _short(lines[ln - 1], json.dumps(v["value"])[1:-1])})
            elif ln in kept:  # redacted: is any piece of the value still in the text?
                text = all_text(kept[ln]["messages"])
                pieces = [p for p in re.split(r"[^A-Za-z0-9]+", v["value"]) if len(p) >= 4 and any(c.isdigit() for c in p)]
                if t == "EMAIL":
                    pieces = [v["value"]]
                if t == "URL_CREDENTIALS":
                    pieces = [v["value"].split("://", 1)[1].split("@", 1)[0]]
                left = [p for p in pieces if p in text]
                if left:
                    per_type[t]["partial"] += 1
                    if len(leaks) < 10:
                        leaks.append({"line": ln, "type": t, "format": v["format"], "value": v["value"], "left_in_text": left,
                                      "redacted_text": _short(text, left[0])})
        for t, cnt in found.items():
            if t not in {v["type"] for v in values}:
                per_type.setdefault(t, Counter())["fp"] += 1
    # false positives: look-alike rows and unplanted rows with any redaction
    lookalike_fp: dict[str, Any] = {}
    lk_total: Counter = Counter()
    for ln, values in labels["lookalike"].items():
        kind = values[0]["kind"]
        found = types_of(ln)
        if found is None:
            continue
        lk_total[kind] += 1
        if found:
            entry = lookalike_fp.setdefault(kind, {"flagged": 0, "as": Counter(), "example": None})
            entry["flagged"] += 1
            entry["as"].update(found)
            for t in found:
                per_type.setdefault(t, Counter())["fp"] += 1
            if entry["example"] is None:
                entry["example"] = {"line": ln, "value": values[0]["value"], "cleaner_types": dict(found),
                                    "input": _short(lines[ln - 1], values[0]["value"]),
                                    "redacted": _short(all_text(kept[ln]["messages"]), "<") if ln in kept else None}
    for entry in lookalike_fp.values():
        entry["as"] = dict(entry["as"])
    other_fp: Counter = Counter()
    other_examples: list[dict[str, Any]] = []
    for ln, row in kept.items():
        if ln in labels["pii"] or ln in labels["lookalike"] or not row.get("redacted"):
            continue
        other_fp.update(row["redacted"])
        for t in row["redacted"]:
            per_type.setdefault(t, Counter())["fp"] += 1
        if len(other_examples) < 5:
            other_examples.append({"line": ln, "redacted": row["redacted"],
                                   "redacted_text": _short(all_text(row["messages"]), "<"),
                                   "input": lines[ln - 1][:400]})
    tp = sum(c["tp"] for c in per_type.values())
    fp = sum(c["fp"] for c in per_type.values())
    fn = sum(c["fn"] for c in per_type.values())
    pii = {
        "per_type": {t: {**_pr(c["tp"], c["fp"], c["fn"]), "partially_redacted": c["partial"]} for t, c in per_type.items()},
        "overall": _pr(tp, fp, fn),
        "per_format": {k: {**dict(v), "recall": round(v["found"] / v["planted"], 3)} for k, v in sorted(per_format.items())},
        "planted_rows": len(labels["pii"]),
        "unscored_removed_for_other_reasons": unscored,
        "found_as_wrong_type": dict(wrong_type),
        "missed_examples": dict(misses),
        "partial_redaction_examples": leaks,
        "lookalike_false_positives": {
            "rows": sum(lk_total.values()),
            "flagged": sum(e["flagged"] for e in lookalike_fp.values()),
            "by_kind": {k: {"rows": lk_total[k], **lookalike_fp[k]} for k in sorted(lookalike_fp)},
            "kinds_never_flagged": sorted(set(lk_total) - set(lookalike_fp)),
        },
        "unplanted_rows_redacted": {"rows": sum(1 for ln, r in kept.items() if r.get("redacted")
                                                and ln not in labels["pii"] and ln not in labels["lookalike"]),
                                    "types": dict(other_fp), "examples": other_examples},
    }
    other_removed = Counter()
    for ln, row in removed.items():
        codes = _codes(row["reasons"]) - set(by_code) - {"pii"}
        other_removed.update(codes)
    return {
        "accounting": {"input_lines": n, "kept": len(kept), "removed": len(removed),
                       "missing_lines": len(missing), "in_both": len(both),
                       "missing_examples": missing[:10]},
        "dedup": dedup,
        "pii": pii,
        "other_removal_codes": dict(other_removed),
        "clean_report": {k: report.get(k) for k in ("input_rows", "kept", "removed", "reasons", "warnings", "fixes",
                                                    "pii", "duplicates", "seconds", "blocking")},
    }


# ============================================================================ main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=Path, default=None, help="write data and cleaner output here and keep them")
    p.add_argument("--extra", default="", help='arguments for `tunesmith data clean`, e.g. --extra="--model '
                   'smollm2-135m-instruct" (with "=", since the value starts with a dash); '
                   'arguments after a bare -- are passed on too')
    p.add_argument("--generate-only", action="store_true", help="write the data and labels, do not run the cleaner")
    argv = sys.argv[1:] if argv is None else argv
    passed = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    extra = shlex.split(args.extra) + passed
    args.extra = shlex.join(extra)

    work = args.keep or Path(tempfile.mkdtemp(prefix="data_check_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        lines, labels = generate(args.rows, args.seed)
        data = work / "train.jsonl"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        gen_s = time.perf_counter() - t0
        counts = {k: len(v) for k, v in labels.items()}
        log(f"generated {len(lines)} rows in {gen_s:.1f}s -> {data} ({data.stat().st_size / 1e6:.1f} MB); planted {counts}")
        if args.keep:
            (work / "labels.json").write_text(json.dumps(labels))
        if args.generate_only:
            print(json.dumps({"rows": len(lines), "generate_seconds": round(gen_s, 2), "planted": counts, "data": str(data)}))
            return 0
        out = work / "clean"
        if out.exists():
            shutil.rmtree(out)
        run = run_clean(data, out, extra, work / "clean.log")
        result: dict[str, Any] = {
            "rows": len(lines), "file_mb": round(data.stat().st_size / 1e6, 1), "seed": args.seed,
            "extra": args.extra, "generate_seconds": round(gen_s, 2), "planted": counts,
            "seconds": round(run["seconds"], 2),
            "rows_per_s": round(len(lines) / run["seconds"]) if run["seconds"] else None,
            "peak_rss_mb": run["peak_rss_mb"], "rss_profile_mb": run["rss_profile_mb"],
            "target_seconds": TARGET_SECONDS, "within_target": run["rc"] == 0 and run["seconds"] <= TARGET_SECONDS,
            "exit_code": run["rc"],
        }
        if run["rc"] != 0 or not (out / "report.json").exists():
            result["error"] = run["output_tail"]
            print(json.dumps(result, indent=2))
            return 1
        log("scoring")
        result.update(score(lines, labels, out))
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
