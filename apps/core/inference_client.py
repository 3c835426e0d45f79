"""The one client for the inference server (`inference/server.py`, over HTTP), for the web app, the
worker and the API.

Failures become domain errors with messages fit for the person chatting; callers never see an httpx
exception. Each error keeps the engine's status, `code` and `param`, so the API can relay them.
Synchronous callers share one connection pool per process (every answer's prompt budget calls
/tokenize first); async callers open a client per request, since a pool cannot outlive the event loop
it was made on. `stream_deltas` turns a chat stream into text and logprob deltas for every caller.

Adapters: the engine holds LoRA adapters in memory only, so a restart forgets them all, and it evicts the
least recently used one when its slots are full. A body that names an adapter carries where it lies
(`adapter_fields`: the engine's id as `model`, and the folder under ADAPTER_PATH_KEY, a key that is never sent).
When the engine answers 404 for that model, the client loads the adapter (POST /v1/adapters) and sends the
request once more: `_with_adapter` (and its async twin) wraps every call that may name one, and a stream opens
its connection before returning its iterator, so a refusal raises where the retry can catch it. Chat, the API,
the arena, labeling and the builder's preview all build their bodies with `engine_request_build` and send them
through here, so this is the one place that knows.
"""

import asyncio
import base64
import contextlib
import functools
import json
import struct
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
from django.conf import settings

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 120.0  # a long queue wait before the first token is still normal under load
HEALTH_TIMEOUT = 1.0  # the status page probes several services and must answer quickly
CHAT_PATH = "/v1/chat/completions"
TOKENIZE_BATCH = 256  # conversations per /tokenize call (the engine's limit)
EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_BATCH = 256  # inputs per /v1/embeddings call (the engine's limit)
ADAPTERS_PATH = "/v1/adapters"
ADAPTER_PATH_KEY = "atelier_adapter_path"  # an engine body's key: the adapter's folder, for a reload; never sent
T = TypeVar("T")


class InferenceError(Exception):
    """The engine could not answer. str(error) is written for the end user."""

    def __init__(self, message: str, *, status: int = 503, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class InferenceUnavailable(InferenceError):
    """Not reachable, or it failed (5xx)."""


class InferenceBusy(InferenceError):
    """Its queue is full (429)."""


class InferenceRejected(InferenceError):
    """The request itself was refused (400: the prompt is longer than the context window; 404: no such
    model or adapter)."""


def _bearer(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _headers() -> dict[str, str]:
    return _bearer(settings.INFERENCE_API_KEY)


def _timeout() -> httpx.Timeout:
    return httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)


def _async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=settings.INFERENCE_URL, headers=_headers(), timeout=_timeout())


@functools.cache
def _pool(base_url: str, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=_bearer(api_key), timeout=_timeout())


def _client() -> httpx.Client:
    return _pool(settings.INFERENCE_URL, settings.INFERENCE_API_KEY)


def _error_for(response: httpx.Response) -> InferenceError:
    try:
        error = response.json().get("error") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        error = {}
    status, code, param = response.status_code, error.get("code"), error.get("param")
    message = error.get("message") or response.text[:300] or f"HTTP {status}"
    if status == 429:
        return InferenceBusy(
            "The model is busy with other requests right now. Try again in a moment.", status=429, code=code
        )
    if status >= 500:
        return InferenceUnavailable(f"The model server failed: {message}", status=status, code=code)
    return InferenceRejected(message, status=status, code=code, param=param)


def _unavailable(error: httpx.HTTPError) -> InferenceUnavailable:
    return InferenceUnavailable(f"The model server is not reachable ({type(error).__name__}). Try again shortly.")


def _chunk(line: str) -> dict | None:
    """One server-sent event line as a chunk; None for anything else ([DONE] ends the stream first)."""
    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
        return None
    chunk = json.loads(line[5:])
    if "error" in chunk:
        message = (chunk["error"] or {}).get("message")
        raise InferenceUnavailable(f"The model server failed mid-answer: {message}")
    return chunk


def _is_done(line: str) -> bool:
    return line.startswith("data:") and line[5:].strip() == "[DONE]"


def _post(path: str, body: dict) -> dict:
    try:
        response = _client().post(path, json=body)
    except httpx.HTTPError as error:
        raise _unavailable(error) from error
    if response.status_code >= 400:
        raise _error_for(response)
    return response.json()


