"""Arena ratings: the contract's sanity values, hand-computed cases, and an independent reference fit."""

import math
import random

import numpy as np
import pytest
from scipy.optimize import minimize

from apps.arena.ratings import (
    NotIdentifiable,
    bootstrap_intervals,
    bradley_terry,
    online_elo,
    ranks_from_intervals,
)

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
SCORES = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def _votes(model_a: str, model_b: str, winner: str, times: int) -> list[tuple[str, str, str]]:
    return [(model_a, model_b, winner)] * times


def _random_battles(seed: int, models: int, votes: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(models)]
    strength = {name: rng.gauss(0, 0.4) for name in names}
    battles = []
    for _ in range(votes):
        a, b = rng.sample(names, 2)
        p = 1 / (1 + 10 ** (strength[b] - strength[a]))
        u = rng.random()
        battles.append((a, b, "model_a" if u < p - 0.1 else "model_b" if u > p + 0.1 else rng.choice(WINNERS[2:])))
    return battles


def _reference_fit(battles, l2: float) -> dict[str, float]:
    """The contract's objective written out per vote (no collapsing), minimized by scipy's BFGS."""
    names = sorted({name for a, b, _ in battles for name in (a, b)})
    index = {name: i for i, name in enumerate(names)}
    a = np.array([index[x] for x, _, _ in battles])
    b = np.array([index[x] for _, x, _ in battles])
    y = np.array([SCORES[w] for _, _, w in battles])

    def objective(xi):
        z = math.log(10) * (xi[a] - xi[b])
        p = 1 / (1 + np.exp(-z))
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum() + l2 / 2 * (xi @ xi)
        residual = math.log(10) * (p - y)
        gradient = np.bincount(a, residual, len(names)) - np.bincount(b, residual, len(names)) + l2 * xi
        return loss, gradient

    xi = minimize(objective, np.zeros(len(names)), jac=True, method="BFGS", options={"gtol": 1e-10}).x
    return {name: 1000 + 400 * (value - xi.mean()) for name, value in zip(names, xi, strict=True)}


# The contract's sanity values


def test_one_win_moves_elo_by_half_of_k():
    assert online_elo([("A", "B", "model_a")], k=4) == {"A": 1002.0, "B": 998.0}


def test_three_to_one_and_a_win_plus_a_tie_give_the_same_ratings():
    three_to_one = bradley_terry(_votes("A", "B", "model_a", 3) + _votes("A", "B", "model_b", 1))
    win_and_tie = bradley_terry([("A", "B", "model_a"), ("A", "B", "tie")])
    for ratings in (three_to_one, win_and_tie):
        assert ratings["A"] == pytest.approx(1095.424, abs=5e-4)
        assert ratings["B"] == pytest.approx(904.576, abs=5e-4)
    # by hand: σ(ln10·d) = 3/4, so d = log10(3), split evenly around 1000
    assert three_to_one["A"] == pytest.approx(1000 + 200 * math.log10(3), abs=1e-9)


def test_chain_and_its_anchor():
    chain = (
        _votes("A", "B", "model_a", 2) + _votes("B", "A", "model_a", 1)  # A beats B 2:1, written both ways
    ) + (_votes("B", "C", "model_a", 2) + _votes("B", "C", "model_b", 1))
    ratings = bradley_terry(chain)
    assert ratings == pytest.approx({"A": 1120.412, "B": 1000.0, "C": 879.588}, abs=5e-4)
    anchored = bradley_terry(chain, anchor=("C", 1114))
    assert anchored["C"] == 1114.0
    assert anchored["A"] == pytest.approx(1354.824, abs=5e-4)
    assert anchored["B"] - anchored["C"] == pytest.approx(ratings["B"] - ratings["C"], abs=1e-9)


def test_a_shutout_needs_l2():
    ratings = bradley_terry(_votes("A", "B", "model_a", 5), l2=0.5)
    assert ratings == pytest.approx({"A": 1295.82, "B": 704.18}, abs=5e-3)
    with pytest.raises(NotIdentifiable):
        bradley_terry(_votes("A", "B", "model_a", 5))


# Hand-computed cases


