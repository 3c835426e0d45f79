"""Training examples to packed token rows: assistant-only targets, and no attention across examples.

A *segment* is one example tokenized exactly as the engine tokenizes a chat (the model's own chat
template rendered to text, then the fast tokenizer, inference/tokenizer.py). Its *predictions* are
(source, target) pairs: the hidden state at index `source` predicts token `target`. Only predicted
positions ever reach the vocabulary projection, so the 49k-wide lm_head and its softmax run on the
assistant tokens alone instead of every position.

- SFT predicts every assistant turn's content and its end-of-turn token; never the system or user
  turns, the `<|im_start|>assistant` header, or the newline after the end-of-turn token.
- DPO predicts each completion. A pair is one segment shaped as a tree: prompt, then chosen, then
  rejected, with the rejected branch's position ids restarting where the prompt ends and its tokens
  unable to see the chosen ones. The prompt is computed once for both completions (as the policy's and
  the reference's log-probs both need it), and each branch's first token is predicted from the
  prompt's last hidden state. `share_prompt=False` gives the two plain sequences TRL builds, for the
  benchmark's ablation. Completions are tokenized on their own, as the engine generates them after a
  prompt.

Packing: a step's segments are placed first-fit-decreasing into rows as long as the step's longest
segment. Padding every segment to that length would cost the linears (most of the work) for every pad
token; packed rows skip most of them, and since rows never outgrow the longest segment, attention's
T² is never larger than with padding. Each token carries its segment number, position id and branch,
and the attention mask is causal ∧ same segment ∧ (the key is shared or on the query's branch):
block-diagonal, so attention never crosses examples (tests/finetune check the per-example losses
against unpacked ones).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from inference.tokenizer import ChatTokenizer

ROLES = ("system", "user", "assistant")
SHARED, CHOSEN, REJECTED = 0, 1, 2  # branches of a segment's tokens


class ExampleError(ValueError):
    """An example the trainer cannot use; the message names it and says why."""


@dataclass(frozen=True)
class Segment:
    ids: np.ndarray  # int64 [n]
    positions: np.ndarray  # int64 [n] position ids
    branches: np.ndarray  # int8 [n] SHARED, CHOSEN or REJECTED
    sources: np.ndarray  # int64 [m] index into ids of the hidden state that predicts...
    targets: np.ndarray  # int64 [m] ...this token
    sequences: np.ndarray  # int64 [m] which of the example's sequences the prediction belongs to (0, or 1 = rejected)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # bool [R, 1, T, T], True where a query may attend to a key
    sources: torch.Tensor  # [M] flat indices into the R*T hidden states
    targets: torch.Tensor  # [M]
    sequences: torch.Tensor  # [M] example index in the batch * sequences_per_example + sequence
    examples: int
    tokens: int  # real (non-padding) tokens

    def to(self, device: torch.device) -> "Batch":
        move = {f: getattr(self, f).to(device) for f in ("input_ids", "position_ids", "attention_mask")}
        move |= {f: getattr(self, f).to(device) for f in ("sources", "targets", "sequences")}
        return Batch(**move, examples=self.examples, tokens=self.tokens)


def _check_messages(messages: object, where: str, *, roles: Sequence[str] = ROLES) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ExampleError(f"{where}: expected a non-empty list of messages")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in roles
            or not isinstance(message.get("content"), str)
        ):
            raise ExampleError(f"{where}, message {i}: expected {{'role': one of {list(roles)}, 'content': text}}")
    return messages


class ChatEncoder:
    """Renders and tokenizes examples with the base model's own chat template and tokenizer."""

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self.tokenizer = tokenizer

    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def assistant_spans(self, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span of each assistant turn's content and
        end-of-turn marker (what comes after its header, up to the whitespace the template adds)."""
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if i == 0:
                raise ExampleError(f"{where}: the conversation opens with an assistant message; nothing prompts it")
            before = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise ExampleError(f"{where}: the chat template does not render turn {i} as a prefix of the chat")
            end = len(through.rstrip())
            if end > len(before):
                spans.append((len(before), end))
        return text, spans

    def sft_segment(self, example: dict, *, max_length: int, where: str) -> Segment | None:
        """One conversation; None when no assistant token falls within max_length."""
        messages = _check_messages(example.get("messages") if isinstance(example, dict) else None, where)
        if not any(m["role"] == "assistant" for m in messages):
            raise ExampleError(f"{where}: no assistant message to learn from")
        text, spans = self.assistant_spans(messages, where)
        encoding = self.tokenizer.fast.encode(text, add_special_tokens=False)
        ids = np.array(encoding.ids[:max_length], dtype=np.int64)
        starts = np.array([start for start, _ in encoding.offsets[:max_length]], dtype=np.int64)
        predicted = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            predicted |= (starts >= start) & (starts < end)
        predicted[0] = False  # nothing comes before the first token to predict it
        targets_at = np.flatnonzero(predicted)
        if not len(targets_at):
            return None
        return Segment(
            ids=ids,
            positions=np.arange(len(ids), dtype=np.int64),
            branches=np.zeros(len(ids), dtype=np.int8),
            sources=targets_at - 1,
            targets=ids[targets_at],
            sequences=np.zeros(len(targets_at), dtype=np.int64),
        )

    def completion_ids(self, prompt: list[dict], completion: list[dict], prompt_text: str, where: str) -> list[int]:
        text = self.render(prompt + completion)
        if not text.startswith(prompt_text):
            raise ExampleError(f"{where}: the chat template does not render the prompt as a prefix of the chat")
        return self.tokenizer.fast.encode(text[len(prompt_text) :].rstrip(), add_special_tokens=False).ids

    def dpo_segments(
        self, example: dict, *, max_length: int, where: str, share_prompt: bool = True
    ) -> tuple[Segment, ...]:
        """One preference pair: a tree segment (share_prompt) or two plain sequences. Too long a pair loses
        the start of its prompt first (down to half of max_length), then the ends of its completions."""
        if not isinstance(example, dict):
            raise ExampleError(f"{where}: expected {{'prompt', 'chosen', 'rejected'}}")
        prompt = _check_messages(example.get("prompt"), f"{where} prompt")
        chosen = _check_messages(example.get("chosen"), f"{where} chosen", roles=("assistant",))
        rejected = _check_messages(example.get("rejected"), f"{where} rejected", roles=("assistant",))
        prompt_text = self.render(prompt, add_generation_prompt=True)
        prompt_ids = self.tokenizer.fast.encode(prompt_text, add_special_tokens=False).ids
        chosen_ids = self.completion_ids(prompt, chosen, prompt_text, where)
        rejected_ids = self.completion_ids(prompt, rejected, prompt_text, where)
        if not chosen_ids or not rejected_ids:
            raise ExampleError(f"{where}: an empty completion")
        longest = max(len(chosen_ids), len(rejected_ids))
        if len(prompt_ids) + longest > max_length:
            keep = max(max_length - longest, max_length // 2)
            prompt_ids = prompt_ids[-keep:]
            chosen_ids, rejected_ids = (ids[: max_length - len(prompt_ids)] for ids in (chosen_ids, rejected_ids))
        p = len(prompt_ids)
        if share_prompt:
            c, r = len(chosen_ids), len(rejected_ids)
            ids = np.array(prompt_ids + chosen_ids + rejected_ids, dtype=np.int64)
            return (
                Segment(
                    ids=ids,
                    positions=np.concatenate([np.arange(p + c), np.arange(p, p + r)]).astype(np.int64),
                    branches=np.array([SHARED] * p + [CHOSEN] * c + [REJECTED] * r, dtype=np.int8),
                    sources=np.concatenate([np.arange(p - 1, p + c - 1), [p - 1], np.arange(p + c, p + c + r - 1)]),
                    targets=ids[np.r_[p : p + c, p + c : p + c + r]],
                    sequences=np.array([0] * c + [1] * r, dtype=np.int64),
                ),
            )
        segments = []
        for sequence, completion in enumerate((chosen_ids, rejected_ids)):
            ids = np.array(prompt_ids + completion, dtype=np.int64)
            segments.append(
                Segment(
                    ids=ids,
                    positions=np.arange(len(ids), dtype=np.int64),
                    branches=np.zeros(len(ids), dtype=np.int8),
                    sources=np.arange(p - 1, len(ids) - 1, dtype=np.int64),
                    targets=ids[p:],
                    sequences=np.full(len(completion), sequence, dtype=np.int64),
                )
            )
        return tuple(segments)


def pack_rows(lengths: Sequence[int], *, capacity: int) -> list[list[int]]:
    """First-fit-decreasing: indices of the segments in each row, no row over capacity."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, room in enumerate(free):
            if lengths[index] <= room:
                rows[row].append(index)
                free[row] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(capacity - lengths[index])
    return rows


def collate(examples: Sequence[tuple[Segment, ...]], *, pad_id: int, pack: bool = True) -> Batch:
    """One step's examples as rows: packed (rows as long as the longest segment), or one segment per row
    padded to the longest (the baseline the benchmark compares against)."""
    segments = [(example, segment) for example, parts in enumerate(examples) for segment in parts]
    lengths = [len(segment) for _, segment in segments]
    width = max(lengths)
    rows = pack_rows(lengths, capacity=width) if pack else [[i] for i in range(len(segments))]
    per_example = max(int(segment.sequences.max()) + 1 for _, segment in segments)
    shape = (len(rows), width)
    ids = np.full(shape, pad_id, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    segment_of = np.full(shape, -1, dtype=np.int64)  # padding is its own segment, so no query sees nothing
    branches = np.zeros(shape, dtype=np.int8)
    sources, targets, sequences = [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for index in row:
            example, segment = segments[index]
            span = slice(offset, offset + len(segment))
            ids[r, span], positions[r, span], branches[r, span] = segment.ids, segment.positions, segment.branches
            segment_of[r, span] = index
            sources.append(r * width + offset + segment.sources)
            targets.append(segment.targets)
            sequences.append(example * per_example + segment.sequences)
            offset += len(segment)
    segment_t, branch_t = torch.from_numpy(segment_of), torch.from_numpy(branches)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment_t[:, :, None] == segment_t[:, None, :]
    visible = (branch_t[:, None, :] == SHARED) | (branch_t[:, :, None] == branch_t[:, None, :])
    return Batch(
        input_ids=torch.from_numpy(ids),
        position_ids=torch.from_numpy(positions),
        attention_mask=(causal & same & visible)[:, None],
        sources=torch.from_numpy(np.concatenate(sources)),
        targets=torch.from_numpy(np.concatenate(targets)),
        sequences=torch.from_numpy(np.concatenate(sequences)),
        examples=len(examples),
        tokens=sum(lengths),
    )
