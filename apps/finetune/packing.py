"""Training examples to one packed token stream: assistant-only targets, and no attention across examples.

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

Packing: a step's segments are concatenated into one stream of tokens with no padding, so the linears
(most of the work) run on real tokens only. Attention alone works on rows: each example is a row of its
own (a DPO tree two: prompt + chosen, and prompt + rejected, the prompt's keys and values gathered from
the stream again), padded at the end to the longest row, and one causal SDPA call covers them all. Causal
attention keeps every real token from seeing the padding after it, the CPU kernel skips the blocks above
the diagonal, and no mask is built or read. Attention therefore never crosses examples, and each
example's log-probs are those it gets alone (tests/finetune checks them against transformers).
`pad_to_longest=True` pads the stream itself instead, every example to the step's longest: the
benchmark's baseline.
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
    input_ids: torch.Tensor  # [N], the step's segments one after the other
    position_ids: torch.Tensor  # [N]
    attention_rows: tuple[int, int]  # (rows, width) of the attention layout
    gather: torch.Tensor  # [rows * width] the stream token at each attention slot (padding: any, never seen)
    keep: torch.Tensor  # [N] the attention slot whose output each stream token takes
    sources: torch.Tensor  # [M] indices into the stream of the hidden states that predict...
    targets: torch.Tensor  # [M] ...these tokens
    sequences: torch.Tensor  # [M] example index in the batch * sequences_per_example + sequence
    examples: int
    tokens: int  # real (non-padding) tokens

    def to(self, device: torch.device) -> "Batch":
        tensors = ("input_ids", "position_ids", "gather", "keep", "sources", "targets", "sequences")
        moved = {name: getattr(self, name).to(device) for name in tensors}
        return Batch(**moved, attention_rows=self.attention_rows, examples=self.examples, tokens=self.tokens)


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


def _attention_rows(segment: Segment, offset: int, length: int) -> list[tuple[np.ndarray, int]]:
    """The segment's rows: (stream indices, index of the first slot whose output the stream keeps). A plain
    segment (with any padding after it, `length` in all) is one row; a DPO tree is prompt + chosen, then
    prompt + rejected keeping only the rejected slots."""
    rejected = int((segment.branches == REJECTED).sum())
    if not rejected:
        return [(offset + np.arange(length), 0)]
    prompt, first = int((segment.branches == SHARED).sum()), length - rejected
    return [
        (offset + np.arange(first), 0),
        (offset + np.concatenate([np.arange(prompt), np.arange(first, length)]), prompt),
    ]


def collate(examples: Sequence[tuple[Segment, ...]], *, pad_id: int, pad_to_longest: bool = False) -> Batch:
    """One step's examples as one packed stream of tokens and its attention rows (or, for the benchmark's
    baseline, each segment padded to the longest in the stream too)."""
    segments = [(example, segment) for example, parts in enumerate(examples) for segment in parts]
    longest = max(len(segment) for _, segment in segments)
    per_example = max(int(segment.sequences.max()) + 1 for _, segment in segments)
    ids, positions, rows, sources, targets, sequences = [], [], [], [], [], []
    offset = 0
    for example, segment in segments:
        pad = longest - len(segment) if pad_to_longest else 0
        ids += [segment.ids, np.full(pad, pad_id, dtype=np.int64)]
        positions += [segment.positions, segment.positions[-1] + 1 + np.arange(pad, dtype=np.int64)]
        rows += _attention_rows(segment, offset, len(segment) + pad)
        sources.append(offset + segment.sources)
        targets.append(segment.targets)
        sequences.append(example * per_example + segment.sequences)
        offset += len(segment) + pad
    width = max(len(indices) for indices, _ in rows)
    gather = np.zeros((len(rows), width), dtype=np.int64)
    keep = np.empty(offset, dtype=np.int64)
    for row, (indices, kept_from) in enumerate(rows):
        gather[row, : len(indices)] = indices
        keep[indices[kept_from:]] = row * width + np.arange(kept_from, len(indices))
    return Batch(
        input_ids=torch.from_numpy(np.concatenate(ids)),
        position_ids=torch.from_numpy(np.concatenate(positions)),
        attention_rows=(len(rows), width),
        gather=torch.from_numpy(gather.reshape(-1)),
        keep=torch.from_numpy(keep),
        sources=torch.from_numpy(np.concatenate(sources)),
        targets=torch.from_numpy(np.concatenate(targets)),
        sequences=torch.from_numpy(np.concatenate(sequences)),
        examples=len(examples),
        tokens=sum(len(segment) for _, segment in segments),
    )
