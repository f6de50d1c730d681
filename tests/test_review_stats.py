import csv
from pathlib import Path

import krippendorff
import numpy as np
import pytest

from tunesmith.errors import TunesmithError
from tunesmith.eval.stats import agreement, outcome, summarise_votes, write_votes_csv

# Every test here must run without a warning: degenerate inputs get a clear result, not spam.
pytestmark = pytest.mark.filterwarnings("error")

OTHER = {"A": "B", "B": "A"}


def vote(rater: str, item: int, result: str, *, tuned_side: str = "A", score: int | None = None,
         comment: str = "") -> dict:
    """A vote whose outcome relative to the models is `result` (tuned, base, tie, both_bad)."""
    choice = {"tuned": tuned_side, "base": OTHER[tuned_side]}.get(result, result)
    return {"rater": rater, "item": item, "choice": choice, "tuned_side": tuned_side, "score": score,
            "comment": comment, "at": "2025-03-01T10:00:00Z"}


def one_vote_per_item(results: list[str], rater: str = "alice") -> list[dict]:
    # Sides alternate so that a mix-up of sides and models would show in the counts.
    return [vote(rater, item, r, tuned_side="AB"[item % 2]) for item, r in enumerate(results)]


# --- one vote -----------------------------------------------------------------------


@pytest.mark.parametrize("choice, tuned_side, expected", [
    ("A", "A", "tuned"), ("B", "B", "tuned"), ("B", "A", "base"), ("A", "B", "base"),
    ("tie", "A", "tie"), ("tie", "B", "tie"), ("both_bad", "B", "both_bad"),
])
def test_outcome_is_relative_to_the_models_not_the_sides(choice, tuned_side, expected) -> None:
    assert outcome({"choice": choice, "tuned_side": tuned_side}) == expected


def test_a_choice_outside_the_contract_is_one_error_naming_the_vote() -> None:
    bad = vote("alice", 7, "tie") | {"choice": "C"}
    with pytest.raises(TunesmithError, match=r"vote by 'alice' on item 7: choice 'C' is not one of A, B, tie, "):
        summarise_votes([bad], {})


# --- counts and the win rate --------------------------------------------------------


def test_counts_and_win_rate_on_hand_made_votes() -> None:
    votes = one_vote_per_item(["tuned", "tuned", "tuned", "base", "base", "tie", "tie", "both_bad"])
    summary = summarise_votes(votes, {})
    assert {k: summary[k] for k in ("votes", "counted", "tuned_wins", "base_wins", "ties", "both_bad")} == {
        "votes": 8, "counted": 7, "tuned_wins": 3, "base_wins": 2, "ties": 2, "both_bad": 1}
    # (tuned wins + ties / 2) / counted; both_bad is left out of the denominator.
    assert summary["win_rate"] == (3 + 2 / 2) / 7
    assert summary["raters"] == {"alice": {"votes": 8}}


def test_both_bad_votes_change_neither_the_win_rate_nor_the_interval() -> None:
    results = ["tuned", "base", "tuned", "tie", "base", "tuned"]
    plain = summarise_votes(one_vote_per_item(results), {})
    # Extra both_bad votes: on items already there and on an item nobody else liked.
    extra = [vote("bob", 0, "both_bad"), vote("bob", 3, "both_bad", tuned_side="B"), vote("bob", 99, "both_bad")]
    with_bad = summarise_votes(one_vote_per_item(results) + extra, {})
    assert (with_bad["votes"], with_bad["counted"], with_bad["both_bad"]) == (9, 6, 3)
    assert with_bad["win_rate"] == plain["win_rate"] == (3 + 0.5) / 6
    assert with_bad["ci"] == plain["ci"]


def test_only_both_bad_votes_give_no_win_rate_and_no_interval() -> None:
    summary = summarise_votes([vote("alice", 1, "both_bad"), vote("alice", 2, "both_bad")], {})
    assert (summary["counted"], summary["win_rate"], summary["ci"]) == (0, None, None)


