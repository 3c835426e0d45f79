"""Labeling aggregation: hand-computed cases and the reference implementations (scipy, scikit-learn, NLTK)."""

import math
import random
from itertools import combinations

import pytest
from nltk.metrics.agreement import AnnotationTask
from scipy.stats import kendalltau
from sklearn.metrics import cohen_kappa_score

from apps.labeling.aggregation import cohen_kappa, kendall_tau, kendall_tau_b, krippendorff_alpha_nominal, ranked_pairs


def _margins(rankings: list[list[int]]) -> dict[tuple[int, int], int]:
    places = [{c: p for p, c in enumerate(r)} for r in rankings]
    size = len(rankings[0])
    return {
        (i, j): sum(1 if pl[i] < pl[j] else -1 for pl in places) for i in range(size) for j in range(size) if i != j
    }


def _random_profile(rng: random.Random, candidates: int, voters: int) -> list[list[int]]:
    return [rng.sample(range(candidates), candidates) for _ in range(voters)]


# Ranked pairs


def test_ranked_pairs_sanity_value():
    assert ranked_pairs([[0, 1, 2], [0, 1, 2], [1, 0, 2]]) == [0, 1, 2]


def test_ranked_pairs_drops_the_weakest_link_of_a_cycle():
    # margins by hand: 0>1 by 4+3−2 = 5, 1>2 by 4+2−3 = 3, 2>0 by 3+2−4 = 1; 2>0 would close the cycle
    rankings = [[0, 1, 2]] * 4 + [[2, 0, 1]] * 3 + [[1, 2, 0]] * 2
    assert _margins(rankings)[(0, 1)] == 5 and _margins(rankings)[(1, 2)] == 3 and _margins(rankings)[(2, 0)] == 1
    assert ranked_pairs(rankings) == [0, 1, 2]
    # make 0>1 the weakest instead: lock 2>0 (4+3−2 = 5), 1>2 (4+2−3 = 3), skip 0>1 (3+2−4 = 1)
    rankings = [[1, 2, 0]] * 4 + [[2, 0, 1]] * 3 + [[0, 1, 2]] * 2
    assert ranked_pairs(rankings) == [1, 2, 0]


def test_a_condorcet_cycle_with_equal_margins_breaks_by_winner_then_loser_index():
    # every margin is 1; in (winner, loser) order: (0,1) locked, (1,2) locked, (2,0) would close the cycle
    assert ranked_pairs([[0, 1, 2], [1, 2, 0], [2, 0, 1]]) == [0, 1, 2]
    # the mirrored cycle: (0,2) locked, (1,0) locked, (2,1) would close 1>0>2>1
    assert ranked_pairs([[0, 2, 1], [2, 1, 0], [1, 0, 2]]) == [1, 0, 2]


def test_zero_margins_settle_towards_the_lower_index():
    assert ranked_pairs([[1, 0], [0, 1]]) == [0, 1]
    assert ranked_pairs([[2, 1, 0], [0, 1, 2]]) == [0, 1, 2]
    # 2 beats both; 0 and 1 tie
    assert ranked_pairs([[2, 1, 0], [2, 0, 1]]) == [2, 0, 1]


def test_ranked_pairs_does_not_depend_on_the_order_of_rankings():
    rng = random.Random(1)
    for _ in range(30):
        profile = _random_profile(rng, candidates=5, voters=7)
        shuffled = profile[:]
        rng.shuffle(shuffled)
        assert ranked_pairs(shuffled) == ranked_pairs(profile)


def test_ranked_pairs_follows_a_relabelling_of_the_candidates_when_no_margins_tie():
    rng = random.Random(2)
    checked = 0
    for _ in range(100):
        # a few distinct rankings with very different support, so that margins rarely coincide
        profile = [ranking for ranking in _random_profile(rng, 5, voters=20) for _ in range(rng.randint(1, 100))]
        positive = [m for m in _margins(profile).values() if m > 0]
        if len(set(positive)) != len(positive):
            continue  # equal margins are settled by index, which a relabelling changes
        relabel = rng.sample(range(5), 5)
        relabelled = [[relabel[c] for c in ranking] for ranking in profile]
        assert ranked_pairs(relabelled) == [relabel[c] for c in ranked_pairs(profile)]
        checked += 1
    assert checked >= 20


