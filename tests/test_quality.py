import json

import pytest

from tunesmith.data.quality import QualityIssue, quality_issues


def chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def codes(user: str, assistant: str) -> list[str]:
    return [issue.code for issue in quality_issues(chat(user, assistant))]


LONG_ANSWER = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen."

# --- trivial_response -------------------------------------------------------------------

TRIVIAL = [
    ("Explain photosynthesis.", "", "empty response"),
    ("Explain photosynthesis.", "  \n\t ", "empty response"),
    ("Explain photosynthesis.", "...", "only punctuation: '...'"),
    ("Explain photosynthesis.", "?", "only punctuation: '?'"),
    ("Explain photosynthesis.", "—", "only punctuation: '—'"),
    ("Explain photosynthesis.", "TODO", "placeholder: 'TODO'"),
    ("Explain photosynthesis.", "[TBD]", "placeholder: '[TBD]'"),
    ("Explain photosynthesis.", "N/A", "placeholder: 'N/A'"),
    ("Explain photosynthesis.", "null", "placeholder: 'null'"),
    ("Explain photosynthesis.", "Your answer here.", "placeholder: 'Your answer here.'"),
    ("Explain photosynthesis.", "{response}", "unfilled template variable: '{response}'"),
    ("Explain photosynthesis.", "{{ output }}", "unfilled template variable: '{{ output }}'"),
    ("Explain photosynthesis.", "<answer>", "unfilled template variable: '<answer>'"),
    ("Explain photosynthesis.", "Lorem ipsum dolor sit amet, consectetur adipiscing.", "lorem ipsum filler"),
]


@pytest.mark.parametrize("user, assistant, detail", TRIVIAL)
def test_trivial_responses_are_flagged(user, assistant, detail):
    assert quality_issues(chat(user, assistant)) == [QualityIssue("trivial_response", f"messages[1]: {detail}")]


NOT_TRIVIAL = [
    ("2+2?", "4"),
    ("Sentiment of 'I love it'?", "positive"),
    ("Is the sky blue? Answer yes or no.", "yes"),
    ("Capital of France?", "Paris"),
    ("Which of these are prime: 4, 6, 8?", "None"),  # a correct answer, not a missing value
    ("Middle name? Answer N/A if there is none.", "N/A"),  # the user asked for it
    ("What does JSON.parse('null') return?", "null"),
    ("Extract all dates as a JSON list.", "[]"),
    ("Extract the fields as a JSON object.", "{}"),
    ("React with one emoji.", "👍"),
    ("Which operator adds?", "+"),
    ("What is lorem ipsum?", "Lorem ipsum is placeholder text used in typesetting."),
    ("Solve x.", "x = 3"),
]


@pytest.mark.parametrize("user, assistant", NOT_TRIVIAL)
def test_short_real_answers_are_not_trivial(user, assistant):
    assert codes(user, assistant) == []


# --- echo -------------------------------------------------------------------------------

ECHO = [
    (
        "Explain photosynthesis in simple words.",
        "Explain photosynthesis in simple words.",
        "response repeats the user turn",
    ),
    (
        "Explain photosynthesis in simple words.",
        "explain   PHOTOSYNTHESIS in simple words",  # case, spacing, end punctuation
        "response repeats the user turn",
    ),
    (
        "Write a haiku about the sea.",
        "Write a haiku about the sea. Waves fold into foam, salt wind carries gull voices.",
        "response starts with the whole user turn",
    ),
    (
        "Summarise the following text in two sentences: the committee met on Monday and agreed "
        "to raise the budget for parks, libraries and public transport by ten percent next year.",
        "Summarise the following text in two sentences: the committee met on Monday and agreed "
        "to raise the budget for parks, libraries and public transport by 10 percent next year.",
        "response is 96% the same as the user turn",
    ),
]


@pytest.mark.parametrize("user, assistant, detail", ECHO)
def test_echoed_responses_are_flagged(user, assistant, detail):
    assert quality_issues(chat(user, assistant)) == [QualityIssue("echo", f"messages[1]: {detail}")]


NOT_ECHO = [
    ("Hi", "Hi!"),  # greetings repeat, and are too short to judge
    ("Say hello world", "hello world"),
    ("Repeat after me: the cat sat on the mat.", "The cat sat on the mat."),
    # Edit tasks: the answer is nearly the input, but without the instruction.
    (
        "Fix the grammar: The quick brwn fox jump over the lazy dog and run away very quickly.",
        "The quick brown fox jumps over the lazy dog and runs away very quickly.",
    ),
    (
        "The quick brwn fox jump over the lazy dog and run away very quickly.\n\nFix the grammar above.",
        "The quick brown fox jumps over the lazy dog and runs away very quickly.",
    ),
    ("Translate to French: The weather is nice today.", "Il fait beau aujourd'hui."),
    ("What is the capital of France, and why?", LONG_ANSWER),
]


@pytest.mark.parametrize("user, assistant", NOT_ECHO)
def test_related_responses_are_not_echoes(user, assistant):
    assert "echo" not in codes(user, assistant)


# --- truncated --------------------------------------------------------------------------

