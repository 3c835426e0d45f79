"""Continuous batching: one engine thread owns the decoder and advances every request a step at a time.

Each request gets one KV row per choice (n > 1 choices share one prefill, then copy its cache). Every
turn of the loop prefills at most prefill_chunk prompt tokens (several short prompts, or one chunk of a
long one, so a long prompt never stalls running streams for more than a chunk) and then one decode
step over all rows [0, highest busy row]: rows that are free or mid-prefill ride along with a dummy
token whose KV write is overwritten later. Requests join and leave at token boundaries; a cancelled
request frees its rows at the next one.

Results go back to asyncio through loop.call_soon_threadsafe, one Event at a time.

A failure is contained where it can be attributed: an error in one request's prefill, row copy or
sampling fails that request alone while the rest keep streaming; only a failed batched decode pass
(which belongs to every row) fails the whole batch.
"""

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from inference.adapters import AdapterBank
from inference.sampler import Sampler, SamplingParams, TokenChoice
from inference.session import DecoderSession, Lora
from inference.tokenizer import ChatTokenizer, Detokenizer

log = logging.getLogger(__name__)

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class QueueFull(RuntimeError):
    pass


class PromptTooLong(ValueError):
    pass


@dataclass
class GenerationRequest:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    n: int = 1
    stop: tuple[str, ...] = ()
    adapter: str | None = None
    ignore_eos: bool = False  # generate max_tokens regardless (benchmarks, tests)


@dataclass
class Event:
    kind: str  # "token", "finish", "done" (all choices finished; carries usage) or "error"
    index: int = 0
    text: str = ""
    token: TokenChoice | None = None
    finish_reason: str | None = None
    usage: dict | None = None
    error: str | None = None


