"""`tunesmith review RUN --results` and `--judge` through the real CLI: exact counts, the win
rate formula, the CSV of votes, and the judge's verdicts summarised the same way."""

import csv
import json

import pytest
from sklearn.metrics import cohen_kappa_score

from test_judge import ITEMS as JUDGE_ITEMS
from test_judge import MODEL, no_keys_from_the_environment, server  # noqa: F401 (fixtures)
from test_review_server import write_outputs
from test_train_cli import tunesmith
from tunesmith.eval.review.store import connection, db_path, prepare_review, record_vote

# Outcome per rater and item line: t tuned better, b base better, tie, bad both bad.
PLAN = {
    "alice": {2: "t", 5: "t", 9: "t", 14: "t", 20: "t", 33: "tie"},
    "bob": {2: "t", 5: "t", 9: "t", 14: "b", 20: "bad", 33: "tie"},
}
OUTCOME = {"t": "tuned", "b": "base", "tie": "tie", "bad": "both_bad"}


def choice_for(outcome: str, tuned_side: str) -> str:
    other = "B" if tuned_side == "A" else "A"
    return {"t": tuned_side, "b": other, "tie": "tie", "bad": "both_bad"}[outcome]


@pytest.fixture
def voted(tmp_path):
    run = tmp_path / "run"
    write_outputs(run)
    prepare_review(run, list(PLAN))
    sides = {}
    with connection(db_path(run)) as conn:
        for rater, plan in PLAN.items():
            for item, outcome in plan.items():
                side = conn.execute("SELECT tuned_side FROM assignments WHERE rater = ? AND item = ?",
                                    (rater, item)).fetchone()[0]
                sides[rater, item] = side
                assert record_vote(conn, rater, item, choice_for(outcome, side), 4, f"{rater}, on \"{item}\"")
    return run, sides


def test_results_as_json_count_every_vote_and_give_the_win_rate(voted, tmp_path):
    run, sides = voted
    votes_csv = tmp_path / "votes.csv"
    result = tunesmith("review", run, "--results", "--json", "--csv", votes_csv)
    summary = json.loads(result.stdout)
    assert (summary["votes"], summary["counted"], summary["both_bad"]) == (12, 11, 1)
    assert (summary["tuned_wins"], summary["base_wins"], summary["ties"]) == (8, 1, 2)
    assert summary["win_rate"] == pytest.approx(9 / 11)  # (8 wins + 2 ties / 2) / 11 not both bad
    low, high = summary["ci"]
    assert low <= 9 / 11 <= high <= 1
    lines = sorted(PLAN["alice"])
    kappa = cohen_kappa_score([OUTCOME[PLAN["alice"][i]] for i in lines], [OUTCOME[PLAN["bob"][i]] for i in lines])
    assert summary["agreement"]["method"] == "cohen_kappa"
    assert summary["agreement"]["value"] == pytest.approx(kappa)
    assert summary["categories"]["billing"]["votes"] + summary["categories"]["shipping"]["votes"] == 12
    assert summary["mean_score"] == 4.0 and summary["items"] == 6

    with votes_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rater", "item", "choice", "tuned_side", "score", "comment", "at"]
    assert len(rows) == 12
    for row in rows:
        rater, item = row["rater"], int(row["item"])
        assert row["tuned_side"] == sides[rater, item]
        assert row["choice"] == choice_for(PLAN[rater][item], sides[rater, item])
        assert row["comment"] == f"{rater}, on \"{item}\""


def test_results_as_text_say_what_the_interval_means(voted):
    run, _ = voted
    result = tunesmith("review", run, "--results")
    assert "experts (2 raters): 12 votes on 6 items: tuned better 8, base better 1, tie 2, both bad 1" in result.stdout
    assert "win rate of the tuned model: 0.82 (95% CI " in result.stdout
    assert "agreement between raters: Cohen's kappa" in result.stdout
    assert "per category" in result.stdout


def test_results_without_a_review_say_how_to_start_one(tmp_path):
    write_outputs(tmp_path / "run")
    result = tunesmith("review", tmp_path / "run", "--results", check=False)
    assert result.returncode == 2
    assert "no review here yet" in result.stderr + result.stdout


@pytest.mark.parametrize("args, message", [
    (["--csv", "x.csv"], "--csv needs --results"),
    (["--judge", "http://127.0.0.1:9"], "--judge URL and --judge-model NAME go together"),
])
def test_flags_that_need_another_flag(tmp_path, args, message):
    result = tunesmith("review", tmp_path, *args, check=False)
    assert result.returncode == 2 and message in result.stderr + result.stdout


def write_judge_outputs(run):
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "outputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in JUDGE_ITEMS))


def test_the_judge_through_the_cli_asks_each_pair_twice_and_once_only(server, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    write_judge_outputs(run)
    result = tunesmith("review", run, "--judge", server.url, "--judge-model", MODEL, "--json")
    summary = json.loads(result.stdout)
    # Tuned better on 7 and 9, base on 8, ties on 10 and 11: (2 + 2/2) / 5.
    assert (summary["tuned_wins"], summary["base_wins"], summary["ties"]) == (2, 1, 2)
    assert summary["win_rate"] == pytest.approx(0.6)
    assert summary["judge"] == MODEL and summary["unparsed"] == 0
    assert len(server.requests) == 2 * len(JUDGE_ITEMS)
    text = tunesmith("review", run, "--judge", server.url, "--judge-model", MODEL)
    assert len(server.requests) == 2 * len(JUDGE_ITEMS)  # all cached in RUN/review/judge.jsonl
    assert f"judge {MODEL}: 5 votes on 5 items: tuned better 2, base better 1, tie 2" in text.stdout
