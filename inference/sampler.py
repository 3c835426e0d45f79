"""Next-token choice with OpenAI's semantics, one sequence at a time, in numpy.

Order: repetition penalty (prompt and output, HF style) -> frequency/presence penalties (output only,
OpenAI's formula) -> logprobs are reported from this distribution -> temperature 0 is greedy, else
temperature, top_k, top_p, and a draw from the sequence's own seeded generator.
"""

from dataclasses import dataclass, field

import numpy as np

MAX_TOP_LOGPROBS = 20
_NUCLEUS_CANDIDATES = 256  # top-p looks at this many first; a full sort only when they hold < top_p


@dataclass(frozen=True)
class Bound:
    """The accepted range of one sampling setting. The one source: the server's request schema, the web
    API's checks and the assistant builder's constraints all derive from (or are tested against) these."""

    low: float
    high: float
    low_inclusive: bool = True

    def __contains__(self, value: float) -> bool:
        return (value >= self.low if self.low_inclusive else value > self.low) and value <= self.high

    def __str__(self) -> str:
        return f"{'[' if self.low_inclusive else '('}{self.low:g}, {self.high:g}]"

    def pydantic(self) -> dict[str, float]:
        return {"ge" if self.low_inclusive else "gt": self.low, "le": self.high}


SAMPLING_BOUNDS = {
    "temperature": Bound(0.0, 2.0),
    "top_p": Bound(0.0, 1.0, low_inclusive=False),
    "frequency_penalty": Bound(-2.0, 2.0),
    "presence_penalty": Bound(-2.0, 2.0),
    "repetition_penalty": Bound(0.0, 10.0, low_inclusive=False),
}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        for name, bound in SAMPLING_BOUNDS.items():
            if getattr(self, name) not in bound:
                raise ValueError(f"{name} must be in {bound}")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")


@dataclass
class TokenChoice:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)  # (token, logprob), best first


class Sampler:
    """The sampling state of one sequence: its parameters, its generator and its token counts."""

    def __init__(self, params: SamplingParams, *, prompt: list[int], vocab_size: int, stream: int = 0) -> None:
        self.params = params
        # n > 1 choices of one seeded request each get their own reproducible stream.
        self.rng = np.random.default_rng(None if params.seed is None else [params.seed, stream])
        # frequency_penalty * count + presence_penalty * (count > 0), kept up to date one token at a time
        # rather than rebuilt from the counts (several vocab-sized temporaries) on every step.
        self.output_penalty = np.zeros(vocab_size, dtype=np.float32)
        self.output_seen = np.zeros(vocab_size, dtype=bool)
        self.seen = np.zeros(vocab_size, dtype=bool)
        self.seen[np.asarray(prompt, dtype=np.int64)] = True

    def choose(self, logits: np.ndarray) -> TokenChoice:
        p = self.params
        penalized = p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty
        if penalized:  # a copy: n > 1 choices share the prefill's logits row
            logits = logits.astype(np.float32, copy=True)
        if p.repetition_penalty != 1.0:
            seen = logits[self.seen]
            logits[self.seen] = np.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        if p.frequency_penalty or p.presence_penalty:
            logits -= self.output_penalty

        log_probs = None
        if p.logprobs or p.top_logprobs:
            shifted = logits - logits.max()
            log_probs = shifted - np.log(np.exp(shifted).sum())

        token = int(np.argmax(logits)) if p.temperature == 0.0 else self._draw(logits / p.temperature)

        self.output_penalty[token] += p.frequency_penalty + (0.0 if self.output_seen[token] else p.presence_penalty)
        self.output_seen[token] = True
        self.seen[token] = True
        choice = TokenChoice(token)
        if log_probs is not None:
            choice.logprob = float(log_probs[token])
            if p.top_logprobs:
                best = np.argpartition(-log_probs, p.top_logprobs)[: p.top_logprobs]
                best = best[np.argsort(-log_probs[best], kind="stable")]
                choice.top = [(int(t), float(log_probs[t])) for t in best]
        return choice

    def _draw(self, logits: np.ndarray) -> int:
        p = self.params
        candidates = np.argpartition(-logits, p.top_k - 1)[: p.top_k] if p.top_k and p.top_k < logits.size else None
        scores = logits[candidates] if candidates is not None else logits
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = _top_order(probs, p.top_p)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), p.top_p)) + 1]
            kept = probs[keep] / probs[keep].sum()
            pick = keep[self.rng.choice(keep.size, p=kept)]
        else:
            pick = self.rng.choice(probs.size, p=probs)
        return int(candidates[pick] if candidates is not None else pick)


def _top_order(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices by descending probability, at least until their mass reaches top_p (exact, usually cheap)."""
    if probs.size > _NUCLEUS_CANDIDATES:
        head = np.argpartition(-probs, _NUCLEUS_CANDIDATES - 1)[:_NUCLEUS_CANDIDATES]
        head = head[np.argsort(-probs[head], kind="stable")]
        if probs[head].sum() >= top_p:
            return head
    return np.argsort(-probs, kind="stable")
