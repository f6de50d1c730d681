"""RUN/eval/report.html: scores first, every example after, filters that count exactly,
model text that never runs, and nothing fetched from outside the file."""

import copy
import json
import re
import time

import pytest

from tunesmith.errors import UsageError
from tunesmith.eval.report import render_eval_report, write_eval_report

CAVEAT = "Token F1 and ROUGE-L measure word overlap, not whether the answer is right."
# An answer that would retitle the page and set a global if it ever ran.
SCRIPT_ANSWER = ("<script>document.title = 'pwned'; window.pwned = 1;</script></textarea>"
                 "<img src=x onerror=\"window.pwned=2\">")


def _row(line, category, reference, base, tuned, base_scores, tuned_scores, **extra):
    return {"line": line, "file": "data/prod.jsonl", "category": category,
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {line}"}],
            "reference": reference, "base": base, "tuned": tuned,
            "scores": {"base": base_scores, "tuned": tuned_scores}, **extra}


def _text(em, f1, rl=0.5):
    return {"exact_match": em, "token_f1": f1, "rouge_l": rl, "ref_nll_per_token": 1.2}


def _json(em, valid, acc):
    return {"exact_match": em, "json_valid": valid, "json_field_accuracy": acc, "ref_nll_per_token": 0.8}


ROWS = [
    _row(3, "billing", "refund issued", "no refund", "refund issued", _text(0.0, 0.5), _text(1.0, 1.0)),
    _row(5, "billing", "card declined", "card was declined", "declined", _text(0.0, 0.6), _text(0.0, 0.4)),
    # JSON: field accuracy decides, though tuned's json_valid is the same
    _row(8, "shipping", '{"city": "Porto"}', '{"city": "Porto"}', '{"city": "Lisbon"}',
         _json(1.0, 1.0, 1.0), _json(0.0, 1.0, 0.5)),
    # a tie on the primary metric is not worse, even with a lower exact match
    _row(9, "shipping", '{"city": "Faro"}', '{"city": "Faro"}', '{"city":"Faro"}',
         _json(1.0, 1.0, 0.5), _json(0.0, 1.0, 0.5)),
    # no category; only exact_match: primary falls back to it
    _row(12, None, "yes", "yes", SCRIPT_ANSWER, {"exact_match": 1.0}, {"exact_match": 0.0}),
    # an empty tuned answer
    _row(14, "billing", "thanks", "thank you", "", _text(0.0, 0.3), _text(0.0, 0.0)),
]
WORSE_LINES = [5, 8, 12, 14]


def _scores(*, compare=False, categories=True, general="ok"):
    scores = {
        "n": len(ROWS),
        "source": {"data": "data/prod.jsonl", "checkpoint": "step-000040", "compare": "runs/full" if compare else None},
        "models": ["base", "tuned"] + (["compare"] if compare else []),
        "base": {"exact_match": 0.3333, "json_field_accuracy": 0.75, "json_valid": 1.0, "token_f1": 0.4667,
                 "rouge_l": 0.5, "ref_nll_per_token": 1.0667, "perplexity": 2.906},
        "tuned": {"exact_match": 0.1667, "json_field_accuracy": 0.5, "json_valid": 1.0, "token_f1": 0.4667,
                  "rouge_l": 0.5, "ref_nll_per_token": 0.9, "perplexity": 2.4596},
        "categories": {
            "billing": {"n": 3, "base": {"exact_match": 0.0, "token_f1": 0.4667},
                        "tuned": {"exact_match": 0.3333, "token_f1": 0.4667}},
            "shipping": {"n": 2, "base": {"exact_match": 1.0, "json_field_accuracy": 0.75},
                         "tuned": {"exact_match": 0.0, "json_field_accuracy": 0.5}},
        } if categories else {},
        "general": None if general is None else {
            "n": 120, "base": 0.41, "tuned": 0.30 if general == "flagged" else 0.39,
            "drop": 0.11 if general == "flagged" else 0.02, "threshold": 0.05, "flagged": general == "flagged",
            "advice": "Remedies: lower train.lr, train 1-2 epochs, --set data.mix_general=0.1 <b>"
            if general == "flagged" else None,
            "noise": "the difference is 13 of 120 items",
            "by_kind": {"fact": {"n": 80, "base": 0.45, "tuned": 0.35}, "math": {"n": 40, "base": 0.325, "tuned": 0.2}},
        },
        "caveat": CAVEAT,
    }
    if compare:
        scores["compare"] = {"exact_match": 0.5, "token_f1": 0.6}
    return scores