def test_elo_second_win_earns_less_and_both_bad_scores_like_a_tie():
    after_two = online_elo(_votes("A", "B", "model_a", 2), k=4)
    expected_second = 1 / (1 + 10 ** (-4 / 400))  # A at 1002 against B at 998
    assert after_two["A"] == pytest.approx(1002 + 4 * (1 - expected_second), abs=1e-12)
    assert after_two["A"] + after_two["B"] == pytest.approx(2000.0, abs=1e-12)
    for tie in ("tie", "tie (bothbad)"):
        ratings = online_elo([("A", "B", "model_a"), ("A", "B", tie)], k=4)
        assert ratings["A"] == pytest.approx(1002 + 4 * (0.5 - expected_second), abs=1e-12)
    assert online_elo([("A", "B", "tie (bothbad)")], k=32, initial=1500) == {"A": 1500.0, "B": 1500.0}


def test_elo_depends_on_order_and_starts_each_model_at_initial():
    ab_then_ac = online_elo([("A", "B", "model_a"), ("A", "C", "model_b")], k=10, initial=1200)
    assert ab_then_ac["B"] == 1195.0
    expected_a = 1 / (1 + 10 ** ((1200 - 1205) / 400))
    assert ab_then_ac["A"] == pytest.approx(1205 - 10 * expected_a, abs=1e-12)
    assert ab_then_ac["C"] == pytest.approx(1200 + 10 * expected_a, abs=1e-12)


def test_a_balanced_cycle_rates_everyone_equally():
    cycle = [("A", "B", "model_a"), ("B", "C", "model_a"), ("C", "A", "model_a")]
    assert bradley_terry(cycle) == pytest.approx({"A": 1000.0, "B": 1000.0, "C": 1000.0}, abs=1e-9)
    # only ties: the tie counts as a win each way, so the fit exists without l2
    assert bradley_terry([("A", "B", "tie (bothbad)")]) == pytest.approx({"A": 1000.0, "B": 1000.0}, abs=1e-9)


def test_groups_never_compared_are_not_identifiable_without_l2():
    disconnected = _votes("A", "B", "model_a", 2) + _votes("A", "B", "model_b", 1) + [("C", "D", "tie")]
    with pytest.raises(NotIdentifiable):
        bradley_terry(disconnected)
    ratings = bradley_terry(disconnected, l2=0.5)
    assert ratings["C"] == pytest.approx(1000.0, abs=1e-9) and ratings["D"] == pytest.approx(1000.0, abs=1e-9)
    assert ratings["A"] > 1000 > ratings["B"]


def test_fit_matches_the_per_vote_objective_minimized_by_scipy():
    battles = _random_battles(seed=3, models=6, votes=300)
    for l2 in (0.0, 0.5, 3.0):
        ours = bradley_terry(battles, l2=l2)
        assert ours == pytest.approx(_reference_fit(battles, l2), abs=1e-3)
        assert sum(ours.values()) / len(ours) == pytest.approx(1000.0, abs=1e-9)


def test_collapsing_votes_into_weights_changes_nothing():
    battles = _random_battles(seed=4, models=5, votes=200)
    tripled = battles * 3  # the same empirical distribution: the maximum likelihood does not move at l2 = 0
    assert bradley_terry(tripled) == pytest.approx(bradley_terry(battles), abs=1e-9)
    # a win and a loss carry the same (n, Σy) as two ties of either kind
    win_and_loss = [("A", "B", "model_a"), ("B", "A", "model_a"), ("A", "C", "model_a"), ("A", "C", "model_b")]
    two_ties = [("A", "B", "tie"), ("B", "A", "tie (bothbad)"), ("A", "C", "model_a"), ("A", "C", "model_b")]
    for l2 in (0.0, 1.0):
        assert bradley_terry(win_and_loss, l2=l2) == pytest.approx(bradley_terry(two_ties, l2=l2), abs=1e-12)


def test_vote_order_and_sides_do_not_matter():
    battles = _random_battles(seed=5, models=5, votes=150)
    flipped = {"model_a": "model_b", "model_b": "model_a", "tie": "tie", "tie (bothbad)": "tie (bothbad)"}
    shuffled = [(b, a, flipped[w]) if i % 2 else (a, b, w) for i, (a, b, w) in enumerate(battles)]
    random.Random(0).shuffle(shuffled)
    assert bradley_terry(shuffled, l2=0.1) == bradley_terry(battles, l2=0.1)
    assert bootstrap_intervals(shuffled, rounds=50, seed=7) == bootstrap_intervals(battles, rounds=50, seed=7)


# Bootstrap


