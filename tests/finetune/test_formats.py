"""Preference files in other formats: Anthropic HH converted to TRL's conversational format line for line, KTO and
unknown shapes refused naming the accepted formats."""

import json

import pytest

from apps.finetune.datasets import DatasetInvalid
from apps.finetune.formats import hh_record_convert, preference_file_convert


def hh(prompt_turns: list[tuple[str, str]], chosen: str, rejected: str) -> dict:
    prefix = "".join(f"\n\n{who}: {text}" for who, text in prompt_turns)
    return {"chosen": f"{prefix}\n\nAssistant: {chosen}", "rejected": f"{prefix}\n\nAssistant: {rejected}"}


def jsonl(*rows) -> bytes:
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows).encode()


def test_an_hh_example_becomes_the_shared_prompt_and_the_two_answers():
    row = hh([("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "Name a fruit")], "A pear.", "No.")
    assert hh_record_convert(row) == {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a fruit"},
        ],
        "chosen": [{"role": "assistant", "content": "A pear."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }


def test_an_hh_file_is_converted_line_for_line_and_bad_lines_are_reported_where_they_are():
    good = hh([("Human", "Q1")], "Yes", "No")
    different_prompts = {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}
    no_turns = {"chosen": "just text", "rejected": "other text"}
    ends_with_human = {
        "chosen": "\n\nHuman: A\n\nAssistant: x\n\nHuman: more",
        "rejected": "\n\nHuman: A\n\nAssistant: y",
    }
    raw, problems = preference_file_convert(jsonl(good, "", different_prompts, no_turns, ends_with_human, "{oops"))
    lines = raw.split(b"\n")
    assert len(lines) == 6  # the line numbers stay the file's
    assert json.loads(lines[0]) == hh_record_convert(good)
    assert lines[2] == lines[3] == lines[4] == b""  # refused lines are blanked ...
    assert lines[5] == b"{oops"  # ... and what is not HH is left for dataset_parse to report
    assert [(p.line, p.reason) for p in problems] == [
        (
            3,
            "Anthropic HH: 'chosen' and 'rejected' do not share the prompt (everything before the last Assistant turn)",
        ),
        (4, "Anthropic HH: 'chosen' has text before its first “Human:” turn"),
        (5, "Anthropic HH: 'chosen' must end with an “Assistant:” turn"),
    ]


def test_a_trl_file_is_left_as_it_is():
    raw = jsonl({"prompt": [{"role": "user", "content": "Q"}], "chosen": [], "rejected": []})
    assert preference_file_convert(raw) == (raw, [])


def test_kto_is_refused_whole_naming_the_accepted_formats():
    raw = jsonl({"prompt": [{"role": "user", "content": "Q"}], "completion": [], "label": True})
    with pytest.raises(DatasetInvalid) as refused:
        preference_file_convert(raw)
    [problem] = refused.value.problems
    assert problem.line == 0 and "KTO" in problem.reason and "Anthropic HH" in problem.reason


def test_an_unknown_shape_gets_one_problem_naming_the_accepted_formats():
    _, problems = preference_file_convert(jsonl({"question": "Q", "answer": "A"}))
    [problem] = problems
    assert problem.line == 0 and problem.reason.startswith("the first example's keys are answer, question;")
    assert "TRL's conversational format" in problem.reason