def _with_compare(rows):
    rows = copy.deepcopy(rows)
    for row in rows:
        row["compare"] = f"compare answer {row['line']}"
        row["scores"]["compare"] = {"exact_match": 0.0}
    return rows


def _example_attrs(html):
    return re.findall(r'<article class="example" id="example-(\d+)" data-line="\d+" data-worse="(true|false)"', html)


# ---------------------------------------------------------------- rendered HTML

def test_one_block_per_example_and_worse_exactly_where_tuned_scored_lower():
    html = render_eval_report(_scores(), ROWS)
    attrs = _example_attrs(html)
    assert len(attrs) == 6
    assert [int(line) for line, worse in attrs if worse == "true"] == WORSE_LINES
    assert 'id="worse-count">Tuned worse than base on 4 of 6 examples' in html
    assert html.count('<div class="column answer ') == 12


def test_scores_table_has_the_change_and_the_caveat_beside_the_lexical_metrics():
    html = render_eval_report(_scores(), ROWS)
    token_f1_row = re.search(r'<tr id="metric-token_f1">.*?</tr>', html, re.DOTALL).group(0)
    assert f'<td class="caveat" id="caveat" rowspan="2">{CAVEAT}</td>' in token_f1_row
    perplexity = re.search(r'<tr id="metric-perplexity">.*?</tr>', html, re.DOTALL).group(0)
    # lower is better, so a drop in perplexity is marked better
    assert '<td class="num">2.9060</td><td class="num">2.4596</td><td class="num better">-0.4464</td>' in perplexity
    em = re.search(r'<tr id="metric-exact_match">.*?</tr>', html, re.DOTALL).group(0)
    assert '<td class="num worse">-0.1666</td>' in em
    assert "<code>data/prod.jsonl</code>" in html and "checkpoint <code>step-000040</code>" in html
    assert "6 examples from" in html


def test_without_lexical_metrics_the_caveat_is_still_printed():
    scores = _scores()
    for model in ("base", "tuned"):
        del scores[model]["token_f1"], scores[model]["rouge_l"]
    html = render_eval_report(scores, ROWS)
    assert f'<p class="muted" id="caveat">{CAVEAT}</p>' in html


def test_categories_table_and_filter_only_when_rows_have_categories():
    html = render_eval_report(_scores(), ROWS)
    assert 'id="categories"' in html
    assert '<option value="billing">billing (3)</option>' in html and "no category (1)" in html
    uncategorised = [dict(row, category=None) for row in ROWS]
    html = render_eval_report(_scores(categories=False), uncategorised)
    assert 'id="categories"' not in html and 'id="category-filter"' not in html
    assert ' data-category="' not in html


def test_compare_column_only_with_compare():
    assert ">compare<" not in render_eval_report(_scores(), ROWS)
    html = render_eval_report(_scores(compare=True), _with_compare(ROWS))
    assert '<th class="num">compare</th>' in html and "<code>runs/full</code>" in html
    assert html.count('<div class="column answer compare">') == 6
    assert "compare answer 14" in html


def test_flagged_forgetting_shows_the_warning_with_the_advice():
    html = render_eval_report(_scores(general="flagged"), ROWS)
    warning = re.search(r'<div class="warning" id="forgetting-warning">.*?</div>', html, re.DOTALL).group(0)
    assert "11.0 percentage points fewer" in warning and "more than 5.0 percentage points is flagged" in warning
    # the advice is the eval stage's text, escaped like everything else
    assert "Remedies: lower train.lr, train 1-2 epochs, --set data.mix_general=0.1 &lt;b&gt;" in warning
    assert "the difference is 13 of 120 items" in html
    assert ('<td>math</td><td class="num">40</td><td class="num">32.5%</td><td class="num">20.0%</td>'
            '<td class="num worse">-12.5 pts</td>') in html
    ok = render_eval_report(_scores(general="ok"), ROWS)
    assert 'id="forgetting-warning"' not in ok and 'id="forgetting-ok"' in ok
    assert 'id="general"' not in render_eval_report(_scores(general=None), ROWS)


def test_model_text_is_escaped_and_nothing_is_fetched():
    html = render_eval_report(_scores(), ROWS)
    assert "<script>document.title" not in html and "</textarea>" not in html
    assert "&lt;script&gt;document.title = &#39;pwned&#39;; window.pwned = 1;&lt;/script&gt;&lt;/textarea&gt;" in html
    assert html.count("<script") == 1  # the page's own filter script
    assert "http://" not in html and "https://" not in html
    assert re.findall(r"<[^>]*\b(?:src|href)\s*=", html) == []
    assert "@import" not in html and "url(" not in html