TRUNCATED = [
    ("Paris is the capital of France and", "ends with 'and'"),
    ("The main causes of the war were economic pressure and the", "ends with 'the'"),
    ("The best choice depends on whether", "ends with 'whether'"),
    ("First, preheat the oven,", "ends with ','"),
    ("Here is the list of ingredients:", "ends with ':'"),
    ("You can call it like this: compute(x, y", "ends with an unclosed bracket"),
    ("The book is called “The Name of the Wind and", "ends inside a quotation"),
    ('The book is called "The Name of the', "ends inside a quotation"),
    ("```python\ndef f(x):\n    return x *", "code block opened with ``` but never closed"),
    ("Here you go:\n\n```json\n{\"a\": 1}\n", "code block opened with ``` but never closed"),
    ('{"name": "Ada", "languages": ["en", "fr"', "JSON cut off (2 unclosed brackets)"),
    ('[{"id": 1}, {"id": 2, "tags": "a', "JSON cut off (3 unclosed brackets)"),
    ("Steps:\n1. Mix the flour\n2. Add the eggs\n3.", "ends with a list marker and no item"),
    ("Options:\n- red\n- blue\n-", "ends with a list marker and no item"),
]


@pytest.mark.parametrize("assistant, detail", TRUNCATED)
def test_cut_off_responses_are_flagged(assistant, detail):
    assert quality_issues(chat("Tell me.", assistant)) == [QualityIssue("truncated", f"messages[1]: {detail}")]


NOT_TRUNCATED = [
    "```python\ndef f(x):\n    return x * 2\n```",
    "Use this:\n\n```\nls -la\n```\n\nThen check the output",
    json.dumps({"name": "Ada", "languages": ["en", "fr"]}),
    json.dumps([1, 2, 3]),
    "[1] Smith, J. Photosynthesis revisited. 2020",
    "[link](https://example.com) explains it",
    "- apples\n- bananas\n- pears",
    "1. Mix the flour\n2. Add the eggs",
    "The answer is 42",
    "Total:\n42.",
    "See https://example.com/the",
    "Have a great day 🎉",
    "I'm sad :(",
    "The screen is 15\" wide",
    "He is 5'11\" tall and plays guard",
    "Er sagte „Hallo“ und ging",
    "x lies in [0, 1) for every x",
    "Rock and",  # too short to judge
    "positive",
    "That's all I can think of",  # a stranded preposition is normal English
    "Here is what I came up with",
    "I would love to",
    "The result is 3.14 (approximately)",
    "Use the `and` operator",
]


@pytest.mark.parametrize("assistant", NOT_TRUNCATED)
def test_complete_responses_are_not_truncated(assistant):
    assert codes("Tell me.", assistant) == []


# --- refusal ----------------------------------------------------------------------------

REFUSAL = [
    ("I'm sorry, but I can't help with that.", "\"I'm sorry, but I can't\" at char 1"),
    ("I’m sorry, but I can’t assist with that request.", "\"I'm sorry, but I can't\" at char 1"),
    ("Sorry, I cannot do that.", "'Sorry, I cannot' at char 1"),
    ("I apologize, but I am unable to provide that.", "'I apologize, but I am unable to' at char 1"),
    ("As an AI language model, I don't have opinions.", "'As an AI language model' at char 1"),
    ("Well, as an AI, I do not have feelings.", "'as an AI,' at char 7"),
    ("I cannot help with creating malware.", "'I cannot help' at char 1"),
    ("I won't provide instructions for that.", "\"I won't provide\" at char 1"),
    ("I am unable to browse the internet.", "'I am unable to' at char 1"),
    ("Unfortunately, I'm not able to open links.", "\"Unfortunately, I'm not able to\" at char 1"),
    ("I must respectfully decline.", "'I must respectfully decline' at char 1"),
    ("It would be inappropriate for me to speculate.", "'It would be inappropriate for me to' at char 1"),
    ("That request goes against my guidelines.", "'against my guidelines' at char 19"),
]


@pytest.mark.parametrize("assistant, detail", REFUSAL)
def test_refusals_are_flagged(assistant, detail):
    expected = QualityIssue("refusal", f"messages[1]: refusal phrase {detail}")
    assert quality_issues(chat("Do it.", assistant)) == [expected]


NOT_REFUSAL = [
    "I can't believe how easy this is: just add the two numbers.",
    "No: you cannot divide by zero, because the result is undefined.",
    "I can help you with that! Here are the steps.",
    "I can't help but notice the pattern: every term doubles.",
    "I cannot stress enough how important backups are.",
    "Mia cannot help it; she loves puzzles.",
    "Ask me anything; I will not judge.",
    "I'm sorry to hear that. Here are a few things that may help.",
    "The function returns None when it is unable to parse the input.",
    "Sure. " + "Photosynthesis is a process. " * 6 + "I cannot help but admire it.",
    "Sure! " + "x" * 150 + " I cannot help with that.",  # past the opening
]


@pytest.mark.parametrize("assistant", NOT_REFUSAL)
def test_look_alikes_are_not_refusals(assistant):
    assert codes("Do it.", assistant) == []


# --- whole conversations ----------------------------------------------------------------


def test_each_assistant_turn_is_judged_against_the_user_turn_before_it():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a primary colour please."},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Now name a secondary colour please."},
        {"role": "assistant", "content": "Now name a secondary colour please."},
        {"role": "assistant", "content": ""},
    ]
    assert quality_issues(messages) == [
        QualityIssue("echo", "messages[4]: response repeats the user turn"),
        QualityIssue("trivial_response", "messages[5]: empty response"),
    ]


def test_a_turn_can_have_several_issues():
    assistant = "I'm sorry, but I can't help with the"
    assert codes("Help me.", assistant) == ["truncated", "refusal"]


def test_system_and_user_turns_are_not_judged():
    messages = [{"role": "system", "content": ""}, {"role": "user", "content": "..."}]
    assert quality_issues(messages) == []


def test_clean_conversation_has_no_issues():
    assert quality_issues(chat("How do plants make food?", LONG_ANSWER)) == []
