"""OpenAI's wire format: request bodies, the error envelope, and engine events shaped into responses.

Requests are pydantic models whose bounds come from the sampler (SAMPLING_BOUNDS), so the schema and
the engine cannot disagree. Responses are built from the scheduler's Events: `collect` gathers a whole
completion, `stream` writes it as server-sent events (one chunk per token, a finish chunk per choice,
usage last when asked, then `[DONE]`). Errors always have one shape:
{"error": {"message", "type", "param", "code"}}; the web app's API (apps/api/errors.py) speaks the same
envelope, and a test pins the two together.
"""

import json
import time
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from inference.sampler import MAX_TOP_LOGPROBS, SAMPLING_BOUNDS, TokenChoice
from inference.scheduler import Event, RequestHandle
from inference.tokenizer import ChatTokenizer


class APIError(Exception):
    """A refusal in OpenAI's shape; the routes' exception handler turns it into the response."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- request bodies ---------------------------------------------------------------------------------


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"content parts of type {part.get('type')!r} are not supported, only text")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


def template_messages(messages: list[Message]) -> list[dict]:
    """OpenAI messages as the chat template takes them ("developer" is the newer name for "system")."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationBody(BaseModel):
    """What chat and text completions share."""

    model: str
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    temperature: float = Field(1.0, **SAMPLING_BOUNDS["temperature"].pydantic())
    top_p: float = Field(1.0, **SAMPLING_BOUNDS["top_p"].pydantic())
    top_k: int = Field(0, ge=0)
    frequency_penalty: float = Field(0.0, **SAMPLING_BOUNDS["frequency_penalty"].pydantic())
    presence_penalty: float = Field(0.0, **SAMPLING_BOUNDS["presence_penalty"].pydantic())
    repetition_penalty: float = Field(1.0, **SAMPLING_BOUNDS["repetition_penalty"].pydantic())
    seed: int | None = None
    user: str | None = None
    # Extensions (as in vLLM). Keep only the last N prompt tokens instead of refusing a prompt longer
    # than the context window; generate max_tokens even past end-of-text (benchmarks).
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


class ChatRequest(GenerationBody):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(GenerationBody):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: exactly one of `prompt` (raw text) or `messages` (through the chat template).

    Atelier's extension `conversations` counts several message lists in one call (a prompt budget needs
    the instructions, each new turn and the assembled prompt): the answer is then `counts`, one per list.
    """

    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    conversations: list[list[Message]] | None = Field(None, min_length=1, max_length=256)
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class AdapterLoad(BaseModel):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    path: str


# --- responses --------------------------------------------------------------------------------------


class Shape:
    """OpenAI's response shapes for chat and text completions."""

    def __init__(self, tokenizer: ChatTokenizer, completion_id: str, model: str, chat: bool) -> None:
        self.tokenizer, self.id, self.model, self.chat = tokenizer, completion_id, model, chat
        self.created = int(time.time())

    def envelope(self, *, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + (".chunk" if chunk and self.chat else ""),
            "created": self.created,
            "model": self.model,
        }

    def logprob_entry(self, choice: TokenChoice) -> dict:
        text = self.tokenizer.token_text
        return {
            "token": text(choice.token),
            "logprob": choice.logprob,
            "bytes": self.tokenizer.token_bytes(choice.token),
            "top_logprobs": [
                {"token": text(t), "logprob": lp, "bytes": self.tokenizer.token_bytes(t)} for t, lp in choice.top
            ],
        }

    def logprobs(self, tokens: list[TokenChoice], offset: int = 0) -> dict | None:
        if not tokens or tokens[0].logprob is None:
            return None
        if self.chat:
            return {"content": [self.logprob_entry(t) for t in tokens]}
        text = self.tokenizer.token_text
        offsets, position = [], offset
        for t in tokens:
            offsets.append(position)
            position += len(text(t.token))
        return {
            "tokens": [text(t.token) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{text(tok): lp for tok, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }

    def chunk(self, choice: dict) -> str:
        return sse({**self.envelope(chunk=True), "choices": [choice]})


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def events(handle: RequestHandle) -> AsyncIterator[Event]:
    """A request's events until `done`; an engine failure raises as a 500."""
    while True:
        event: Event = await handle.queue.get()
        if event.kind == "error":
            raise APIError(500, event.error or "inference failed", type="server_error")
        yield event
        if event.kind == "done":
            return


async def collect(handle: RequestHandle, shape: Shape, n: int) -> dict:
    """The whole completion as one response body."""
    texts, tokens, reasons = [""] * n, [[] for _ in range(n)], [None] * n
    usage = None
    async for event in events(handle):
        if event.kind == "token":
            texts[event.index] += event.text
            tokens[event.index].append(event.token)
        elif event.kind == "finish":
            reasons[event.index] = event.finish_reason
        elif event.kind == "done":
            usage = event.usage
    choices = []
    for i in range(n):
        if shape.chat:
            choice = {"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": reasons[i]}
        else:
            choice = {"index": i, "text": texts[i], "finish_reason": reasons[i]}
        choice["logprobs"] = shape.logprobs(tokens[i])
        choices.append(choice)
    return {**shape.envelope(chunk=False), "choices": choices, "usage": usage}


async def stream(handle: RequestHandle, shape: Shape, n: int, include_usage: bool) -> AsyncIterator[str]:
    """The completion as server-sent events. An engine failure mid-stream becomes an error event."""
    offsets = [0] * n
    try:
        if shape.chat:
            for i in range(n):
                role = {"role": "assistant", "content": ""}
                yield shape.chunk({"index": i, "delta": role, "logprobs": None, "finish_reason": None})
        async for event in events(handle):
            if event.kind == "token":
                logprobs = shape.logprobs([event.token], offsets[event.index])
                if not event.text and logprobs is None:
                    continue
                offsets[event.index] += len(event.text)
                content = {"delta": {"content": event.text}} if shape.chat else {"text": event.text}
                yield shape.chunk({"index": event.index, **content, "logprobs": logprobs, "finish_reason": None})
            elif event.kind == "finish":
                empty = {"delta": {}} if shape.chat else {"text": ""}
                yield shape.chunk(
                    {"index": event.index, **empty, "logprobs": None, "finish_reason": event.finish_reason}
                )
            elif event.kind == "done" and include_usage:
                yield sse({**shape.envelope(chunk=True), "choices": [], "usage": event.usage})
        yield "data: [DONE]\n\n"
    except APIError as error:
        yield sse(error_body(error.message, error.type))