def test_no_votes_at_all() -> None:
    assert summarise_votes([], {}) == {
        "votes": 0, "counted": 0, "tuned_wins": 0, "base_wins": 0, "ties": 0, "both_bad": 0,
        "win_rate": None, "ci": None, "raters": {}, "mean_score": None, "agreement": None, "categories": {}}


def test_mean_score_is_over_the_votes_that_carry_one() -> None:
    votes = [vote("alice", 1, "tuned", score=5), vote("alice", 2, "base", score=2), vote("alice", 3, "tie")]
    assert summarise_votes(votes, {})["mean_score"] == 3.5
    assert summarise_votes(votes[2:], {})["mean_score"] is None


# --- the bootstrap interval ---------------------------------------------------------


def pattern(n_items: int) -> list[str]:
    """60% tuned wins, 30% base wins, 10% ties, item by item."""
    cycle = ["tuned"] * 6 + ["base"] * 3 + ["tie"]
    return [cycle[i % 10] for i in range(n_items)]


def test_interval_contains_the_point_estimate_and_narrows_with_more_items() -> None:
    small = summarise_votes(one_vote_per_item(pattern(20)), {}, resamples=2000)
    large = summarise_votes(one_vote_per_item(pattern(400)), {}, resamples=2000)
    for summary in (small, large):
        assert summary["win_rate"] == 0.65
        low, high = summary["ci"]
        assert 0 <= low < 0.65 < high <= 1
    assert large["ci"][1] - large["ci"][0] < (small["ci"][1] - small["ci"][0]) / 3


def test_a_fixed_seed_gives_the_same_interval_and_another_seed_another() -> None:
    votes = one_vote_per_item(pattern(30))
    first = summarise_votes(votes, {}, seed=7, resamples=500)["ci"]
    assert summarise_votes(votes, {}, seed=7, resamples=500)["ci"] == first
    assert summarise_votes(votes, {}, seed=8, resamples=500)["ci"] != first


def test_items_are_resampled_with_all_their_votes() -> None:
    """Two items, each with votes from three raters: every resample draws whole items, so the
    only possible win rates are those of item 1 twice, item 2 twice, or one of each."""
    votes = [vote(r, 1, "tuned") for r in "abc"] + [vote(r, 2, "base", tuned_side="B") for r in "abc"]
    summary = summarise_votes(votes, {}, resamples=1000)
    assert summary["win_rate"] == 0.5
    # Resampling votes instead of items would put 1/6, 2/6, ... inside as well, and the
    # percentile interval of 2 items x {1, 0} spans the two extremes.
    assert summary["ci"] == [0.0, 1.0]


def test_one_item_gives_a_win_rate_but_no_interval() -> None:
    votes = [vote("alice", 4, "tuned"), vote("bob", 4, "tie", tuned_side="B")]
    summary = summarise_votes(votes, {})
    assert (summary["win_rate"], summary["ci"]) == (0.75, None)


def test_every_vote_the_same_outcome_gives_a_point_interval_without_warnings() -> None:
    summary = summarise_votes(one_vote_per_item(["tuned"] * 12), {})
    assert (summary["win_rate"], summary["ci"]) == (1.0, [1.0, 1.0])
    summary = summarise_votes(one_vote_per_item(["tie"] * 5), {})
    assert (summary["win_rate"], summary["ci"]) == (0.5, [0.5, 0.5])


# --- agreement ----------------------------------------------------------------------


def test_fewer_than_two_raters_have_no_agreement() -> None:
    assert summarise_votes(one_vote_per_item(pattern(10)), {})["agreement"] is None


def test_cohen_kappa_equals_the_hand_computed_value() -> None:
    # Ten items. alice: 5 tuned, 5 base; bob agrees on 8 of them.
    alice = ["tuned"] * 5 + ["base"] * 5
    bob = ["tuned"] * 4 + ["base"] + ["tuned"] + ["base"] * 4
    # observed agreement 8/10; chance: both say tuned 0.5*0.5 + both say base 0.5*0.5 = 0.5;
    # kappa = (0.8 - 0.5) / (1 - 0.5) = 0.6
    votes = one_vote_per_item(alice, "alice") + one_vote_per_item(bob, "bob")
    assert agreement(votes) == {"method": "cohen_kappa", "value": pytest.approx(0.6), "raters": 2, "items": 10}