def adapter_fields(*, engine_id: str, path: str) -> dict:
    """What a request body carries to be answered by an adapter: the engine's id for it as the model, and
    the folder it is loaded from when the engine does not have it (restarted, or evicted it)."""
    return {"model": engine_id, ADAPTER_PATH_KEY: path}


def inference_adapter_load(*, adapter_id: str, path: str) -> dict:
    """Load (or reload) the PEFT adapter in folder `path` into the engine as model `adapter_id`, hot."""
    return _post(ADAPTERS_PATH, {"id": adapter_id, "path": path})


def _wire(body: dict) -> tuple[dict, str | None]:
    """The body as sent (without ADAPTER_PATH_KEY), and the adapter folder to reload from, if it names one."""
    body = dict(body)
    return body, body.pop(ADAPTER_PATH_KEY, None)


def _adapter_missing(error: InferenceError, adapter_path: str | None) -> bool:
    """The engine does not know the body's model, and the body says where its adapter lies."""
    return adapter_path is not None and isinstance(error, InferenceRejected) and error.status == 404


def _adapter_reload(body: dict, adapter_path: str) -> None:
    # A refusal (409: another request loaded it and is using it) is left to the retry to report.
    with contextlib.suppress(InferenceRejected):
        inference_adapter_load(adapter_id=body["model"], path=adapter_path)


def _with_adapter(send: Callable[[dict], T], body: dict) -> T:
    """`send(body)` without ADAPTER_PATH_KEY; when the engine does not know the adapter the body names, load it
    and send once more."""
    wire, adapter_path = _wire(body)
    try:
        return send(wire)
    except InferenceError as error:
        if not _adapter_missing(error, adapter_path):
            raise
    _adapter_reload(wire, adapter_path)
    return send(wire)


async def _with_adapter_async(send: Callable[[dict], Awaitable[T]], body: dict) -> T:
    """_with_adapter for async calls (the reload is the same synchronous call, off the event loop)."""
    wire, adapter_path = _wire(body)
    try:
        return await send(wire)
    except InferenceError as error:
        if not _adapter_missing(error, adapter_path):
            raise
    await asyncio.to_thread(_adapter_reload, wire, adapter_path)
    return await send(wire)


def inference_health() -> str:
    """`ok`, or why the inference server is not usable (for the status page and /health)."""
    try:
        response = _client().get("/health", timeout=HEALTH_TIMEOUT)
    except httpx.HTTPError as error:
        return f"not reachable at {settings.INFERENCE_URL} ({type(error).__name__}: {error})"
    return "ok" if response.status_code == 200 else f"{settings.INFERENCE_URL} answered HTTP {response.status_code}"


def inference_tokenize(
    *, model: str, messages: list[dict] | None = None, prompt: str | None = None, add_generation_prompt: bool = True
) -> dict:
    """`{"count", "max_model_len", "tokens", "token_strs"}` for raw text or a chat through the template."""
    body = {"model": model, "return_token_strs": True, "add_generation_prompt": add_generation_prompt}
    body.update({"messages": messages} if messages is not None else {"prompt": prompt})
    return _post("/tokenize", body)


def inference_token_counts(*, model: str, conversations: list[list[dict]]) -> dict:
    """`{"counts": [...], "max_model_len"}`: each conversation's tokens through the chat template, with
    the generation prompt, in as few calls as the engine's batch limit allows."""
    counts, window = [], None
    for start in range(0, len(conversations), TOKENIZE_BATCH):
        batch = conversations[start : start + TOKENIZE_BATCH]
        answer = _post("/tokenize", {"model": model, "conversations": batch})
        counts += answer["counts"]
        window = answer["max_model_len"]
    return {"counts": counts, "max_model_len": window}


def inference_embed(*, texts: list[str], model: str = EMBEDDING_MODEL) -> list[list[float]]:
    """Each text's normalized embedding, in order, in as few calls as the engine's batch limit allows."""
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBEDDING_BATCH):
        # base64 float32 (OpenAI's own option): a fifth of the JSON numbers' bytes, and no float parsing
        body = {"model": model, "input": texts[start : start + EMBEDDING_BATCH], "encoding_format": "base64"}
        answer = _post("/v1/embeddings", body)
        for item in sorted(answer["data"], key=lambda item: item["index"]):
            raw = base64.b64decode(item["embedding"])
            vectors.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
    return vectors


def inference_complete(*, body: dict) -> dict:
    """One non-streaming `/v1/completions` call (the playground's document simulator)."""
    return _with_adapter(functools.partial(_post, "/v1/completions"), {**body, "stream": False})


