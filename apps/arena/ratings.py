"""Arena ratings from pairwise votes: online Elo, Bradley–Terry maximum likelihood, bootstrap intervals.

Pure functions over battles `(model_a, model_b, winner)`, with `winner` one of "model_a", "model_b",
"tie" and "tie (bothbad)". A tie and a both-bad vote score 0.5 for each side everywhere (Elo and
Bradley–Terry alike): both say "neither was better", which is all a pairwise rating can use.

Bradley–Terry minimizes `Σ BCE(y, σ(ln10·(ξa−ξb))) + (l2/2)·Σ ξ²` and reports `1000 + 400·ξ`, the
Elo scale (400 points = 10:1 odds). Design:
- Votes are collapsed first: models sorted by name, each vote turned so that the first model has the
  smaller index (y becomes 1−y), identical (a, b, y) rows counted once. The log-likelihood of a pair
  depends only on its vote count n and score s = Σ y, so the fit runs over at most K·(K−1)/2 pairs,
  whatever the number of votes, and nothing depends on the order of the votes.
- The fit is Newton's method with the exact K×K Hessian (`ln10²·Σ n·p·(1−p)` Laplacian plus l2·I) and
  step halving when the objective does not decrease, so it converges from any start. Without l2 the
  ratings are defined up to a common shift: the Hessian gets `11ᵀ` added, which leaves the step
  orthogonal to 1, and the ratings are centred on 1000 (with l2 > 0 the optimum is centred anyway:
  the data gradient sums to zero, so l2·Σξ = 0).
- Without l2 the maximum likelihood exists only when every group of models has won or tied at least
  one vote against the others, i.e. the graph "i scored against j" is strongly connected (Zermelo,
  Ford 1957). A shutout (5–0) or a disconnected comparison graph breaks that: `bradley_terry(l2=0)`
  raises `NotIdentifiable` instead of iterating towards infinity.
- `bootstrap_intervals` resamples votes with a multinomial over the collapsed rows (the same
  distribution as resampling votes with replacement) and fits all rounds at once: batched Newton
  steps over a (rounds, K, K) Hessian stack, warm-started from the full-data fit; rounds drop out as
  they converge. Its default `l2=0.5` is a weak Gaussian prior (ξ ~ N(0, 2), a standard deviation of
  566 rating points) worth less than one vote's curvature (a close vote adds ln10²/4 ≈ 1.3): it does
  not move a model with many votes, but keeps a new version with a handful of one-sided votes finite
  and near the field instead of thousands of points away. A resample can be a shutout even when the
  full data are not, so the resampled fits use at least `BOOTSTRAP_L2_FLOOR` (1e-6): finite numbers
  always, an unmeasurable shift (far below 0.001 points) wherever the resample is identifiable.

Measured by `python -m bench.ratings` (bench/results_ratings.md) on a 2-core machine: with 50 versions and
100,000 votes the fit plus 1,000 bootstrap rounds take 1.6 s alone and 5 s with the cores shared, about
400× less than the Chatbot Arena notebook's approach (a logistic regression over two design rows per
vote, refitted for every resample: ~2 s a round). Drawing the multinomial counts is ~0.6 s of that; the
Newton steps (about 5 per block of 250 rounds) the rest.
"""

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WINNER_SCORES = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}
INITIAL_RATING, SCALE = 1000.0, 400.0
BOOTSTRAP_L2_FLOOR = 1e-6
DEFAULT_BOOTSTRAP_L2 = 0.5

_LN10 = math.log(10.0)
_STEP_TOLERANCE = 1e-10  # in ξ; 4e-8 rating points
_MAX_NEWTON_STEPS = 200
_MAX_HALVINGS = 60

Battle = tuple[str, str, str]


class NotIdentifiable(ValueError):
    """Unregularized Bradley–Terry has no finite maximum for these votes."""


def _score(model_a: str, model_b: str, winner: str) -> float:
    if winner not in WINNER_SCORES:
        raise ValueError(f"Unknown winner {winner!r}: expected one of {sorted(WINNER_SCORES)}.")
    if model_a == model_b:
        raise ValueError(f"A battle needs two different models, got {model_a!r} twice.")
    return WINNER_SCORES[winner]


def online_elo(battles: Iterable[Battle], k: float = 4.0, initial: float = INITIAL_RATING) -> dict[str, float]:
    """Sequential Elo in the given order; a model starts at `initial` when it first appears."""
    ratings: dict[str, float] = {}
    for model_a, model_b, winner in battles:
        score_a = _score(model_a, model_b, winner)
        rating_a, rating_b = ratings.get(model_a, initial), ratings.get(model_b, initial)
        expected_a = 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / SCALE))
        ratings[model_a] = rating_a + k * (score_a - expected_a)
        ratings[model_b] = rating_b - k * (score_a - expected_a)
    return ratings


