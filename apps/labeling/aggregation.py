"""Consensus and agreement for labeling panels: ranked pairs, Cohen's κ, Krippendorff's α, Kendall's τ.

Pure functions over plain lists. A ranking is a list of candidate indices, best first; labels are any
hashable values.

- `ranked_pairs`: Tideman's method. Margins m(i, j) = #(i above j) − #(j above i) over the rankings;
  ordered pairs are taken by margin, largest first, equal margins in (winner index, loser index)
  order, and each is locked unless it closes a cycle. Pairs with margin 0 go through the same rule
  after all positive ones, so a tie between i < j is settled as "i above j" where nothing locked says
  otherwise; the locked graph is then a complete order, and the result is that order. Counting
  margins first makes the result independent of the order of the rankings.
- `cohen_kappa`: (p_o − p_e) / (1 − p_e), from integer counts, so the "p_e = 1" case is exact. p_e = 1
  happens only when both raters gave every item one and the same label: agreement is perfect and the
  chance correction is 0/0. It returns 1.0 there (perfect agreement, as for α below); scikit-learn
  returns NaN.
- `krippendorff_alpha_nominal`: α = 1 − D_o / D_e over the coincidence matrix, counting only pairable
  values (items with at least two ratings), in exact fractions. When the pairable values all carry
  one label, D_o = D_e = 0 and it returns 1.0 (perfect agreement). With no pairable value at all
  there is nothing to measure: ValueError.
- `kendall_tau`: both arguments are rankings of the same candidates (lists of candidate indices, best
  first), e.g. a labeler's ranking against the consensus. τ = (concordant − discordant) / (K(K−1)/2)
  over candidate pairs. A ranking lists each candidate once, so there are no ties: τ-a, τ-b and
  scipy's `kendalltau` on the two position vectors coincide. Symmetric in a and b; 1 for the same
  order, −1 for the reverse. Fewer than two candidates leave no pair: ValueError.
- `kendall_tau_b`: τ-b of a full ranking against a reference that orders only some candidate pairs and
  ties the rest (a consensus whose margin-0 pairs are ties): (C − D) / √(n₀ · n₂'), where n₀ = K(K−1)/2
  and n₂' is the number of ordered reference pairs (the ranking itself has no ties). It equals
  `kendall_tau` when the reference orders every pair, and scipy's `kendalltau` (its default τ-b) when the
  reference is a weak order. A reference that orders no pair says nothing: ValueError.
"""

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from fractions import Fraction
from itertools import combinations


def _positions(ranking: Sequence[int], size: int) -> list[int]:
    """Each candidate's place in a ranking of candidates 0..size−1 (a ValueError if it is not one)."""
    if sorted(ranking) != list(range(size)):
        raise ValueError(f"A ranking must list the candidates 0..{size - 1} once each, got {list(ranking)!r}.")
    places = [0] * size
    for place, candidate in enumerate(ranking):
        places[candidate] = place
    return places