def inference_chat(*, body: dict) -> dict:
    """One non-streaming `/v1/chat/completions` call."""
    return _with_adapter(functools.partial(_post, CHAT_PATH), {**body, "stream": False})


def inference_chat_stream(*, body: dict) -> Iterator[dict]:
    """Stream `/v1/chat/completions` chunks as dicts. Closing the iterator closes the connection, which
    makes the engine cancel the request and free its slot."""
    yield from _with_adapter(_chat_stream_open, body)


def _chat_stream_open(body: dict) -> Iterator[dict]:
    """Open the stream (a refusal raises here, before any chunk) and return its chunks."""
    stack = ExitStack()
    try:
        response = stack.enter_context(_client().stream("POST", CHAT_PATH, json={**body, "stream": True}))
        if response.status_code >= 400:
            response.read()
            raise _error_for(response)
    except httpx.HTTPError as error:
        stack.close()
        raise _unavailable(error) from error
    except BaseException:
        stack.close()
        raise
    return _chunks(stack, response)


def _chunks(stack: ExitStack, response: httpx.Response) -> Iterator[dict]:
    with stack:
        try:
            for line in response.iter_lines():
                if _is_done(line):
                    return
                if (chunk := _chunk(line)) is not None:
                    yield chunk
        except httpx.HTTPError as error:
            raise _unavailable(error) from error


async def inference_chat_async(*, body: dict) -> dict:
    """inference_chat for async views."""
    return await _with_adapter_async(_chat_async, {**body, "stream": False})


async def _chat_async(body: dict) -> dict:
    try:
        async with _async_client() as client:
            response = await client.post(CHAT_PATH, json=body)
    except httpx.HTTPError as error:
        raise _unavailable(error) from error
    if response.status_code >= 400:
        raise _error_for(response)
    return response.json()


async def inference_chat_stream_async(*, body: dict) -> AsyncIterator[dict]:
    """inference_chat_stream for async views. A refusal (429, 400, unreachable) raises here, before the
    first chunk, so the caller can still answer with a status; errors mid-stream raise from the iterator."""
    return await _with_adapter_async(_chat_stream_open_async, body)


async def _chat_stream_open_async(body: dict) -> AsyncIterator[dict]:
    stack = AsyncExitStack()
    try:
        client = await stack.enter_async_context(_async_client())
        response = await stack.enter_async_context(client.stream("POST", CHAT_PATH, json={**body, "stream": True}))
        if response.status_code >= 400:
            await response.aread()
            raise _error_for(response)
    except httpx.HTTPError as error:
        await stack.aclose()
        raise _unavailable(error) from error
    except BaseException:
        await stack.aclose()
        raise
    return _chunks_async(stack, response)


async def _chunks_async(stack: AsyncExitStack, response: httpx.Response) -> AsyncIterator[dict]:
    async with stack:
        try:
            async for line in response.aiter_lines():
                if _is_done(line):
                    return
                if (chunk := _chunk(line)) is not None:
                    yield chunk
        except httpx.HTTPError as error:
            raise _unavailable(error) from error


# --- reading a stream -------------------------------------------------------------------------------


@dataclass
class Delta:
    """What one streamed chunk adds to one choice: its text, its tokens as compact logprob entries
    ([token, logprob, [[alternative, logprob], ...]], when logprobs were asked for), and how it ended."""

    index: int
    text: str = ""
    tokens: list[list] = field(default_factory=list)
    finish_reason: str | None = None


def chunk_deltas(chunk: dict) -> list[Delta]:
    deltas = []
    for choice in chunk.get("choices", []):
        entries = (choice.get("logprobs") or {}).get("content") or []
        tokens = [
            [
                e["token"],
                round(e["logprob"], 4),
                [[t["token"], round(t["logprob"], 4)] for t in e.get("top_logprobs", [])],
            ]
            for e in entries
        ]
        text = (choice.get("delta") or {}).get("content") or ""
        deltas.append(Delta(choice.get("index", 0), text, tokens, choice.get("finish_reason")))
    return deltas


def stream_deltas(chunks: Iterable[dict]) -> Iterator[Delta]:
    """A chat stream (inference_chat_stream) as deltas."""
    for chunk in chunks:
        yield from chunk_deltas(chunk)


async def stream_deltas_async(chunks: AsyncIterable[dict]) -> AsyncIterator[Delta]:
    """A chat stream (inference_chat_stream_async) as deltas."""
    async for chunk in chunks:
        for delta in chunk_deltas(chunk):
            yield delta