def test_a_condorcet_winner_comes_first_and_a_condorcet_loser_last():
    rng = random.Random(3)
    for _ in range(100):
        profile = _random_profile(rng, candidates=4, voters=5)
        margins = _margins(profile)
        result = ranked_pairs(profile)
        assert sorted(result) == [0, 1, 2, 3]
        for c in range(4):
            if all(margins[(c, o)] > 0 for o in range(4) if o != c):
                assert result[0] == c
            if all(margins[(o, c)] > 0 for o in range(4) if o != c):
                assert result[-1] == c


def test_ranked_pairs_rejects_what_is_not_a_ranking():
    assert ranked_pairs([]) == []
    with pytest.raises(ValueError):
        ranked_pairs([[0, 1, 2], [0, 1]])
    with pytest.raises(ValueError):
        ranked_pairs([[0, 0, 1]])
    with pytest.raises(ValueError):
        ranked_pairs([[1, 2, 3]])


# Cohen's kappa


def test_cohen_kappa_by_hand():
    # p_o = 3/4; p_e = 1/2·1/4 + 1/2·3/4 = 1/2; κ = (3/4 − 1/2) / (1 − 1/2)
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == 0.5
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    # systematic disagreement on two labels: p_o = 0, p_e = 1/2
    assert cohen_kappa(["x", "y"], ["y", "x"]) == -1.0


def test_cohen_kappa_is_one_when_both_raters_use_one_label_throughout():
    assert cohen_kappa(["spam"] * 4, ["spam"] * 4) == 1.0


def test_cohen_kappa_matches_scikit_learn():
    rng = random.Random(4)
    for _ in range(50):
        labels = ["good", "bad", "unsure", 3][: rng.randint(2, 4)]
        items = rng.randint(2, 30)
        a = [rng.choice(labels) for _ in range(items)]
        b = [x if rng.random() < 0.6 else rng.choice(labels) for x in a]
        if len(set(a) | set(b)) == 1:
            continue
        expected = cohen_kappa_score([str(x) for x in a], [str(x) for x in b])
        assert cohen_kappa(a, b) == pytest.approx(expected, abs=1e-12)


def test_cohen_kappa_rejects_mismatched_or_missing_ratings():
    for a, b in (([1, 2], [1]), ([], []), ([1, None], [1, 2])):
        with pytest.raises(ValueError):
            cohen_kappa(a, b)


# Krippendorff's alpha


def test_krippendorff_alpha_reproduces_krippendorffs_own_nominal_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal α = 0.743
    matrix = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    assert krippendorff_alpha_nominal(matrix) == pytest.approx(0.743, abs=5e-4)


def test_krippendorff_alpha_by_hand():
    # two raters, four items: n = 8 pairable values, one disagreeing item (2 ordered pairs / (2 − 1));
    # n_a = 3, n_b = 5, so n·(n−1)·D_e = 64 − 9 − 25 = 30 and α = 1 − 7 · 2 / 30 = 8/15
    assert krippendorff_alpha_nominal([["a", "a", "b", "b"], ["a", "b", "b", "b"]]) == pytest.approx(8 / 15)
    # the item only one rater saw is not pairable and changes nothing
    assert krippendorff_alpha_nominal([["a", "a", "b", "b", "c"], ["a", "b", "b", "b", None]]) == pytest.approx(8 / 15)


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha_nominal([[1, 2, None], [1, 2, 3], [None, 2, 3]]) == 1.0
    assert krippendorff_alpha_nominal([["x", "x"], ["x", "x"]]) == 1.0  # one label throughout
    with pytest.raises(ValueError, match="pairable"):
        krippendorff_alpha_nominal([[1, None], [None, 2]])
    with pytest.raises(ValueError):
        krippendorff_alpha_nominal([[1, 2], [1]])
    with pytest.raises(ValueError):
        krippendorff_alpha_nominal([])


def test_krippendorff_alpha_matches_nltk():
    rng = random.Random(5)
    for _ in range(40):
        raters, items = rng.randint(2, 5), rng.randint(2, 15)
        truth = [rng.choice("abcd") for _ in range(items)]
        matrix = [
            [None if rng.random() < 0.25 else t if rng.random() < 0.7 else rng.choice("abcd") for t in truth]
            for _ in range(raters)
        ]
        triples = [(r, i, label) for r, row in enumerate(matrix) for i, label in enumerate(row) if label is not None]
        if not any(sum(row[i] is not None for row in matrix) >= 2 for i in range(items)):
            continue
        assert krippendorff_alpha_nominal(matrix) == pytest.approx(AnnotationTask(data=triples).alpha(), abs=1e-12)


