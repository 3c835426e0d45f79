"""Preference files in formats other than TRL's conversational one, converted to it line by line before
`dataset_parse` reads them, so its line numbers stay those of the uploaded file.

- TRL conversational (`{"prompt": [...], "chosen": [...], "rejected": [...]}`, the labeling panel's DPO export):
  read as is.
- Anthropic HH (`{"chosen": "\\n\\nHuman: …\\n\\nAssistant: …", "rejected": "…"}`, the labeling panel's HH export
  and Anthropic's own files): each transcript is split on its `Human:` / `Assistant:` turn markers; everything
  before the last Assistant turn is the prompt, and it must be the same in both transcripts (the shared prefix).
  Turn text is kept exactly; a turn that itself contains "\\n\\nHuman: " is read as two turns, as every HH reader
  does (the format has no escaping).
- KTO (`prompt`, `completion`, `label`): refused as a whole, saying which formats are accepted. Its examples are
  unpaired; making pairs of them would invent comparisons nobody made.

The format is the first JSON object's: a file mixing formats gets per-line problems from `dataset_parse`, and a
file in none of these formats gets, besides those, one problem naming the accepted formats.
"""

import json
import re

from apps.finetune.datasets import DatasetInvalid, Problem

ACCEPTED = (
    'accepted preference files are TRL\'s conversational format (one {"prompt", "chosen", "rejected"} object '
    'per line, as the labeling panel\'s DPO export) and Anthropic HH ("chosen" and "rejected" transcripts that '
    "share the prompt)"
)
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ")
_UTF8_BOM = b"\xef\xbb\xbf"


def _object(line: bytes) -> dict | None:
    try:
        data = json.loads(line.decode("utf-8").lstrip("\ufeff"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_hh(data: dict) -> bool:
    return isinstance(data.get("chosen"), str) and isinstance(data.get("rejected"), str) and "prompt" not in data


def _transcript(text: str, side: str) -> list[dict]:
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"{side!r} has text before its first “Human:” turn")
    if len(parts) < 3:
        raise ValueError(f"{side!r} has no “Human:” and “Assistant:” turns")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": content}
        for who, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def hh_record_convert(data: dict) -> dict:
    """One Anthropic HH example as a TRL conversational preference example (ValueError says what is wrong)."""
    chosen, rejected = _transcript(data["chosen"], "chosen"), _transcript(data["rejected"], "rejected")
    for side, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise ValueError(f"{side!r} must end with an “Assistant:” turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("'chosen' and 'rejected' do not share the prompt (everything before the last Assistant turn)")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def preference_file_convert(raw: bytes) -> tuple[bytes, list[Problem]]:
    """`raw` as TRL conversational JSONL (unchanged when it already is), and the lines that could not be
    converted, each left blank in the result. Raises `DatasetInvalid` for a format that is not accepted."""
    lines = raw.removeprefix(_UTF8_BOM).split(b"\n")
    first = next((data for line in lines if (data := _object(line)) is not None), None)
    if first is None:
        return raw, []
    if "completion" in first and "label" in first:
        raise DatasetInvalid(
            [Problem(0, f"this is a KTO file (prompt, completion, label) of unpaired answers; {ACCEPTED}")]
        )
    if "prompt" in first:
        return raw, []
    if not _is_hh(first):
        keys = ", ".join(sorted(first)) or "none"
        return raw, [Problem(0, f"the first example's keys are {keys}; {ACCEPTED}")]
    converted, problems = [], []
    for number, line in enumerate(lines, start=1):
        data = _object(line)
        if data is None or not _is_hh(data):
            converted.append(line)  # dataset_parse says what is wrong with it
            continue
        try:
            record = hh_record_convert(data)
        except ValueError as error:
            problems.append(Problem(number, f"Anthropic HH: {error}"))
            converted.append(b"")
        else:
            converted.append(json.dumps(record, ensure_ascii=False).encode())
    return b"\n".join(converted), problems