@dataclass(frozen=True)
class _Votes:
    """Votes collapsed into rows (i < j, y) sorted by (i, j, y); the rows of one pair are contiguous."""

    models: tuple[str, ...]
    row_counts: np.ndarray  # (rows,) votes per row
    row_scores: np.ndarray  # (rows,) y of each row
    pair_starts: np.ndarray  # (pairs,) first row of each pair
    first: np.ndarray  # (pairs,) index of the pair's first model
    second: np.ndarray  # (pairs,) index of the pair's second model
    incidence: np.ndarray  # (pairs, models): +1 at the first model, −1 at the second

    def pair_totals(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Votes n and score s = Σ y per pair, for row counts of shape (rounds, rows)."""
        n = np.add.reduceat(counts, self.pair_starts, axis=-1).astype(float)
        s = np.add.reduceat(counts * self.row_scores, self.pair_starts, axis=-1)
        return n, s


def _collapse(battles: Iterable[Battle]) -> _Votes:
    raw = Counter(tuple(battle) for battle in battles)
    scored = [(a, b, _score(a, b, winner), count) for (a, b, winner), count in raw.items()]
    models = tuple(sorted({name for a, b, _, _ in scored for name in (a, b)}))
    index = {name: i for i, name in enumerate(models)}
    rows: Counter[tuple[int, int, float]] = Counter()
    for a, b, score_a, count in scored:
        i, j = index[a], index[b]
        rows[(i, j, score_a) if i < j else (j, i, 1.0 - score_a)] += count
    keys = sorted(rows)
    row_first = np.array([i for i, _, _ in keys], dtype=np.intp)
    row_second = np.array([j for _, j, _ in keys], dtype=np.intp)
    new_pair = np.r_[True, (row_first[1:] != row_first[:-1]) | (row_second[1:] != row_second[:-1])]
    starts = np.flatnonzero(new_pair[: len(keys)])
    first, second = row_first[starts], row_second[starts]
    incidence = np.zeros((len(starts), len(models)))
    incidence[np.arange(len(starts)), first] = 1.0
    incidence[np.arange(len(starts)), second] = -1.0
    return _Votes(
        models=models,
        row_counts=np.array([rows[key] for key in keys], dtype=np.int64),
        row_scores=np.array([y for _, _, y in keys], dtype=float),
        pair_starts=starts,
        first=first,
        second=second,
        incidence=incidence,
    )


def _identifiable_without_l2(votes: _Votes, n: np.ndarray, s: np.ndarray) -> bool:
    """Whether the graph "i won or tied a vote against j" is strongly connected (n, s of one round)."""
    reach = np.eye(len(votes.models), dtype=bool)
    reach[votes.first[s > 0], votes.second[s > 0]] = True
    reach[votes.second[n > s], votes.first[n > s]] = True
    for _ in range(math.ceil(math.log2(len(votes.models)))):  # paths of length 2, 4, 8, ... ≥ K−1
        reach = reach @ reach
    return bool(reach.all())


def _objective(votes: _Votes, n: np.ndarray, s: np.ndarray, xi: np.ndarray, l2: float) -> np.ndarray:
    z = _LN10 * (xi[:, votes.first] - xi[:, votes.second])
    # s·softplus(−z) + (n−s)·softplus(z) = n·softplus(−z) + (n−s)·z: one log instead of two
    softplus_minus_z = np.maximum(-z, 0.0) + np.log1p(np.exp(-np.abs(z)))
    return (n * softplus_minus_z + (n - s) * z).sum(axis=1) + 0.5 * l2 * (xi * xi).sum(axis=1)


def _newton_step(votes: _Votes, n: np.ndarray, s: np.ndarray, xi: np.ndarray, l2: float) -> np.ndarray:
    rounds, size = xi.shape
    z = _LN10 * (xi[:, votes.first] - xi[:, votes.second])
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow
    gradient = _LN10 * (n * p - s) @ votes.incidence + l2 * xi
    weight = _LN10**2 * n * p * (1.0 - p)
    hessian = np.ones((rounds, size * size))  # flat for fast scatter; the 11ᵀ pins the common shift at l2 = 0
    hessian[:, votes.first * size + votes.second] -= weight
    hessian[:, votes.second * size + votes.first] -= weight
    hessian[:, np.arange(size) * (size + 1)] += weight @ np.abs(votes.incidence) + l2
    return -np.linalg.solve(hessian.reshape(rounds, size, size), gradient[..., None])[..., 0]


def _fit(votes: _Votes, n: np.ndarray, s: np.ndarray, l2: float, start: np.ndarray) -> np.ndarray:
    """ξ of shape (rounds, K) for pair totals n, s of shape (rounds, pairs), centred on 0."""
    xi = np.array(start, dtype=float)
    value = _objective(votes, n, s, xi, l2)
    active = np.arange(len(xi))
    for _ in range(_MAX_NEWTON_STEPS):
        if not active.size:
            xi -= xi.mean(axis=1, keepdims=True)  # no-op at an l2 > 0 optimum; fixes the free shift at l2 = 0
            return xi
        n_a, s_a, xi_a, value_a = n[active], s[active], xi[active], value[active]
        step = _newton_step(votes, n_a, s_a, xi_a, l2)
        fraction = np.ones(len(active))
        for _ in range(_MAX_HALVINGS):
            trial = xi_a + fraction[:, None] * step
            trial_value = _objective(votes, n_a, s_a, trial, l2)
            worse = trial_value > value_a + 1e-12 * (1.0 + np.abs(value_a))  # rounding, not progress
            if not worse.any():
                break
            fraction[worse] *= 0.5
        xi[active], value[active] = trial, trial_value
        active = active[np.abs(step).max(axis=1) >= _STEP_TOLERANCE]
    raise RuntimeError(f"Bradley–Terry did not converge in {_MAX_NEWTON_STEPS} Newton steps.")


def _check_l2(l2: float) -> None:
    if not (math.isfinite(l2) and l2 >= 0.0):
        raise ValueError(f"l2 must be a finite number ≥ 0, got {l2!r}.")


def _point_fit(votes: _Votes, l2: float) -> np.ndarray:
    """ξ (K,) on all votes; raises NotIdentifiable when l2 = 0 and no finite maximum exists."""
    n, s = votes.pair_totals(votes.row_counts[None])
    if l2 == 0.0 and not _identifiable_without_l2(votes, n[0], s[0]):
        raise NotIdentifiable(
            "Without l2 these votes have no finite Bradley–Terry fit: some group of models won (or lost) "
            "every vote against the rest, or the models fall into groups never compared. Pass l2 > 0."
        )
    return _fit(votes, n, s, l2, np.zeros((1, len(votes.models))))[0]


def bradley_terry(
    battles: Iterable[Battle], l2: float = 0.0, anchor: tuple[str, float] | None = None
) -> dict[str, float]:
    """Maximum-likelihood ratings `1000 + 400·ξ`; mean 1000, or shifted so that `anchor` holds exactly."""
    _check_l2(l2)
    votes = _collapse(battles)
    if not votes.models:
        return {}
    ratings = INITIAL_RATING + SCALE * _point_fit(votes, l2)
    result = dict(zip(votes.models, ratings.tolist(), strict=True))
    if anchor is not None:
        name, value = anchor
        if name not in result:
            raise ValueError(f"The anchor {name!r} is not among the rated models.")
        shift = value - result[name]
        result = {model: rating + shift for model, rating in result.items()}
        result[name] = float(value)
    return result


_BOOTSTRAP_CHUNK = 250  # rounds fitted together: a (250, K, K) Hessian stack stays small


def bootstrap_intervals(
    battles: Iterable[Battle], rounds: int = 1000, seed: int = 0, l2: float = DEFAULT_BOOTSTRAP_L2
) -> dict[str, tuple[float, float, float]]:
    """Per model: (2.5th percentile, the fit on all votes, 97.5th percentile) over `rounds` resamples.

    Percentiles are numpy's linear interpolation over the resampled ratings, each resample centred on
    1000 like the point estimate. A model that a resample happens to miss gets the prior's 1000 there.
    """
    _check_l2(l2)
    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds!r}.")
    votes = _collapse(battles)
    if not votes.models:
        return {}
    point = _point_fit(votes, l2)
    total = int(votes.row_counts.sum())
    rng = np.random.default_rng(seed)
    resampled = []
    for chunk_start in range(0, rounds, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, rounds - chunk_start)
        counts = rng.multinomial(total, votes.row_counts / total, size=size)
        n, s = votes.pair_totals(counts)
        resampled.append(_fit(votes, n, s, max(l2, BOOTSTRAP_L2_FLOOR), np.tile(point, (size, 1))))
    low, high = np.percentile(INITIAL_RATING + SCALE * np.concatenate(resampled), [2.5, 97.5], axis=0)
    estimate = INITIAL_RATING + SCALE * point
    return {name: (float(low[m]), float(estimate[m]), float(high[m])) for m, name in enumerate(votes.models)}


def ranks_from_intervals(intervals: dict[str, tuple[float, float, float]]) -> dict[str, int]:
    """1 + the number of models whose lower bound is above this model's upper bound (ties share a rank)."""
    lows = [low for low, _, _ in intervals.values()]
    return {name: 1 + sum(low > high for low in lows) for name, (_, _, high) in intervals.items()}
