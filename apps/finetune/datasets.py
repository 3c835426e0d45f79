"""Fine-tuning datasets: JSONL parsed and validated all or nothing, before anything is stored or trained.

Two kinds, one JSON object per line:
- `sft`: OpenAI's chat fine-tuning format, `{"messages": [{"role", "content"}, ...]}`: an optional system
  message first, then user and assistant alternating, starting with user and ending with assistant;
- `preference`: TRL's conversational preference format, `{"prompt": [...], "chosen": [...], "rejected": [...]}`:
  the prompt is a conversation as above that ends with a user message; `chosen` and `rejected` are one
  assistant message each, and differ.

`dataset_parse` either returns a `Dataset` (every example valid) or raises `DatasetInvalid` with every
problem it found, each with its line number and a plain reason (up to `MAX_PROBLEMS`, then a count of the
rest). There is no partial import: a caller holding examples holds a whole, valid file, and one holding the
error holds no examples at all.

Checked: the size limit (before anything is read past it); the encoding (UTF-8; a UTF-8 byte-order mark at
the start is accepted, one anywhere else or a UTF-16/32 file is refused with what to do about it); JSON
syntax and duplicate keys (two parsers may keep different ones); the shape, roles and order above; empty
messages (whitespace and invisible characters alone count as empty, through `unicode_clean`); and the
length of each example in tokens against the training length.

Tokens are counted by the caller's `count_tokens(messages) -> int`, which must format the conversation the
way training does: `chat_token_counter` builds one from a model's tokenizer and chat template. It has no
default on purpose: a byte-based estimate looks plausible and is wrong where it matters; SmolLM2's template
adds its own system prompt (about 20 tokens) to a conversation that has none, so a short example is two to
three times longer than its text suggests. A preference example counts prompt + chosen and prompt +
rejected: both must fit, and both are trained on.

Extra keys are ignored, with one warning per key naming how many lines had it, when they do not change
what is learned (`id`, `name`, metadata); they are refused when they would: OpenAI's `weight` (skips an
assistant turn), `tools`, `functions`, `tool_calls`, `function_call`, `tool_call_id`, and any content that
is not plain text. Examples keep only the keys that train, so `sha256` (over `example_canonical_json`:
sorted keys, no whitespace, UTF-8) is the provenance of exactly what the model sees.

The estimated training time is tokens / `tokens_per_second`, per epoch; a preference example costs 4/3 of
its tokens (DPO runs the reference model forward as well, about a third of a forward and backward pass).
`TOKENS_PER_SECOND` (30) comes from this 2-core machine: LoRA r=8 on q/k/v/o of SmolLM2-135M in fp32, torch
on 2 threads, batches of 4×256 tokens, 45 tokens/s at best and 22 median while the machine was shared (load
about 5). It is a planning figure; the trainer should pass its own measured rate once it has one.
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from apps.core.unicode import unicode_clean

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_TOKENS = 1024
MAX_PROBLEMS = 100
TOKENS_PER_SECOND = 30.0
PREFERENCE_COST = 4 / 3  # the reference model's forward pass
ROLES = ("system", "user", "assistant")
REFUSED_KEYS = {
    "weight": "per-message training weights are not supported; remove the key (every assistant turn is trained)",
    "tools": "tool definitions are not supported",
    "functions": "function definitions are not supported",
    "tool_calls": "tool calls are not supported",
    "function_call": "function calls are not supported",
    "tool_call_id": "tool results are not supported",
}
_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
_UTF8_BOM = b"\xef\xbb\xbf"


class DatasetKind(StrEnum):
    SFT = "sft"
    PREFERENCE = "preference"


TOP_KEYS = {DatasetKind.SFT: ("messages",), DatasetKind.PREFERENCE: ("prompt", "chosen", "rejected")}


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line of the file; 0 for the file as a whole
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line else self.reason


@dataclass(frozen=True)
class Example:
    line: int
    record: dict  # only the keys that train
    tokens: int  # training tokens (prompt + chosen and prompt + rejected for a preference pair)
    sha256: str


@dataclass(frozen=True)
class Dataset:
    kind: DatasetKind
    examples: tuple[Example, ...]
    warnings: tuple[Problem, ...]
    tokens: int
    seconds_per_epoch: float  # estimated, on this machine
    sha256: str  # over the examples' hashes, in order

    @property
    def records(self) -> list[dict]:
        """The examples as `dataset_scan` takes them; its `lines` index this list."""
        return [e.record for e in self.examples]


class DatasetInvalid(Exception):
    """The file is refused; `problems` says where and why (the first `MAX_PROBLEMS`, and `more` besides)."""

    def __init__(self, problems: list[Problem], more: int = 0):
        self.problems = problems
        self.more = more
        extra = f" (and {more} more)" if more else ""
        super().__init__(f"{len(problems) + more} problem(s){extra}; first: {problems[0]}")


def example_canonical_json(record: dict) -> str:
    """The one encoding an example is hashed in: sorted keys, no whitespace, non-ASCII as is."""
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def chat_token_counter(*, tokenizer_dir: Path) -> Callable[[list[dict]], int]:
    """A `count_tokens` for `dataset_parse`: the tokens of a conversation formatted with the model's own chat
    template, exactly as training formats it."""
    from transformers import AutoTokenizer  # heavy; only the caller that counts for real pays for it

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return lambda messages: len(tokenizer.apply_chat_template(messages, tokenize=True))


class _Problems:
    def __init__(self):
        self.found: list[Problem] = []
        self.more = 0

    def add(self, line: int, reason: str) -> None:
        if len(self.found) < MAX_PROBLEMS:
            self.found.append(Problem(line, reason))
        else:
            self.more += 1


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"the key {duplicated[0]!r} appears twice in one object")
    return dict(pairs)


def _message_problems(message: object, where: str, ignored: defaultdict[str, list[int]], line: int) -> list[str]:
    """What is wrong with one message on its own (not its place in the conversation)."""
    if not isinstance(message, dict):
        return [f"{where} must be an object with a role and a content"]
    problems = []
    for key in message:
        if key in REFUSED_KEYS:
            problems.append(f"{where} has {key!r}: {REFUSED_KEYS[key]}")
        elif key not in ("role", "content"):
            ignored[f"{key!r} in a message"].append(line)
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        shown = "no role" if role is None else f"the role {role!r}"
        problems.append(f"{where} has {shown}; the roles are system, user and assistant")
    if not isinstance(content, str):
        shown = "no content" if content is None else f"content that is a {type(content).__name__}"
        problems.append(f"{where} has {shown}; content must be text")
    elif not unicode_clean(content).text.strip():
        problems.append(f"{where} ({role}) is empty")
    return problems


def _conversation_problems(messages: list, name: str, *, ends_with: str) -> list[str]:
    """Order: an optional system message first, then user and assistant alternating from user."""
    problems = []
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            problems.append(f"message {i + 1} of {name} is a system message; a system message may only come first")
    turns = [(i, r) for i, r in enumerate(roles) if r in ("user", "assistant")]
    for position, (i, role) in enumerate(turns):
        if role != ("user" if position % 2 == 0 else "assistant"):
            if position == 0:
                problems.append(f"{name} must start with a user message (after an optional system message)")
            else:
                problems.append(f"message {i + 1} of {name} is a second {role} message in a row; they must alternate")
            break
    if ends_with == "assistant" and "assistant" not in roles:
        problems.append(f"{name} has no assistant message to learn from")
    elif turns and turns[-1][1] != ends_with:
        problems.append(f"{name} must end with {'an assistant' if ends_with == 'assistant' else 'a user'} message")
    return problems


def _record_problems(data: dict, kind: DatasetKind, line: int, ignored: defaultdict[str, list[int]]) -> list[str]:
    problems = []
    for key in data:
        if key in REFUSED_KEYS:
            problems.append(f"{key!r}: {REFUSED_KEYS[key]}")
        elif key not in TOP_KEYS[kind]:
            ignored[repr(key)].append(line)
    missing = [k for k in TOP_KEYS[kind] if k not in data]
    if missing:
        other = DatasetKind.PREFERENCE if kind == DatasetKind.SFT else DatasetKind.SFT
        hint = f" (this looks like a {other} example)" if all(k in data for k in TOP_KEYS[other]) else ""
        return [*problems, f"no {' or '.join(repr(k) for k in missing)}{hint}"]

    def messages(key: str, name: str) -> list:
        value = data[key]
        if not isinstance(value, list) or not value:
            problems.append(f"{key!r} must be a non-empty list of messages")
            return []
        for i, message in enumerate(value):
            problems.extend(_message_problems(message, f"message {i + 1} of {name}", ignored, line))
        return value

    if kind == DatasetKind.SFT:
        if conversation := messages("messages", "the conversation"):
            problems.extend(_conversation_problems(conversation, "the conversation", ends_with="assistant"))
        return problems
    if prompt := messages("prompt", "the prompt"):
        problems.extend(_conversation_problems(prompt, "the prompt", ends_with="user"))
    answers = {side: messages(side, f"{side!r}") for side in ("chosen", "rejected")}
    for side, answer in answers.items():
        if answer and [m.get("role") if isinstance(m, dict) else None for m in answer] != ["assistant"]:
            problems.append(f"{side!r} must be exactly one assistant message")
    if answers["chosen"] and answers["chosen"] == answers["rejected"]:
        problems.append("'chosen' and 'rejected' are the same answer; the pair teaches nothing")
    return problems


def _training_record(data: dict, kind: DatasetKind) -> dict:
    strip = lambda messages: [{"role": m["role"], "content": m["content"]} for m in messages]  # noqa: E731
    return {key: strip(data[key]) for key in TOP_KEYS[kind]}


def _tokens(record: dict, kind: DatasetKind, count_tokens: Callable[[list[dict]], int]) -> tuple[int, int]:
    """(training tokens, the longest sequence)."""
    if kind == DatasetKind.SFT:
        tokens = count_tokens(record["messages"])
        return tokens, tokens
    chosen = count_tokens(record["prompt"] + record["chosen"])
    rejected = count_tokens(record["prompt"] + record["rejected"])
    return chosen + rejected, max(chosen, rejected)


def _lines(raw: bytes, problems: _Problems) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line that is valid UTF-8."""
    if raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
    lines = []
    for number, data in enumerate(raw.split(b"\n"), start=1):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = f"0x{data[error.start]:02X}"
            problems.add(number, f"not valid UTF-8 (byte {byte} at position {error.start + 1} of the line)")
            continue
        if text.startswith("\ufeff"):
            problems.add(number, "a byte-order mark in the middle of the file (were two files joined?); remove it")
        elif text.strip():
            lines.append((number, text))
    return lines


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