def test_cohen_kappa_uses_only_the_items_both_raters_rated() -> None:
    alice = one_vote_per_item(["tuned", "base", "tuned", "base"], "alice")
    # bob rated items 0..2 only, agreeing on 0 and 1; item 2 he calls a tie.
    bob = one_vote_per_item(["tuned", "base", "tie"], "bob")
    # observed 2/3; alice's marginals on the 3 shared items: tuned 2/3, base 1/3; bob's: 1/3 each.
    # chance = 2/3*1/3 (tuned) + 1/3*1/3 (base) = 1/3; kappa = (2/3 - 1/3) / (1 - 1/3) = 0.5
    result = agreement(alice + bob)
    assert (result["items"], result["value"]) == (3, pytest.approx(0.5))


def test_the_same_outcomes_with_swapped_sides_give_the_same_agreement() -> None:
    """Sides are shuffled per rater: comparing raw A/B choices would call two raters who
    always agree on the model opposites."""
    alice = one_vote_per_item(["tuned", "base", "tie", "tuned", "both_bad", "base"], "alice")
    bob = [v | {"rater": "bob"} for v in alice]
    swapped = [vote("bob", v["item"], outcome(v), tuned_side=OTHER[v["tuned_side"]]) for v in alice]
    assert [v["choice"] for v in swapped] != [v["choice"] for v in bob]
    assert agreement(alice + bob) == agreement(alice + swapped)
    assert agreement(alice + swapped)["value"] == pytest.approx(1.0)


def test_perfect_agreement_on_a_single_outcome_is_undefined_not_an_error() -> None:
    votes = one_vote_per_item(["tuned"] * 4, "alice") + one_vote_per_item(["tuned"] * 4, "bob")
    assert agreement(votes) == {"method": "cohen_kappa", "value": None, "raters": 2, "items": 4}
    three = votes + one_vote_per_item(["tuned"] * 4, "carol")
    assert agreement(three) == {"method": "krippendorff_alpha", "value": None, "raters": 3, "items": 4}


def test_raters_with_no_item_in_common_have_no_agreement_value() -> None:
    votes = [vote("alice", 1, "tuned"), vote("bob", 2, "base")]
    assert agreement(votes) == {"method": "cohen_kappa", "value": None, "raters": 2, "items": 0}


# Three raters, three items, carol skipped item 2:
#   item 1: tuned tuned tuned   item 2: tuned base -   item 3: base base tie
# Coincidences: tuned-tuned 3, tuned-base 1 + base-tuned 1, base-base 1, base-tie 1 + tie-base 1;
# n = 8 (tuned 4, base 3, tie 1). D_o = 4/8; D_e = (64 - 16 - 9 - 1) / (8 * 7) = 38/56;
# alpha = 1 - (1/2) / (38/56) = 10/38.
THREE_RATERS = {
    "alice": {1: "tuned", 2: "tuned", 3: "base"},
    "bob": {1: "tuned", 2: "base", 3: "base"},
    "carol": {1: "tuned", 3: "tie"},
}


def three_rater_votes() -> list[dict]:
    return [vote(rater, item, result, tuned_side="AB"[(item + len(rater)) % 2])
            for rater, by_item in THREE_RATERS.items() for item, result in by_item.items()]


def test_krippendorff_alpha_with_a_missing_value_equals_the_hand_computed_value() -> None:
    result = agreement(three_rater_votes())
    assert result == {"method": "krippendorff_alpha", "value": pytest.approx(10 / 38), "raters": 3, "items": 3}