@dataclass(eq=False)  # compared and hashed by identity
class RequestHandle:
    id: int
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    lora_slot: int = 0
    sequences: list["Sequence"] = field(default_factory=list)

    def send(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass(eq=False)
class Sequence:
    handle: RequestHandle
    index: int
    row: int
    sampler: Sampler
    detokenizer: Detokenizer
    length: int = 0  # tokens in this row's KV cache
    prefilled: int = 0  # prompt tokens prefilled (choice 0 only; the others copy its cache)
    pending: int | None = None  # sampled, not yet in the KV cache
    generated: int = 0
    # Text not yet sent: the longest end that could still grow into a stop sequence. A stop can only
    # start inside it (anything earlier was not a stop prefix when it was sent), so only it is searched.
    held: str = ""
    finished: bool = False

    @property
    def decoding(self) -> bool:
        return self.pending is not None and not self.finished


class Engine:
    def __init__(
        self,
        decoder: DecoderSession,
        tokenizer: ChatTokenizer,
        *,
        adapters: AdapterBank | None = None,
        max_queue: int = 64,
        prefill_chunk: int = 256,
    ) -> None:
        self.decoder, self.tokenizer, self.adapters = decoder, tokenizer, adapters
        self.max_queue, self.prefill_chunk = max_queue, prefill_chunk
        self.eos = frozenset(tokenizer.eos_token_ids | set(decoder.config.eos_token_ids))
        self._rows: list[Sequence | None] = [None] * decoder.max_rows
        self._waiting: deque[RequestHandle] = deque()
        self._prefilling: deque[RequestHandle] = deque()
        self._wake = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self.stats = {
            "requests_total": 0,
            "requests_rejected_total": 0,
            "prompt_tokens_total": 0,
            "generation_tokens_total": 0,
            "ttft_seconds_sum": 0.0,
            "ttft_seconds_count": 0,
            "ttft_buckets": [0] * len(TTFT_BUCKETS),
        }
        self._recent: deque[tuple[float, int]] = deque(maxlen=64)  # (time, tokens) per decode step
        self._thread = threading.Thread(target=self._run, name="atelier-engine", daemon=True)
        self._thread.start()

    # --- the asyncio side -------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.decoder.capacity

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> RequestHandle:
        if len(request.prompt) + 1 > self.capacity:
            raise PromptTooLong(
                f"the prompt is {len(request.prompt)} tokens; this model's context window is {self.capacity} "
                "tokens including the answer"
            )
        if request.n > self.decoder.max_rows:
            raise ValueError(f"n={request.n} exceeds the {self.decoder.max_rows} sequences this server runs at once")
        handle = RequestHandle(next(self._ids), request, loop)
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                self.stats["requests_rejected_total"] += 1
                raise QueueFull(f"the server is at capacity ({self.max_queue} requests waiting); retry shortly")
            if request.adapter is not None:
                handle.lora_slot = self.adapters.acquire(request.adapter)  # KeyError: unknown adapter
            self.stats["requests_total"] += 1
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def cancel(self, handle: RequestHandle) -> None:
        with self._wake:
            handle.cancelled = True
            self._wake.notify()

    def shutdown(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def snapshot(self) -> dict:
        with self._wake:
            busy = [s for s in self._rows if s is not None]
            now = time.monotonic()
            recent = [(t, n) for t, n in self._recent if now - t < 10]
            rate = sum(n for _, n in recent) / (now - recent[0][0]) if len(recent) > 1 else 0.0
            return {
                **self.stats,
                "ttft_buckets": list(self.stats["ttft_buckets"]),
                "queue_depth": len(self._waiting),
                "active_sequences": sum(1 for s in busy if not s.finished),
                "kv_rows_in_use": len(busy),
                "kv_rows_total": len(self._rows),
                "decode_tokens_per_second": rate,
            }

    # --- the engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not any(self._rows):
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                with self._wake:
                    self._drop_cancelled()
                    self._admit()
                self._prefill_step()
                self._decode_step()
            except Exception as error:  # a failed batched pass fails its requests, never the engine
                log.exception("engine step failed")
                for handle in {s.handle for s in self._rows if s is not None} | set(self._prefilling):
                    self._fail(handle, f"inference failed: {type(error).__name__}: {error}")

    def _drop_cancelled(self) -> None:
        for handle in [h for h in self._waiting if h.cancelled]:
            self._waiting.remove(handle)
            self._release_adapter(handle)
        for handle in {s.handle for s in self._rows if s is not None and s.handle.cancelled}:
            self._finish_request(handle, reason="cancelled")

    def _admit(self) -> None:
        while self._waiting:
            handle = self._waiting[0]
            free = [row for row, seq in enumerate(self._rows) if seq is None]
            if len(free) < handle.request.n:
                return  # first come, first served: wait for rows to free up
            self._waiting.popleft()
            vocab = self.decoder.config.vocab_size
            for index in range(handle.request.n):
                sampler = Sampler(handle.request.params, prompt=handle.request.prompt, vocab_size=vocab, stream=index)
                seq = Sequence(handle, index, free[index], sampler, Detokenizer(self.tokenizer))
                handle.sequences.append(seq)
                self._rows[seq.row] = seq
            self._prefilling.append(handle)

    def _lora(self, sequences: list[Sequence | None]) -> Lora | None:
        slots = [0 if s is None else s.handle.lora_slot for s in sequences]
        if not any(slots):
            return None
        return Lora(index=np.array(slots, dtype=np.int64), banks=self.adapters.banks)

    def _prefill_step(self) -> None:
        """Prefill up to prefill_chunk prompt tokens: several short prompts, or one chunk of a long one."""
        budget = self.prefill_chunk
        while self._prefilling and budget > 0:
            handle = self._prefilling[0]
            prompt, first = handle.request.prompt, handle.sequences[0]
            chunk = prompt[first.prefilled : first.prefilled + budget]
            budget -= len(chunk)
            if not self._contained(handle, self._prefill_chunk, handle, chunk):
                continue  # failed and dropped: the next request may use the rest of the budget
            if first.prefilled < len(prompt):
                return

    def _prefill_chunk(self, handle: RequestHandle, chunk: list[int]) -> None:
        first = handle.sequences[0]
        end = first.prefilled + len(chunk)
        logits = self.decoder.forward(
            np.array([chunk], dtype=np.int64),
            start=first.row,
            lengths=np.array([end]),
            logits_index=np.array([len(chunk) - 1]),
            lora=self._lora([first]),
        )
        first.prefilled = first.length = end
        self.stats["prompt_tokens_total"] += len(chunk)
        if end < len(handle.request.prompt):
            return
        self._prefilling.popleft()
        for seq in handle.sequences[1:]:
            self.decoder.copy_rows(source=first.row, target=seq.row, length=end)
            seq.length = end
        for seq in handle.sequences:
            if not seq.finished:
                self._accept(seq, logits[0, -1])

    def _decode_step(self) -> None:
        busy = [row for row, seq in enumerate(self._rows) if seq is not None and seq.decoding]
        if not busy:
            return
        rows = self._rows[: busy[-1] + 1]
        tokens = np.zeros((len(rows), 1), dtype=np.int64)
        lengths = np.ones(len(rows), dtype=np.int64)
        for row, seq in enumerate(rows):
            if seq is None:
                continue
            if seq.decoding:
                tokens[row, 0] = seq.pending
                lengths[row] = seq.length + 1
            else:  # mid-prefill or waiting for a copy: the dummy lands past its cache and is overwritten
                lengths[row] = seq.length + 1
        logits = self.decoder.forward(
            tokens, start=0, lengths=lengths, logits_index=np.array([0]), lora=self._lora(rows)
        )
        self._recent.append((time.monotonic(), len(busy)))
        for row in busy:
            seq = rows[row]
            if seq.finished:  # another choice of its request failed just now
                continue
            seq.length += 1
            seq.pending = None
            self._contained(seq.handle, self._accept, seq, logits[row, 0])

    def _contained(self, handle: RequestHandle, step, *args) -> bool:
        """Run one request's part of a step; an error fails that request only. False if it failed."""
        try:
            step(*args)
        except Exception as error:
            log.exception("request %s failed", handle.id)
            self._fail(handle, f"inference failed: {type(error).__name__}: {error}")
            return False
        return True

    def _accept(self, seq: Sequence, logits: np.ndarray) -> None:
        """Sample the next token from logits and send what it adds to the text."""
        handle = seq.handle
        choice = seq.sampler.choose(logits)
        if handle.first_token_at is None:
            handle.first_token_at = time.monotonic()
            self._record_ttft(handle.first_token_at - handle.submitted)
        seq.generated += 1
        self.stats["generation_tokens_total"] += 1
        if choice.token in self.eos and not handle.request.ignore_eos:
            seq.held += seq.detokenizer.flush()
            handle.send(Event("token", seq.index, self._release_text(seq, final=True), token=choice))
            return self._finish_sequence(seq, "stop")
        seq.held += seq.detokenizer.push(choice.token)
        stop_at = _find_stop(seq.held, handle.request.stop)
        if stop_at is not None:
            seq.held = seq.held[:stop_at]
            handle.send(Event("token", seq.index, self._release_text(seq, final=True), token=choice))
            return self._finish_sequence(seq, "stop")
        out_of_room = seq.length + 1 >= self.capacity
        if seq.generated >= handle.request.max_tokens or out_of_room:
            seq.held += seq.detokenizer.flush()
            handle.send(Event("token", seq.index, self._release_text(seq, final=True), token=choice))
            return self._finish_sequence(seq, "length")
        handle.send(Event("token", seq.index, self._release_text(seq, final=False), token=choice))
        seq.pending = choice.token

    def _release_text(self, seq: Sequence, *, final: bool) -> str:
        keep = 0 if final else _stop_prefix_length(seq.held, seq.handle.request.stop)
        out = seq.held[: len(seq.held) - keep]
        seq.held = seq.held[len(out) :]
        return out

    def _finish_sequence(self, seq: Sequence, reason: str) -> None:
        seq.finished = True
        seq.handle.send(Event("finish", seq.index, finish_reason=reason))
        self._rows[seq.row] = None
        if all(s.finished for s in seq.handle.sequences):
            self._complete(seq.handle)

    def _finish_request(self, handle: RequestHandle, *, reason: str) -> None:
        for seq in handle.sequences:
            if not seq.finished:
                seq.finished = True
                handle.send(Event("finish", seq.index, finish_reason=reason))
            if self._rows[seq.row] is seq:
                self._rows[seq.row] = None
        if handle in self._prefilling:
            self._prefilling.remove(handle)
        self._complete(handle)

    def _complete(self, handle: RequestHandle) -> None:
        self._release_adapter(handle)
        prompt = len(handle.request.prompt)
        completion = sum(s.generated for s in handle.sequences)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        handle.send(Event("done", usage=usage))

    def _fail(self, handle: RequestHandle, message: str) -> None:
        for seq in handle.sequences:
            seq.finished = True
            if self._rows[seq.row] is seq:
                self._rows[seq.row] = None
        if handle in self._prefilling:
            self._prefilling.remove(handle)
        self._release_adapter(handle)
        handle.send(Event("error", error=message))

    def _release_adapter(self, handle: RequestHandle) -> None:
        if handle.request.adapter is not None and handle.lora_slot:
            self.adapters.release(handle.request.adapter)
            handle.lora_slot = 0

    def _record_ttft(self, seconds: float) -> None:
        self.stats["ttft_seconds_sum"] += seconds
        self.stats["ttft_seconds_count"] += 1
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.stats["ttft_buckets"][i] += 1


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def _stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of text that could still grow into a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
