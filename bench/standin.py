"""The stand-in judge: an automatic, deterministic preference that plays the human labelers and voters in
bench/loop.py and in the learning loop's slow test.

It is "the brief reader". The guideline it follows (also shown to the stand-in labelers as the task set's
guideline) says: answer in at most `MAX_WORDS` words, open with a one-line summary, and finish the answer.
Each answer gets a score:

    score = finished + summary_first − overrun

- `finished` (1 or 0): the answer ends a sentence (its last character, after closing quotes, brackets or
  Markdown emphasis, is `.`, `!` or `?`). An answer cut off by the token limit ends mid-sentence.
- `summary_first` (1 or 0): the first non-empty line is one sentence of at most `SUMMARY_WORDS` words, and
  it ends with sentence punctuation: the reader gets the point in the first line.
- `overrun` (≥ 0): `(words − MAX_WORDS) / OVERRUN_WORDS` for an answer longer than `MAX_WORDS` words, else 0.
  Every `OVERRUN_WORDS` words past the limit cost as much as a missing summary.

Answers are ordered by score, then by fewer words, then by their index, so a ranking is always a total
order (labelers cannot submit ties) and the same inputs always give the same order. Comparing two answers
(`judge_compare`) uses the same key: 1 when the first is better, 0 when the second is, 0.5 when both keys
are equal (the same score and length).

Why these rules: SmolLM2-135M-Instruct at 128 tokens often rambles past the limit and is cut off, and
its answers vary enough from one sample to the next that some candidates meet the rules and some do not:
a preference a DPO fine-tune can learn from ~100 pairs, and one that a reader can check by eye. It is a
stand-in for humans, not a claim that shorter is better in general.
"""

import re

MAX_WORDS = 60
SUMMARY_WORDS = 25
OVERRUN_WORDS = 30

GUIDELINE = (
    f"Prefer the answer a busy reader wants: **at most {MAX_WORDS} words**, **a one-line summary first**, "
    "and **finished** (not cut off mid-sentence). Among answers that do equally well, prefer the shorter."
)

_WORD = re.compile(r"\w+(?:['’]\w+)*")
_TRAILING = re.compile(r"""[\s"'”’)\]*_`]+$""")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def _ends_sentence(text: str) -> bool:
    return _TRAILING.sub("", text)[-1:] in {".", "!", "?"}


def judge_score(*, answer: str) -> float:
    """The answer's score under the rules in the module docstring (higher is better)."""
    text = answer.strip()
    if not text:
        return -1.0
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].lstrip("#*-> ").strip()
    one_sentence = len(_SENTENCE_END.findall(_TRAILING.sub("", first))) <= 1
    summary_first = one_sentence and _words(first) <= SUMMARY_WORDS and _ends_sentence(first)
    words = _words(text)
    overrun = max(0, words - MAX_WORDS) / OVERRUN_WORDS
    return float(_ends_sentence(text)) + float(summary_first) - overrun


def _key(answer: str) -> tuple[float, int]:
    return (round(judge_score(answer=answer), 9), -_words(answer))


def judge_rank(*, answers: list[str]) -> list[int]:
    """Indices of `answers`, best first (a total order; see the module docstring)."""
    return sorted(range(len(answers)), key=lambda i: (*(-part for part in _key(answers[i])), i))


def judge_compare(first: str, second: str) -> float:
    """1.0 when `first` is better, 0.0 when `second` is, 0.5 when the judge cannot tell them apart."""
    a, b = _key(first), _key(second)
    return 1.0 if a > b else 0.0 if a < b else 0.5
