"""The sampler: never a self-pair, a fair left/right split, weights that favour unmeasured pairs and new
versions, and a recorded probability that matches how often the pair is really drawn."""

import math
import random
from collections import Counter

import pytest

from apps.arena.sampler import (
    DRAFT_PARENT_BOOST,
    NEW_VERSION_BOOST,
    NEW_VERSION_VOTES,
    NotEnoughVersions,
    pair_key,
    pair_sample,
    pair_weight,
)

DRAWS = 20_000


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_never_a_self_pair_even_with_duplicates_in_the_list():
    rng = random.Random(1)
    for _ in range(DRAWS // 4):
        pair = pair_sample(versions=[1, 2, 2, 3, 3, 3], pair_votes={}, rng=rng)
        assert pair.left != pair.right and {pair.left, pair.right} <= {1, 2, 3}


def test_one_version_is_not_a_battle():
    with pytest.raises(NotEnoughVersions):
        pair_sample(versions=[7, 7], pair_votes={}, rng=random.Random(0))


def test_left_and_right_are_a_fair_coin_for_every_pair():
    rng = random.Random(2)
    sides = Counter()
    for _ in range(DRAWS):
        pair = pair_sample(versions=[1, 2, 3], pair_votes={}, rng=rng)
        sides[(pair_key(pair.left, pair.right), pair.left < pair.right)] += 1
    for pair in ((1, 2), (1, 3), (2, 3)):
        total = sides[(pair, True)] + sides[(pair, False)]
        assert _within(sides[(pair, True)], total, 0.5), (pair, sides)


def test_the_recorded_probability_is_the_observed_frequency_and_favours_few_votes_and_new_versions():
    versions = [1, 2, 3, 4]
    # 1–2 is well measured between two established versions; 4 is new (no votes at all).
    pair_votes = {(1, 2): 400, (1, 3): NEW_VERSION_VOTES, (2, 3): NEW_VERSION_VOTES}
    rng = random.Random(3)
    seen, probability = Counter(), {}
    for _ in range(DRAWS):
        pair = pair_sample(versions=versions, pair_votes=pair_votes, rng=rng)
        key = pair_key(pair.left, pair.right)
        seen[key] += 1
        probability[key] = pair.probability
    assert sum(probability.values()) == pytest.approx(1.0)
    for key, p in probability.items():
        assert _within(seen[key], DRAWS, p), (key, seen[key], p)
    assert probability[(1, 2)] < probability[(1, 3)] < probability[(1, 4)]


def test_a_draft_meets_its_parent_more_often_than_its_other_pairs_in_the_boosts_ratio():
    # 3 is a draft improved from 1; every pair has votes enough that only the draft boost differs.
    votes = {(1, 2): NEW_VERSION_VOTES, (1, 3): NEW_VERSION_VOTES, (2, 3): NEW_VERSION_VOTES}
    rng = random.Random(4)
    seen, probability = Counter(), {}
    for _ in range(DRAWS):
        pair = pair_sample(versions=[1, 2, 3], pair_votes=votes, rng=rng, draft_parent_pairs={(1, 3)})
        key = pair_key(pair.left, pair.right)
        seen[key] += 1
        probability[key] = pair.probability
    assert probability[(1, 3)] == pytest.approx(DRAFT_PARENT_BOOST / (DRAFT_PARENT_BOOST + 2))
    assert probability[(1, 2)] == pytest.approx(probability[(2, 3)])
    for key, p in probability.items():
        assert _within(seen[key], DRAWS, p), (key, seen[key], p)
    assert seen[(1, 3)] > seen[(1, 2)] + seen[(2, 3)]


def test_the_draft_boost_stacks_on_the_new_version_boost():
    plain = pair_weight(pair_votes=0, votes_first=0, votes_second=NEW_VERSION_VOTES)
    boosted = pair_weight(pair_votes=0, votes_first=0, votes_second=NEW_VERSION_VOTES, draft_and_parent=True)
    assert plain == pytest.approx(NEW_VERSION_BOOST)
    assert boosted == pytest.approx(NEW_VERSION_BOOST * DRAFT_PARENT_BOOST)
