"""Fine-tuning datasets: every problem in a file found with its line, and a valid file parsed whole."""

import io
import json

import pytest

from apps.finetune.datasets import (
    MAX_PROBLEMS,
    PREFERENCE_COST,
    DatasetInvalid,
    DatasetKind,
    chat_token_counter,
    dataset_parse,
    example_canonical_json,
)


def words(messages: list[dict]) -> int:
    """A token counter for the tests: one token per word, plus two per message for the template."""
    return sum(len(m["content"].split()) + 2 for m in messages)


def sft(*turns: tuple[str, str], **extra) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra})


def preference(prompt: str, chosen: str, rejected: str, **extra) -> str:
    return json.dumps(
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            **extra,
        }
    )


GOOD = sft(("user", "What is LoRA?"), ("assistant", "A low-rank adapter for fine-tuning."))


def parse(lines: list[str | bytes], kind=DatasetKind.SFT, **options):
    raw = b"\n".join(line.encode() if isinstance(line, str) else line for line in lines)
    return dataset_parse(file=io.BytesIO(raw), kind=kind, count_tokens=options.pop("count_tokens", words), **options)


def problems_of(lines: list[str | bytes], kind=DatasetKind.SFT, **options) -> list[tuple[int, str]]:
    with pytest.raises(DatasetInvalid) as refused:
        parse(lines, kind, **options)
    return [(p.line, p.reason) for p in refused.value.problems]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ('{"messages": [', "invalid JSON: Expecting value (column 15)"),
        (b'{"messages": "caf\xe9"}', "not valid UTF-8 (byte 0xE9 at position 18 of the line)"),
        ("\ufeff" + GOOD, "a byte-order mark in the middle of the file (were two files joined?); remove it"),
        ('{"messages": [], "messages": []}', "invalid example: the key 'messages' appears twice in one object"),
        ("[1, 2]", "each line must be one JSON object, not a list"),
        (json.dumps({"text": "hi"}), "no 'messages'"),
        (preference("q", "a", "b"), "no 'messages' (this looks like a preference example)"),
        (json.dumps({"messages": []}), "'messages' must be a non-empty list of messages"),
        (
            sft(("user", "q"), ("system", "be brief"), ("assistant", "a")),
            "message 2 of the conversation is a system message; a system message may only come first",
        ),
        (
            sft(("assistant", "a"), ("user", "q"), ("assistant", "b")),
            "the conversation must start with a user message (after an optional system message)",
        ),
        (
            sft(("user", "q"), ("user", "q again"), ("assistant", "a")),
            "message 2 of the conversation is a second user message in a row; they must alternate",
        ),
        (sft(("system", "s"), ("user", "q")), "the conversation has no assistant message to learn from"),
        (
            sft(("user", "q"), ("assistant", "a"), ("user", "and?")),
            "the conversation must end with an assistant message",
        ),
        (sft(("user", "q"), ("assistant", " \u200b\u2060 ")), "message 2 of the conversation (assistant) is empty"),
        (
            sft(("tool", "{}"), ("user", "q"), ("assistant", "a")),
            "message 1 of the conversation has the role 'tool'; the roles are system, user and assistant",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "q"}]},
                        {"role": "assistant", "content": "a"},
                    ]
                }
            ),
            "message 1 of the conversation has content that is a list; content must be text",
        ),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
            ),
            "message 2 of the conversation has 'weight': per-message training weights are not supported; "
            "remove the key (every assistant turn is trained)",
        ),
        (sft(("user", "q"), ("assistant", "a"), tools=[]), "'tools': tool definitions are not supported"),
        (
            sft(("user", "word " * 1100), ("assistant", "a")),
            "the example is 1,105 tokens; the training length is 1,024",
        ),
    ],
)
def test_each_problem_is_reported_with_its_line(bad, reason):
    assert problems_of([GOOD, "", bad, GOOD]) == [(3, reason)]


@pytest.mark.parametrize(
    ("bad", "reasons"),
    [
        (
            sft(("user", "q"), ("assistant", "a")),
            ["no 'prompt' or 'chosen' or 'rejected' (this looks like a sft example)"],
        ),
        (preference("q", "same", "same"), ["'chosen' and 'rejected' are the same answer; the pair teaches nothing"]),
        (
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen": [{"role": "user", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
                }
            ),
            ["'chosen' must be exactly one assistant message", "'rejected' must be exactly one assistant message"],
        ),
        (
            json.dumps(
                {
                    "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "chosen": [{"role": "assistant", "content": "b"}],
                    "rejected": [{"role": "assistant", "content": "c"}],
                }
            ),
            ["the prompt must end with a user message"],
        ),
        (
            preference("word " * 600, "word " * 600, "short"),
            ["the example is 1,204 tokens; the training length is 1,024"],
        ),
    ],
)
def test_preference_problems(bad, reasons):
    good = preference("Which is kinder?", "The first one.", "Whatever.")
    assert problems_of([good, bad], kind=DatasetKind.PREFERENCE) == [(2, r) for r in reasons]