def test_empty_and_missing_answers_say_so():
    rows = copy.deepcopy(ROWS)
    html = render_eval_report(_scores(compare=True), rows)  # compare in models, no compare answers
    assert html.count("(no answer)") == 6 and html.count("(empty answer)") == 1


def test_two_hundred_examples_with_three_models_render_quickly():
    rows = [
        _row(i, f"cat{i % 7}", "ref " * 50, "base " * 200, "tuned " * 200, _text(0.0, (i % 5) / 5), _text(0.0, (i % 3) / 3),
             compare="compare " * 200)
        for i in range(1, 201)
    ]
    for row in rows:
        row["scores"]["compare"] = _text(0.0, 0.5)
    start = time.perf_counter()
    html = render_eval_report(_scores(compare=True), rows)
    elapsed = time.perf_counter() - start
    assert len(_example_attrs(html)) == 200
    assert sum(worse == "true" for _, worse in _example_attrs(html)) == sum(
        (i % 3) / 3 < (i % 5) / 5 for i in range(1, 201))
    assert elapsed < 2.0, f"rendering 200 examples took {elapsed:.2f} s"


# ---------------------------------------------------------------- the written file

def _write_run(tmp_path, scores, rows):
    eval_dir = tmp_path / "run" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "scores.json").write_text(json.dumps(scores))
    (eval_dir / "outputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path / "run"


def test_write_eval_report_writes_the_page_into_the_run(tmp_path):
    run = _write_run(tmp_path, _scores(), ROWS)
    path = write_eval_report(run)
    assert path == run / "eval" / "report.html"
    assert path.read_text(encoding="utf-8") == render_eval_report(_scores(), ROWS)


def test_a_missing_or_broken_input_names_the_file_and_line(tmp_path):
    with pytest.raises(UsageError, match=r"scores.json not found: run `tunesmith eval"):
        write_eval_report(tmp_path)
    run = _write_run(tmp_path, _scores(), ROWS)
    with (run / "eval" / "outputs.jsonl").open("a") as f:
        f.write('{"line": 20, "file": "x.jsonl"}\n')
    with pytest.raises(UsageError, match=r"outputs.jsonl:7: no `prompt` field"):
        write_eval_report(run)


def test_filters_in_a_real_browser_count_exactly_and_script_answers_do_not_run(tmp_path, browser):
    path = write_eval_report(_write_run(tmp_path, _scores(), ROWS))
    page = browser.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())

    def shown_lines():
        examples = page.locator("article.example")
        return [int(examples.nth(i).get_attribute("data-line")) for i in range(examples.count())
                if examples.nth(i).is_visible()]

    assert shown_lines() == [3, 5, 8, 9, 12, 14]
    assert page.inner_text("#shown") == "showing 6 of 6"
    page.select_option("#category-filter", "billing")
    assert shown_lines() == [3, 5, 14] and page.inner_text("#shown") == "showing 3 of 6"
    page.check("#worse-filter")
    assert shown_lines() == [5, 14] and page.inner_text("#shown") == "showing 2 of 6"
    page.select_option("#category-filter", label="all")
    assert shown_lines() == WORSE_LINES and page.inner_text("#shown") == "showing 4 of 6"
    page.select_option("#category-filter", label="no category (1)")
    assert shown_lines() == [12] and page.inner_text("#shown") == "showing 1 of 6"
    page.uncheck("#worse-filter")
    page.select_option("#category-filter", label="all")
    assert shown_lines() == [3, 5, 8, 9, 12, 14]

    assert page.evaluate("window.pwned") is None and page.title() == "tunesmith eval report: 6 examples"
    assert "<script>document.title = 'pwned'" in page.inner_text("#example-12 .column.tuned")
    assert dialogs == [] and errors == []

    # The page's CSP allows only its own script: one that slipped past escaping would not run.
    planted = tmp_path / "planted.html"
    planted.write_text(path.read_text().replace("<body>", "<body><script>window.pwned = 3;</script>"))
    page.goto(planted.as_uri())
    assert page.evaluate("window.pwned") is None and page.inner_text("#shown") == "showing 6 of 6"

    # Without JavaScript every example shows and the filters that could not work are hidden.
    no_js = browser.new_context(java_script_enabled=False).new_page()
    no_js.goto(path.as_uri())
    assert no_js.locator("article.example:visible").count() == 6
    assert not no_js.locator("#filters").is_visible()