# Kendall's tau


def _places(ranking: list[int]) -> list[int]:
    places = [0] * len(ranking)
    for place, candidate in enumerate(ranking):
        places[candidate] = place
    return places


def test_kendall_tau_by_hand():
    assert kendall_tau([0, 1, 2, 3], [0, 1, 2, 3]) == 1.0
    assert kendall_tau([0, 1, 2, 3], [3, 2, 1, 0]) == -1.0
    # one adjacent swap: 5 concordant, 1 discordant pair of 6
    assert kendall_tau([0, 1, 2, 3], [1, 0, 2, 3]) == pytest.approx(4 / 6)
    # the arguments are rankings (candidates best first), not position vectors: [2, 0, 1] puts 2 first,
    # [1, 2, 0] puts 1 first; pairs (2,0) kept, (2,1) and (0,1) swapped: (1 − 2) / 3
    assert kendall_tau([2, 0, 1], [1, 2, 0]) == pytest.approx(-1 / 3)


def test_kendall_tau_is_symmetric_and_equals_scipy_on_position_vectors():
    rng = random.Random(6)
    for _ in range(100):
        size = rng.randint(2, 9)
        a, b = rng.sample(range(size), size), rng.sample(range(size), size)
        tau = kendall_tau(a, b)
        assert tau == kendall_tau(b, a)
        assert tau == pytest.approx(kendalltau(_places(a), _places(b)).statistic, abs=1e-12)


def test_kendall_tau_counts_pairs_not_positions():
    # brute force over candidate pairs, straight from the definition
    rng = random.Random(7)
    a, b = rng.sample(range(7), 7), rng.sample(range(7), 7)
    pa, pb = _places(a), _places(b)
    signs = [1 if (pa[i] - pa[j]) * (pb[i] - pb[j]) > 0 else -1 for i, j in combinations(range(7), 2)]
    assert kendall_tau(a, b) == pytest.approx(sum(signs) / len(signs))


def test_kendall_tau_rejects_what_is_not_two_rankings_of_the_same_candidates():
    for a, b in (([0, 1], [0, 2]), ([0, 0, 1], [0, 1, 1]), ([0], [0]), ([0, 1, 2], [0, 1])):
        with pytest.raises(ValueError):
            kendall_tau(a, b)


# Kendall's tau-b against a reference with ties


def test_kendall_tau_b_by_hand():
    # the reference orders 0 above 2 only (0–1 and 1–2 tied): one concordant pair, n0 = 3, n2' = 1
    assert kendall_tau_b([0, 1, 2], [(0, 2)]) == pytest.approx(1 / math.sqrt(3))
    assert kendall_tau_b([2, 1, 0], [(0, 2)]) == pytest.approx(-1 / math.sqrt(3))
    # one concordant and one discordant pair cancel
    assert kendall_tau_b([0, 2, 1], [(0, 2), (1, 2)]) == 0.0


def test_kendall_tau_b_is_kendall_tau_against_a_full_order_and_scipy_against_a_weak_one():
    rng = random.Random(8)
    for _ in range(100):
        size = rng.randint(2, 9)
        ranking, reference = rng.sample(range(size), size), rng.sample(range(size), size)
        full = list(combinations(reference, 2))  # every pair, in the reference's order
        assert kendall_tau_b(ranking, full) == pytest.approx(kendall_tau(ranking, reference), abs=1e-12)
        # a weak order: each candidate in one of a few tiers, equal tiers tied
        tier = [rng.randint(0, 2) for _ in range(size)]
        if len(set(tier)) < 2:
            continue
        pairs = [(i, j) for i, j in combinations(range(size), 2) if tier[i] != tier[j]]
        ordered = [(i, j) if tier[i] < tier[j] else (j, i) for i, j in pairs]
        expected = kendalltau(_places(ranking), tier).statistic  # scipy's default is tau-b
        assert kendall_tau_b(ranking, ordered) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_b_rejects_a_reference_that_orders_nothing_or_is_not_of_the_ranking():
    for ranking, pairs in (([0, 1, 2], []), ([0, 1], [(0, 2)]), ([0, 1], [(0, 1), (1, 0)]), ([0, 0], [(0, 1)])):
        with pytest.raises(ValueError):
            kendall_tau_b(ranking, pairs)
