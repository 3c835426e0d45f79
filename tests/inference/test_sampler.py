"""Sampling semantics and streaming detokenization (numpy and the tiny byte-level tokenizer; milliseconds)."""

import numpy as np
import pytest

from inference.sampler import Sampler, SamplingParams
from inference.tokenizer import Detokenizer
from tests.tiny_models import tiny_tokenizer

VOCAB = 50


def logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, VOCAB).astype(np.float32)


def draws(params: SamplingParams, n: int = 200, stream: int = 0) -> list[int]:
    sampler = Sampler(params, prompt=[], vocab_size=VOCAB, stream=stream)
    return [sampler.choose(logits()).token for _ in range(n)]


def test_temperature_zero_and_top_k_one_are_greedy():
    best = int(logits().argmax())
    assert set(draws(SamplingParams(temperature=0.0), 5)) == {best}
    assert set(draws(SamplingParams(temperature=1.5, top_k=1, seed=3), 50)) == {best}


def test_top_p_keeps_only_the_nucleus():
    probs = np.exp(logits() - logits().max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), 0.5)) + 1].tolist())
    got = set(draws(SamplingParams(temperature=1.0, top_p=0.5, seed=1), 400))
    assert got <= nucleus and len(got) == len(nucleus)


def test_a_seed_repeats_and_streams_differ():
    params = SamplingParams(temperature=1.0, seed=42)
    assert draws(params) == draws(params)
    assert draws(params, stream=1) != draws(params, stream=0)
    assert draws(SamplingParams(temperature=1.0)) != draws(SamplingParams(temperature=1.0))


def test_penalties_push_repeated_tokens_down():
    flat = np.zeros(VOCAB, dtype=np.float32)
    flat[7] = 1.0
    sampler = Sampler(SamplingParams(temperature=0.0, presence_penalty=2.0), prompt=[], vocab_size=VOCAB)
    assert sampler.choose(flat).token == 7
    assert sampler.choose(flat).token != 7  # 1.0 - 2.0 presence penalty loses to 0
    repeat = Sampler(SamplingParams(temperature=0.0, repetition_penalty=3.0), prompt=[7], vocab_size=VOCAB)
    flat[3] = 0.5
    assert repeat.choose(flat).token == 3  # 1.0 / 3 < 0.5: the prompt's token is penalized too


def test_logprobs_are_normalized_and_top_alternatives_sorted():
    choice = Sampler(
        SamplingParams(temperature=0.0, logprobs=True, top_logprobs=20), prompt=[], vocab_size=VOCAB
    ).choose(logits())
    values = [lp for _, lp in choice.top]
    assert len(values) == 20 and values == sorted(values, reverse=True)
    assert choice.top[0] == (choice.token, choice.logprob)
    shifted = logits() - logits().max()
    assert choice.logprob == pytest.approx(float(shifted[choice.token] - np.log(np.exp(shifted).sum())), abs=1e-5)


@pytest.mark.parametrize(
    "bad",
    [{"temperature": 3}, {"top_p": 0}, {"top_logprobs": 21}, {"frequency_penalty": 2.5}, {"repetition_penalty": 0}],
)
def test_out_of_range_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


class _Tokenizer:
    def __init__(self):
        self.hf = tiny_tokenizer()

    def decode(self, ids):
        return self.hf.decode(ids)


def test_streamed_text_never_splits_a_multibyte_character():
    tokenizer = _Tokenizer()
    text = "naïve café 🙂 déjà vu — 東京"
    ids = tokenizer.hf(text)["input_ids"]
    assert len(ids) > len(text) / 3  # byte-level pieces: characters really are spread over tokens
    detokenizer = Detokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in ids] + [detokenizer.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_frequency_and_presence_penalties_follow_openais_formula():
    # logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty, counting output tokens only
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.3, top_logprobs=20)
    sampler = Sampler(params, prompt=[4], vocab_size=VOCAB)
    forced = np.zeros(VOCAB, dtype=np.float32)
    forced[3] = 50.0
    sampler.choose(forced)
    sampler.choose(forced)
    rest = np.full(VOCAB, -10.0, dtype=np.float32)
    rest[3] = rest[4] = 5.0  # the penalized token, a prompt token and token 5 lead the rest
    rest[5] = 4.0
    top = dict(sampler.choose(rest).top)
    assert top[4] - top[3] == pytest.approx(2 * 0.5 + 0.3, abs=1e-5)
    assert top[4] - top[5] == pytest.approx(1.0, abs=1e-5)  # the prompt's tokens are not penalized
