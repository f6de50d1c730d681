import pytest

from tunesmith.eval.metrics import aggregate, rouge_l, score_example

REFERENCE = '{"name": "Maria Lopez", "city": "Porto", "item": "kettle", "quantity": 3, "color": "blue"}'


# --- exact match --------------------------------------------------------------------


def test_exact_match_ignores_surrounding_and_repeated_whitespace() -> None:
    assert score_example("  the  blue\n kettle \n", "the blue kettle")["exact_match"] == 1.0


def test_exact_match_is_case_sensitive_and_strict_on_words() -> None:
    assert score_example("The blue kettle", "the blue kettle")["exact_match"] == 0.0
    assert score_example("the kettle", "the blue kettle")["exact_match"] == 0.0


def test_text_reference_gets_token_f1_and_no_json_metrics() -> None:
    scores = score_example("hello", "hello")
    assert set(scores) == {"exact_match", "token_f1", "rouge_l"}


# --- JSON references ----------------------------------------------------------------


def test_identical_json_scores_full_marks() -> None:
    scores = score_example(REFERENCE, REFERENCE)
    assert scores == {"exact_match": 1.0, "json_valid": 1.0, "json_field_accuracy": 1.0}


def test_json_with_other_spacing_and_key_order_is_valid_but_not_exact() -> None:
    prediction = '{"color":"blue","quantity":3,"item":"kettle","city":"Porto","name":"Maria Lopez"}'
    scores = score_example(prediction, REFERENCE)
    assert scores["exact_match"] == 0.0
    assert scores["json_valid"] == 1.0
    assert scores["json_field_accuracy"] == 1.0


@pytest.mark.parametrize(
    "prediction",
    [
        f"```json\n{REFERENCE}\n```",
        f"```\n{REFERENCE}\n```",
        f"  ```JSON\n{REFERENCE}```  \n",
        f"\n\n{REFERENCE}\n",
    ],
)
def test_fenced_or_padded_json_is_valid(prediction: str) -> None:
    scores = score_example(prediction, REFERENCE)
    assert scores["json_valid"] == 1.0
    assert scores["json_field_accuracy"] == 1.0


@pytest.mark.parametrize(
    "prediction",
    [
        "",
        "Maria Lopez from Porto wants 3 blue kettles.",
        f"Here is the order: {REFERENCE}",
        f"```json\n{REFERENCE}\n``` Hope this helps!",
        REFERENCE[:-1],  # truncated generation
        '["Maria Lopez", "Porto"]',  # valid JSON, but not an object
    ],
)
def test_invalid_json_scores_zero(prediction: str) -> None:
    scores = score_example(prediction, REFERENCE)
    assert scores["json_valid"] == 0.0
    assert scores["json_field_accuracy"] == 0.0
    assert "token_f1" not in scores


def test_field_accuracy_counts_share_of_reference_keys() -> None:
    # name, city and color right; item wrong; quantity missing -> 3 of 5.
    prediction = '{"name": "Maria Lopez", "city": "Porto", "item": "teapot", "color": "blue"}'
    assert score_example(prediction, REFERENCE)["json_field_accuracy"] == pytest.approx(0.6)


def test_extra_prediction_keys_do_not_count() -> None:
    prediction = REFERENCE[:-1] + ', "note": "urgent"}'
    assert score_example(prediction, REFERENCE)["json_field_accuracy"] == 1.0


def test_field_values_compare_numbers_numerically() -> None:
    for quantity in ("3", "3.0", '"3"', '" 3 "'):
        prediction = REFERENCE.replace('"quantity": 3', f'"quantity": {quantity}')
        assert score_example(prediction, REFERENCE)["json_field_accuracy"] == 1.0, quantity
    wrong = REFERENCE.replace('"quantity": 3', '"quantity": 4')
    assert score_example(wrong, REFERENCE)["json_field_accuracy"] == pytest.approx(0.8)
    spelled = REFERENCE.replace('"quantity": 3', '"quantity": "three"')
    assert score_example(spelled, REFERENCE)["json_field_accuracy"] == pytest.approx(0.8)


def test_field_values_compare_strings_case_insensitively_and_trimmed() -> None:
    prediction = '{"name": " maria LOPEZ ", "city": "PORTO", "item": "Kettle", "quantity": 3, "color": "Blue"}'
    assert score_example(prediction, REFERENCE)["json_field_accuracy"] == 1.0