def test_every_problem_is_collected_and_no_example_comes_back():
    lines = [GOOD, "{", GOOD, sft(("user", "q")), b"\xff", GOOD, "[]"]
    with pytest.raises(DatasetInvalid) as refused:
        parse(lines)
    assert [p.line for p in refused.value.problems] == [2, 4, 5, 7]
    assert refused.value.more == 0
    assert not hasattr(refused.value, "examples")


def test_problems_are_capped_and_the_rest_counted():
    with pytest.raises(DatasetInvalid) as refused:
        parse(["{"] * (MAX_PROBLEMS + 30))
    assert len(refused.value.problems) == MAX_PROBLEMS
    assert refused.value.more == 30
    assert str(refused.value).startswith(f"{MAX_PROBLEMS + 30} problem(s) (and 30 more); first: line 1: invalid JSON")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "the file has no examples"),
        (b"\n  \n", "the file has no examples"),
        ("\n".join([GOOD] * 3).encode("utf-16"), "the file is UTF-16; save it as UTF-8"),
        ("\n".join([GOOD] * 3).encode("utf-32"), "the file is UTF-32; save it as UTF-8"),
        (("\n".join([GOOD] * 200)).encode(), "the file is larger than the limit of 10,000 bytes"),
    ],
)
def test_the_file_as_a_whole_is_refused(raw, reason):
    with pytest.raises(DatasetInvalid) as refused:
        dataset_parse(file=io.BytesIO(raw), kind=DatasetKind.SFT, count_tokens=words, max_bytes=10_000)
    assert [(p.line, p.reason) for p in refused.value.problems] == [(0, reason)]


def test_a_clean_file_is_accepted_with_counts_hashes_and_estimate():
    lines = [
        b"\xef\xbb\xbf" + sft(("system", "Be brief."), ("user", "Hi there"), ("assistant", "Hello!"), id=7).encode(),
        b"",
        sft(
            ("user", "One"), ("assistant", "Two three"), ("user", "Four"), ("assistant", "Five six seven"), id=8
        ).encode()
        + b"\r",
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Hi there", "name": "ann"},
                    {"role": "assistant", "content": "Hello!"},
                ]
            }
        ),
    ]
    dataset = parse(lines, tokens_per_second=4.0)
    assert [e.line for e in dataset.examples] == [1, 3, 4]
    assert [e.tokens for e in dataset.examples] == [11, 15, 7]
    assert dataset.tokens == 33 and dataset.seconds_per_epoch == 33 / 4
    assert [(w.line, w.reason) for w in dataset.warnings] == [
        (1, "'id' is ignored on 2 line(s); it does not change what is trained"),
        (4, "'name' in a message is ignored on 1 line(s); it does not change what is trained"),
    ]
    # Only what trains is kept and hashed: the third example is the first one's conversation without its
    # system prompt, so it differs; dropped keys and formatting change nothing.
    assert dataset.records[2] == {
        "messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
    }
    again = parse([json.dumps(dataset.records[2], indent=2).replace("\n", " ")])
    assert again.examples[0].sha256 == dataset.examples[2].sha256
    assert len({e.sha256 for e in dataset.examples}) == 3
    assert dataset.sha256 != again.sha256
    assert example_canonical_json(dataset.records[2]) == (
        '{"messages":[{"content":"Hi there","role":"user"},{"content":"Hello!","role":"assistant"}]}'
    )  # fmt: skip


def test_a_preference_pair_counts_both_sequences_and_the_reference_pass():
    dataset = parse([preference("Say hi", "Hi, nice to meet you", "No")], kind="preference", tokens_per_second=1.0)
    prompt = 2 + 2
    assert dataset.examples[0].tokens == (prompt + 5 + 2) + (prompt + 1 + 2)
    assert dataset.seconds_per_epoch == pytest.approx(dataset.tokens * PREFERENCE_COST)
    assert dataset.records[0]["chosen"] == [{"role": "assistant", "content": "Hi, nice to meet you"}]


@pytest.mark.slow
@pytest.mark.django_db
def test_the_real_tokenizer_counts_the_chat_template(models_ready):
    chat = models_ready[("smollm2-135m-instruct", "fp32")]
    count = chat_token_counter(tokenizer_dir=chat.path / "hf")
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    with_system = [{"role": "system", "content": "Be brief."}, *short]
    # SmolLM2's template adds its own system prompt to a conversation without one: more tokens, not fewer.
    assert count(short) > count(with_system) > 6
    long = sft(("user", "tell me more " * 120), ("assistant", "ok"))
    assert problems_of([GOOD, long], count_tokens=count, max_tokens=256)[0][0] == 2
    assert parse([GOOD], count_tokens=count).tokens == count(json.loads(GOOD)["messages"])
