"""Which two versions battle next: a weighted draw over unordered pairs, then a coin for left and right.

A pair's weight is `1/sqrt(1 + votes on the pair)`, times `NEW_VERSION_BOOST` for each of its versions
that has fewer than `NEW_VERSION_VOTES` votes, times `DRAFT_PARENT_BOOST` when the pair is a draft and the
version it was improved from (the learning loop's question: is the fine-tune better than its parent?). The
square root keeps well-measured pairs in play (their intervals still narrow) while sending most votes where
they teach the most: unmeasured pairs and new versions, whose intervals are widest. Pairs are drawn from
distinct versions only, so a version never meets itself. The drawn pair's probability is returned so each
battle records how likely it was (importance weights for any later correction of the sampling bias).
"""

import math
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

NEW_VERSION_VOTES = 20
NEW_VERSION_BOOST = 3.0
# A draft against its parent: beside three established versions, a new draft meets its parent in ~63% of draws.
DRAFT_PARENT_BOOST = 4.0


class NotEnoughVersions(ValueError):
    """A battle needs at least two different versions."""


@dataclass(frozen=True)
class SampledPair:
    left: int
    right: int
    probability: float  # of the unordered pair; each side order then has half of it


def pair_key(first: int, second: int) -> tuple[int, int]:
    return (first, second) if first < second else (second, first)


def pair_weight(*, pair_votes: int, votes_first: int, votes_second: int, draft_and_parent: bool = False) -> float:
    weight = 1.0 / math.sqrt(1 + pair_votes)
    for votes in (votes_first, votes_second):
        if votes < NEW_VERSION_VOTES:
            weight *= NEW_VERSION_BOOST
    if draft_and_parent:
        weight *= DRAFT_PARENT_BOOST
    return weight


def pair_sample(
    *,
    versions: Sequence[int],
    pair_votes: Mapping[tuple[int, int], int],
    rng: random.Random,
    draft_parent_pairs: Collection[tuple[int, int]] = (),
) -> SampledPair:
    """Draw a pair of different versions; `pair_votes` counts votes by `pair_key`, and `draft_parent_pairs`
    lists (as `pair_key`s) each draft with the version it was improved from."""
    distinct = sorted(set(versions))
    if len(distinct) < 2:
        raise NotEnoughVersions("A battle needs at least two different assistant versions.")
    version_votes = dict.fromkeys(distinct, 0)
    for (first, second), votes in pair_votes.items():
        if first in version_votes and second in version_votes:
            version_votes[first] += votes
            version_votes[second] += votes
    pairs = list(combinations(distinct, 2))
    boosted = set(draft_parent_pairs)
    weights = [
        pair_weight(
            pair_votes=pair_votes.get((a, b), 0),
            votes_first=version_votes[a],
            votes_second=version_votes[b],
            draft_and_parent=(a, b) in boosted,
        )
        for a, b in pairs
    ]
    index = rng.choices(range(len(pairs)), weights=weights)[0]
    first, second = pairs[index]
    if rng.random() < 0.5:
        first, second = second, first
    return SampledPair(left=first, right=second, probability=weights[index] / sum(weights))