def test_field_values_booleans_are_not_numbers() -> None:
    scores = score_example('{"gift": 1}', '{"gift": true}')
    assert scores["json_valid"] == 1.0
    assert scores["json_field_accuracy"] == 0.0


def test_nested_values_are_normalised() -> None:
    reference = '{"tags": ["Red", 2], "address": {"city": "Porto", "floor": 1}}'
    prediction = '{"tags": ["red ", "2"], "address": {"city": "porto", "floor": 1.0}}'
    assert score_example(prediction, reference)["json_field_accuracy"] == 1.0
    reordered = '{"tags": [2, "red"], "address": {"city": "porto", "floor": 1}}'
    assert score_example(reordered, reference)["json_field_accuracy"] == 0.5


# --- token F1 -----------------------------------------------------------------------


def test_token_f1_known_values() -> None:
    # 2 common tokens; precision 2/3, recall 2/4 -> F1 = 4/7.
    assert score_example("blue kettle please", "the blue kettle now")["token_f1"] == pytest.approx(4 / 7)
    assert score_example("red", "blue")["token_f1"] == 0.0


def test_token_f1_ignores_case_and_punctuation() -> None:
    assert score_example("Hello, World!", "hello world")["token_f1"] == 1.0


def test_token_f1_counts_repeated_tokens_once_each() -> None:
    # Prediction "a a a" vs reference "a b": 1 common token; precision 1/3, recall 1/2 -> 0.4.
    assert score_example("a a a", "a b")["token_f1"] == pytest.approx(0.4)


def test_token_f1_empty_cases() -> None:
    assert score_example("", "")["token_f1"] == 1.0
    assert score_example("  ...  ", "")["token_f1"] == 1.0  # punctuation only is empty
    assert score_example("", "something")["token_f1"] == 0.0
    assert score_example("something", "")["token_f1"] == 0.0


# --- aggregate ----------------------------------------------------------------------


def test_aggregate_averages_each_metric_over_examples_that_have_it() -> None:
    per_example = [
        score_example(REFERENCE, REFERENCE),  # json: 1, 1, 1
        score_example("not json", REFERENCE),  # json: 0, 0, 0
        score_example('{"name": "Maria Lopez", "city": "Porto", "item": "x", "quantity": 0, "color": "x"}', REFERENCE),
        score_example("blue kettle please", "the blue kettle now"),  # text: f1 4/7
        score_example("same", "same"),  # text: f1 1
    ]
    result = aggregate(per_example)
    assert list(result) == ["exact_match", "json_field_accuracy", "json_valid", "rouge_l", "token_f1"]
    assert result["exact_match"] == 0.4  # 2 of 5
    assert result["json_valid"] == round(2 / 3, 4)  # JSON references only
    assert result["json_field_accuracy"] == round((1 + 0 + 0.4) / 3, 4)
    assert result["token_f1"] == round((4 / 7 + 1) / 2, 4)
    assert result["rouge_l"] == round((4 / 7 + 1) / 2, 4)  # LCS "blue kettle": P 2/3, R 2/4


def test_aggregate_of_nothing_is_empty() -> None:
    assert aggregate([]) == {}


def test_rouge_l_is_the_longest_common_subsequence_f_measure() -> None:
    # LCS of "the cat sat on the mat" and "the cat on a mat" is "the cat on mat" (4 tokens):
    # precision 4/5, recall 4/6, F = 2PR/(P+R) = 8/11.
    assert rouge_l("the cat on a mat", "the cat sat on the mat") == pytest.approx(8 / 11)
    assert rouge_l("mat the", "the mat") == pytest.approx(0.5)  # order matters, unlike token F1
    assert score_example("mat the", "the mat")["token_f1"] == 1.0


def test_rouge_l_keeps_non_latin_words() -> None:
    """rouge-score's default tokenizer deletes non-ASCII letters, so a Greek answer would
    score 0 against itself; ours keeps them."""
    assert rouge_l("Καλημέρα κόσμε", "Καλημέρα κόσμε") == 1.0
    assert rouge_l("Καλημέρα", "Καλημέρα κόσμε") == pytest.approx(2 / 3)


def test_rouge_l_empty_cases() -> None:
    assert rouge_l("", "") == 1.0
    assert rouge_l("", "something") == 0.0
    assert rouge_l("something", "") == 0.0
