"""Vote hygiene: identity leaks, and voters who disagree with the crowd more than chance allows.

Identity leak: a blind vote is only blind while neither answer names an assistant. An answer that
contains either side's assistant name (or its address slug) as a whole word, case-insensitively,
makes its battle excluded. Short names (under 3 characters) are not matched: they would exclude
battles for ordinary words.

Outliers: for each rated, decisive (A or B) vote of a user, the pair's majority is taken from every
other user's decisive votes on the same pair (ties and both-bad say nothing about direction and are
skipped; pairs the others split evenly, or never voted on, are skipped). Under the null hypothesis
that the user votes like the crowd, a vote agrees with the majority with probability equal to the
majority's share m of the others' votes. The agreements are then Poisson-binomial; we approximate
them by a binomial with p = mean(m) and take the one-sided tail P(X ≤ agreements). A user with at
least `ARENA_OUTLIER_MIN_VOTES` compared votes and a tail below `ARENA_OUTLIER_ALPHA` (0.001 by
default, a strict threshold because every user is tested) is flagged for an admin. Nothing is
excluded automatically: an admin decides.
"""

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from apps.arena.sampler import pair_key


def identity_leak(*, texts: Iterable[str], names: Iterable[str]) -> str:
    """The first name found in any text as a whole word (case-insensitive), or ""."""
    patterns = [
        (name, re.compile(rf"(?<!\w){re.escape(name)}(?!\w)", re.IGNORECASE))
        for name in {name.strip() for name in names}
        if len(name) >= 3
    ]
    for text in texts:
        for name, pattern in patterns:
            if pattern.search(text):
                return name
    return ""


def binomial_lower_tail(*, successes: int, trials: int, p: float) -> float:
    """P(X ≤ successes) for X ~ Binomial(trials, p), summed exactly (trials are a user's votes)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if successes >= trials else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for k in range(successes + 1):
        log_term = math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        total += math.exp(log_term + k * log_p + (trials - k) * log_q)
    return min(total, 1.0)


@dataclass(frozen=True)
class VoterAgreement:
    user_id: int
    votes_compared: int
    agreements: int
    expected_agreement: float
    p_value: float


def voter_agreements(votes: Iterable[tuple[int, int, int, str]]) -> list[VoterAgreement]:
    """Per user, agreement with the leave-that-user-out majority; `votes` are (user, version_a,
    version_b, outcome) with outcome "a" or "b" (other outcomes are skipped)."""
    # wins[pair][version]: decisive votes for each version of the pair, overall and per user
    wins: dict[tuple[int, int], Counter] = defaultdict(Counter)
    by_user: dict[int, list[tuple[tuple[int, int], int]]] = defaultdict(list)
    for user_id, version_a, version_b, outcome in votes:
        if outcome not in ("a", "b"):
            continue
        winner = version_a if outcome == "a" else version_b
        pair = pair_key(version_a, version_b)
        wins[pair][winner] += 1
        by_user[user_id].append((pair, winner))
    results = []
    for user_id, user_votes in by_user.items():
        own: dict[tuple[int, int], Counter] = defaultdict(Counter)
        for pair, winner in user_votes:
            own[pair][winner] += 1
        compared = agreements = 0
        shares = 0.0
        for pair, winner in user_votes:
            others = wins[pair] - own[pair]
            first, second = others[pair[0]], others[pair[1]]
            if first == second:
                continue
            majority = pair[0] if first > second else pair[1]
            compared += 1
            agreements += winner == majority
            shares += max(first, second) / (first + second)
        if compared:
            expected = shares / compared
            p_value = binomial_lower_tail(successes=agreements, trials=compared, p=expected)
            results.append(VoterAgreement(user_id, compared, agreements, expected, p_value))
    return results
