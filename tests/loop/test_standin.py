"""The stand-in judge's rules on answers worked out by hand, its orders, and the bench's prompt split and bootstrap."""

import pytest

from bench.loop import TEMPLATES, bootstrap_interval, prompt_split
from bench.standin import MAX_WORDS, OVERRUN_WORDS, judge_compare, judge_rank, judge_score

SUMMARY_THEN_LIST = "Bees pollinate plants.\n\n- They carry pollen.\n- They make honey."
NO_SUMMARY = "Bees, which are insects that many people know, pollinate plants and make honey, and also they"


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        (SUMMARY_THEN_LIST, 2.0),  # finished, summary first, short
        ("Bees pollinate plants. They also make honey.", 1.0),  # finished, but two sentences on the first line
        ("**Bees pollinate plants.**", 2.0),  # emphasis around the last sentence still ends it
        (NO_SUMMARY, 0.0),  # cut off mid-sentence: neither finished nor a summary
        ("", -1.0),
        ("Bees matter.\n" + "word " * (MAX_WORDS + OVERRUN_WORDS - 3) + "end.", 2.0 - 1.0),  # 30 words over: −1
    ],
)
def test_scores_by_hand(answer, score):
    assert judge_score(answer=answer) == pytest.approx(score)


def test_rank_is_a_total_order_by_score_then_fewer_words_then_index():
    answers = [NO_SUMMARY, SUMMARY_THEN_LIST, "Bees pollinate plants.", "Bees pollinate plants."]
    assert judge_rank(answers=answers) == [2, 3, 1, 0]
    assert judge_rank(answers=list(reversed(answers))) == [0, 1, 2, 3]


def test_compare_agrees_with_rank_and_ties_only_on_equal_keys():
    assert judge_compare("Bees pollinate plants.", NO_SUMMARY) == 1.0
    assert judge_compare(NO_SUMMARY, "Bees pollinate plants.") == 0.0
    assert judge_compare("Bees pollinate plants.", "Ants build nests.") == 0.5  # same score, same length


def test_held_out_prompts_are_on_topics_never_trained_on():
    train, held = prompt_split(seed=3, train=100, held_out=40)
    assert len(train) == 100 and len(held) == 40 and not set(train) & set(held)

    def topic(prompt: str) -> str:
        for template in TEMPLATES:
            head, tail = template.split("{topic}")
            if prompt.startswith(head) and prompt.endswith(tail):
                return prompt[len(head) : len(prompt) - len(tail)]
        raise AssertionError(prompt)

    assert not {topic(p) for p in train} & {topic(p) for p in held}
    assert prompt_split(seed=3, train=100, held_out=40) == (train, held)


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_prompts():
    few = [1.0, 0.0, 1.0, 0.5, 1.0, 1.0, 0.0, 1.0]
    low, high = bootstrap_interval(few, seed=0)
    assert low < sum(few) / len(few) < high
    many_low, many_high = bootstrap_interval(few * 10, seed=0)
    assert high - low > 2 * (many_high - many_low)
    assert bootstrap_interval([1.0] * 5, seed=0) == (1.0, 1.0)