def test_bootstrap_is_reproducible_and_centred_on_the_point_fit():
    battles = _random_battles(seed=6, models=4, votes=400)
    first = bootstrap_intervals(battles, rounds=200, seed=11, l2=0.5)
    assert first == bootstrap_intervals(battles, rounds=200, seed=11, l2=0.5)
    assert first != bootstrap_intervals(battles, rounds=200, seed=12, l2=0.5)
    point = bradley_terry(battles, l2=0.5)
    assert {name: estimate for name, (_, estimate, _) in first.items()} == point
    assert all(low < estimate < high for low, estimate, high in first.values())


def test_bootstrap_percentiles_follow_the_resampled_score():
    # Two models, 400 votes, A scored 240 (ties count half). A resample's score is a sum of 400 draws of
    # y, and A's rating 1000 + 200·log10(f/(1−f)) is monotone in the share f, so its percentiles are
    # those of the score, mapped: 240 ± 1.96 standard deviations (the normal limit; skew is −0.02).
    battles = _votes("A", "B", "model_a", 200) + _votes("A", "B", "tie", 80) + _votes("A", "B", "model_b", 120)
    low, estimate, high = bootstrap_intervals(battles, rounds=4000, seed=1, l2=0.0)["A"]

    def rating(score: float) -> float:
        share = score / 400
        return 1000 + 200 * math.log10(share / (1 - share))

    assert estimate == pytest.approx(rating(240), abs=1e-9)
    # score variance per vote is E[y²] − E[y]² = (200 + 80/4)/400 − 0.36 = 0.19
    sd = math.sqrt(0.19 / 400) * 400
    assert low == pytest.approx(rating(240 - 1.96 * sd), abs=3)
    assert high == pytest.approx(rating(240 + 1.96 * sd), abs=3)


def test_bootstrap_without_l2_survives_shutout_resamples():
    # A:B = 3:1 is identifiable, but about a third of the resamples are 4–0 or 0–4
    battles = _votes("A", "B", "model_a", 3) + _votes("A", "B", "model_b", 1)
    intervals = bootstrap_intervals(battles, rounds=300, seed=0, l2=0.0)
    low, estimate, high = intervals["A"]
    assert all(math.isfinite(value) for value in (low, estimate, high))
    assert estimate == pytest.approx(1095.424, abs=5e-4)
    assert high > 1500  # the 4–0 resamples sit far out, where only the floor holds them
    # with the default l2 the same data keep a bounded interval
    default_low, _, default_high = bootstrap_intervals(battles, rounds=300, seed=0)["A"]
    assert default_high - default_low < high - low


def test_bootstrap_keeps_a_model_that_a_resample_misses():
    battles = _votes("A", "B", "model_a", 30) + _votes("B", "A", "model_a", 30) + [("A", "C", "model_a")]
    intervals = bootstrap_intervals(battles, rounds=300, seed=2, l2=0.5)
    assert set(intervals) == {"A", "B", "C"}
    assert all(math.isfinite(v) for bounds in intervals.values() for v in bounds)


# Ranks


def test_ranks_count_models_whose_lower_bound_clears_the_upper_bound():
    intervals = {
        "A": (1100.0, 1150.0, 1200.0),
        "B": (1050.0, 1100.0, 1160.0),
        "C": (900.0, 950.0, 1000.0),
        "D": (1210.0, 1250.0, 1300.0),
        "E": (950.0, 1100.0, 1210.0),  # D's lower bound equals E's upper bound: not above it
    }
    assert ranks_from_intervals(intervals) == {"D": 1, "A": 2, "B": 2, "C": 4, "E": 1}
    assert ranks_from_intervals({}) == {}


# Validation


@pytest.mark.parametrize("fit", [online_elo, bradley_terry, bootstrap_intervals])
def test_unknown_winner_and_self_battles_are_rejected(fit):
    with pytest.raises(ValueError, match="Unknown winner"):
        fit([("A", "B", "model_a"), ("A", "B", "both")])
    with pytest.raises(ValueError, match="two different models"):
        fit([("A", "A", "tie")])


def test_bad_arguments_are_rejected():
    battles = [("A", "B", "model_a"), ("A", "B", "model_b")]
    with pytest.raises(ValueError, match="l2"):
        bradley_terry(battles, l2=-1.0)
    with pytest.raises(ValueError, match="anchor"):
        bradley_terry(battles, anchor=("Z", 1000.0))
    with pytest.raises(ValueError, match="rounds"):
        bootstrap_intervals(battles, rounds=0)
    with pytest.raises(NotIdentifiable):
        bootstrap_intervals(_votes("A", "B", "model_a", 3), l2=0.0)
    assert bradley_terry([]) == {} and bootstrap_intervals([]) == {} and online_elo([]) == {}