def test_krippendorff_alpha_equals_the_package_on_the_reliability_matrix() -> None:
    # Codes: tuned 0, base 1, tie 2, both_bad 3 (any distinct codes give the same nominal alpha).
    nan = np.nan
    matrix = np.array([
        [0, 0, 1, 2, 3, nan, 0, 1],
        [0, 1, 1, 2, nan, 1, 0, nan],
        [0, 0, nan, 0, 3, 1, 2, 1],
        [nan, 0, 1, 2, 3, nan, 0, 1],
    ])
    names = ["tuned", "base", "tie", "both_bad"]
    votes = [vote(f"rater{r}", item, names[int(code)], tuned_side="AB"[(r * item) % 2])
             for r, row in enumerate(matrix) for item, code in enumerate(row) if not np.isnan(code)]
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    result = agreement(votes)
    assert (result["method"], result["raters"], result["items"]) == ("krippendorff_alpha", 4, 8)
    assert result["value"] == pytest.approx(expected)
    assert 0 < expected < 1


def test_a_second_vote_by_the_same_rater_on_an_item_replaces_the_first_for_agreement() -> None:
    votes = one_vote_per_item(["tuned", "base", "tie"], "alice") + one_vote_per_item(["base", "base", "tie"], "bob")
    votes.append(vote("bob", 0, "tuned"))  # bob changed his mind on item 0
    assert agreement(votes)["value"] == pytest.approx(1.0)


# --- categories ---------------------------------------------------------------------


def test_categories_get_their_own_counts_win_rate_and_interval() -> None:
    votes = one_vote_per_item(["tuned", "tuned", "base", "tie", "both_bad", "tuned", "base"])
    categories = {0: "billing", 1: "billing", 2: "billing", 3: "shipping", 4: "shipping", 5: None}
    # item 6 is not in the map at all: counted overall, in no category.
    summary = summarise_votes(votes, categories)
    assert summary["votes"] == 7
    assert summary["categories"] == {
        "billing": {"votes": 3, "counted": 3, "tuned_wins": 2, "base_wins": 1, "ties": 0, "both_bad": 0,
                    "win_rate": 2 / 3, "ci": summary["categories"]["billing"]["ci"]},
        "shipping": {"votes": 2, "counted": 1, "tuned_wins": 0, "base_wins": 0, "ties": 1, "both_bad": 1,
                     "win_rate": 0.5, "ci": None},
    }
    low, high = summary["categories"]["billing"]["ci"]
    assert low == 0.0 and high == 1.0
    assert list(summary["categories"]) == ["billing", "shipping"]


# --- CSV ----------------------------------------------------------------------------


def test_csv_round_trips_a_comment_with_a_comma_a_quote_and_a_newline(tmp_path: Path) -> None:
    tricky = 'too long, and it says "refund"\nwhere it means exchange'
    votes = [vote("alice", 12, "tuned", tuned_side="B", score=4, comment=tricky),
             vote("bob", 12, "both_bad"), vote("carol", 3, "tie", comment="=1+1")]
    path = tmp_path / "review" / "votes.csv"
    write_votes_csv(votes, path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["rater", "item", "choice", "tuned_side", "score", "comment", "at"]
    assert rows == [
        {"rater": "alice", "item": "12", "choice": "B", "tuned_side": "B", "score": "4", "comment": tricky,
         "at": "2025-03-01T10:00:00Z"},
        {"rater": "bob", "item": "12", "choice": "both_bad", "tuned_side": "A", "score": "", "comment": "",
         "at": "2025-03-01T10:00:00Z"},
        {"rater": "carol", "item": "3", "choice": "tie", "tuned_side": "A", "score": "", "comment": "=1+1",
         "at": "2025-03-01T10:00:00Z"},
    ]
    assert [p.name for p in path.parent.iterdir()] == ["votes.csv"]  # no temp file left behind


def test_csv_with_no_votes_is_the_header_alone(tmp_path: Path) -> None:
    path = tmp_path / "votes.csv"
    write_votes_csv([], path)
    assert path.read_bytes() == b"rater,item,choice,tuned_side,score,comment,at\r\n"