def ranked_pairs(rankings: list[list[int]]) -> list[int]:
    """Tideman's ranked-pairs consensus of full rankings of candidates 0..K−1, best first."""
    if not rankings:
        return []
    size = len(rankings[0])
    above = [[0] * size for _ in range(size)]  # above[i][j]: rankings that put i above j
    for ranking in rankings:
        places = _positions(ranking, size)
        for i, j in combinations(range(size), 2):
            if places[i] < places[j]:
                above[i][j] += 1
            else:
                above[j][i] += 1
    pairs = sorted(
        ((above[i][j] - above[j][i], i, j) for i in range(size) for j in range(size) if i != j),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    reaches = [{i} for i in range(size)]  # reaches[i]: candidates locked below i, and i itself
    for _, winner, loser in pairs:
        if winner in reaches[loser]:  # locking it would close a cycle
            continue
        for candidate in range(size):
            if winner in reaches[candidate]:
                reaches[candidate] |= reaches[loser]
    return sorted(range(size), key=lambda candidate: -len(reaches[candidate]))


def cohen_kappa(a: list, b: list) -> float:
    """Cohen's κ of two raters who labelled the same items (a[i] and b[i] rate item i)."""
    if len(a) != len(b):
        raise ValueError(f"Both raters must rate the same items: {len(a)} against {len(b)} labels.")
    if not a:
        raise ValueError("Cohen's kappa needs at least one rated item.")
    if None in a or None in b:
        raise ValueError("Cohen's kappa needs every item rated by both; use krippendorff_alpha_nominal for gaps.")
    items = len(a)
    agreed = sum(x == y for x, y in zip(a, b, strict=True))
    counts_a, counts_b = Counter(a), Counter(b)
    chance = sum(count * counts_b[label] for label, count in counts_a.items())  # p_e · items²
    if chance == items * items:
        return 1.0
    return (agreed * items - chance) / (items * items - chance)


def krippendorff_alpha_nominal(matrix: list[list]) -> float:
    """Krippendorff's α for nominal labels; rows are raters, columns items, None a missing rating."""
    if not matrix:
        raise ValueError("Krippendorff's alpha needs at least one rater.")
    items = len(matrix[0])
    if any(len(row) != items for row in matrix):
        raise ValueError("Every rater's row must have one entry per item (None where not rated).")
    observed = Fraction(0)  # Σ over items of the disagreeing ordered pairs / (m_u − 1)
    totals: Counter[Hashable] = Counter()  # n_c: pairable values per label
    for column in zip(*matrix, strict=True):
        labels = Counter(label for label in column if label is not None)
        rated = labels.total()
        if rated < 2:
            continue
        totals.update(labels)
        observed += Fraction(rated * rated - sum(count * count for count in labels.values()), rated - 1)
    pairable = totals.total()
    if not pairable:
        raise ValueError("Krippendorff's alpha needs at least one item rated twice (no pairable values).")
    expected = pairable * pairable - sum(count * count for count in totals.values())  # n·(n−1)·D_e
    if not expected:
        return 1.0
    return float(1 - (pairable - 1) * observed / expected)


def kendall_tau(a: list[int], b: list[int]) -> float:
    """Kendall's τ between two rankings of the same candidates, each a list of indices best first."""
    if sorted(a) != sorted(b) or len(set(a)) != len(a):
        raise ValueError("Both rankings must list the same candidates, each once.")
    if len(a) < 2:
        raise ValueError("Kendall's tau needs at least two candidates.")
    place_in_b = {candidate: place for place, candidate in enumerate(b)}
    # a lists the candidates in its own order, so a pair is concordant when b keeps that order
    b_order = [place_in_b[candidate] for candidate in a]
    concordant_minus_discordant = sum(1 if x < y else -1 for x, y in combinations(b_order, 2))
    return concordant_minus_discordant / (len(a) * (len(a) - 1) / 2)


def kendall_tau_b(ranking: list[int], ordered_pairs: list[tuple[int, int]]) -> float:
    """Kendall's τ-b between a ranking (candidate indices, best first) and a reference given as its
    (above, below) pairs of those candidates; pairs it does not list are ties."""
    if len(set(ranking)) != len(ranking) or len(ranking) < 2:
        raise ValueError("The ranking must list at least two candidates, each once.")
    place = {candidate: position for position, candidate in enumerate(ranking)}
    if any(a not in place or b not in place or a == b for a, b in ordered_pairs):
        raise ValueError("Every reference pair must be two different candidates of the ranking.")
    if len({frozenset(pair) for pair in ordered_pairs}) != len(ordered_pairs):
        raise ValueError("The reference must order each pair of candidates at most once.")
    if not ordered_pairs:
        raise ValueError("Kendall's tau-b needs a reference that orders at least one pair.")
    concordant_minus_discordant = sum(1 if place[a] < place[b] else -1 for a, b in ordered_pairs)
    all_pairs = len(ranking) * (len(ranking) - 1) / 2
    return concordant_minus_discordant / math.sqrt(all_pairs * len(ordered_pairs))