def dataset_parse(
    *,
    file: BinaryIO,
    kind: DatasetKind,
    count_tokens: Callable[[list[dict]], int],
    max_tokens: int = MAX_TOKENS,
    max_bytes: int = MAX_FILE_BYTES,
    tokens_per_second: float = TOKENS_PER_SECOND,
) -> Dataset:
    """The whole file as a valid `Dataset`, or `DatasetInvalid` with every problem (see the module)."""
    kind = DatasetKind(kind)
    raw = file.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise DatasetInvalid([Problem(0, f"the file is larger than the limit of {_size(max_bytes)}")])
    for bom, encoding in _BOMS.items():
        if raw.startswith(bom):
            raise DatasetInvalid([Problem(0, f"the file is {encoding}; save it as UTF-8")])
    problems = _Problems()
    ignored: defaultdict[str, list[int]] = defaultdict(list)  # an ignored key: the lines that have it
    examples = []
    for number, text in _lines(raw, problems):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as error:
            problems.add(number, f"invalid JSON: {error.msg} (column {error.colno})")
            continue
        except ValueError as error:  # a duplicate key
            problems.add(number, f"invalid example: {error}")
            continue
        if not isinstance(data, dict):
            problems.add(number, f"each line must be one JSON object, not a {type(data).__name__}")
            continue
        found = _record_problems(data, kind, number, ignored)
        for reason in found:
            problems.add(number, reason)
        if found:
            continue
        record = _training_record(data, kind)
        tokens, longest = _tokens(record, kind, count_tokens)
        if longest > max_tokens:
            problems.add(number, f"the example is {longest:,} tokens; the training length is {max_tokens:,}")
            continue
        digest = hashlib.sha256(example_canonical_json(record).encode()).hexdigest()
        examples.append(Example(line=number, record=record, tokens=tokens, sha256=digest))
    if not problems.found and not examples:
        problems.add(0, "the file has no examples")
    if problems.found:
        raise DatasetInvalid(sorted(problems.found, key=lambda p: p.line), problems.more)
    warnings = tuple(
        Problem(lines[0], f"{key} is ignored on {len(lines):,} line(s); it does not change what is trained")
        for key, lines in ignored.items()
    )
    return dataset_from_examples(kind=kind, examples=examples, warnings=warnings, tokens_per_second=tokens_per_second)


def dataset_from_examples(
    *,
    kind: DatasetKind,
    examples: Sequence[Example],
    warnings: Sequence[Problem] = (),
    tokens_per_second: float = TOKENS_PER_SECOND,
) -> Dataset:
    """A `Dataset` of examples already validated (by `dataset_parse`, now or for an earlier version), with its
    totals, estimate and hash: how a new version that adds examples to an old one is made."""
    kind = DatasetKind(kind)
    tokens = sum(e.tokens for e in examples)
    cost = PREFERENCE_COST if kind == DatasetKind.PREFERENCE else 1.0
    return Dataset(
        kind=kind,
        examples=tuple(examples),
        warnings=tuple(warnings),
        tokens=tokens,
        seconds_per_epoch=tokens * cost / tokens_per_second,
        sha256=hashlib.sha256("\n".join(e.sha256 for e in examples).encode()).hexdigest(),
    )
