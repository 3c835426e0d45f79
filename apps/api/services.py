"""The API's work: turn an OpenAI-style request into the engine's, and relay the engine's answer.

The assistant is applied here, server-side, by the same engine-request builder as chat: its rendered
instructions go first, its sampling settings are the defaults, its adapter (or base model) is the engine
model, and a conversation longer than the context window loses its oldest turns (the response's
X-Atelier-Turns-Dropped header says how many). The caller never names an engine model and cannot strip
the instructions (the engine's `truncate_prompt_tokens` is not passed on). An assistant with knowledge gets
its passages in the prompt like chat; the answer also says which passage each [n] names (`atelier_sources`:
on the response, or on a stream's first chunk), and markers naming none are removed, from a streamed answer
too (`CitationStream`: a marker split across chunks is checked whole).
"""

import dataclasses
import json
from collections.abc import AsyncIterator

from apps.api.errors import ApiError
from apps.assistants.engine import ContextTooSmall, EngineRequest, engine_request_build
from apps.assistants.models import Assistant
from apps.core.inference_client import (
    InferenceBusy,
    InferenceError,
    InferenceRejected,
    inference_chat_async,
    inference_chat_stream_async,
)
from apps.core.sse import sse_event
from apps.knowledge.prompting import CitationStream, citations_finalize
from inference.sampler import SAMPLING_BOUNDS

ROLES = {"system", "developer", "user", "assistant"}
# Passed to the engine as given; it validates them and its 400s are passed back.
PASS_THROUGH = (
    "n",
    "stop",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "logprobs",
    "top_logprobs",
    "stream_options",
    "user",
)
UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call")


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name} must be a number", name)
    bound = SAMPLING_BOUNDS[name]  # the engine's own: outside them it would refuse anyway
    if value not in bound:
        raise _invalid(f"{name} must be in {bound}", name)
    return value


def _max_tokens(body: dict, default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _invalid(f"{name} must be a whole number of at least 1", name)
        return value
    return default


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty list", "messages")
    cleaned = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise _invalid(f"messages[{i}] needs a role, one of {', '.join(sorted(ROLES))}", f"messages.{i}.role")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise _invalid(f"messages[{i}].content must be a string or a list of text parts", f"messages.{i}.content")
        cleaned.append({"role": message["role"], "content": content})
    return cleaned


def completion_request_parse(*, raw: bytes) -> dict:
    """The request body as a JSON object, with a `model` string."""
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _invalid("The body must be JSON (Content-Type: application/json).") from None
    if not isinstance(body, dict):
        raise _invalid("The body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("model is required: the address of an assistant you may use", "model")
    return body


def completion_payload_build(*, assistant: Assistant, body: dict, user) -> EngineRequest:
    """The engine request for an OpenAI-style `body` sent to `assistant`. Sync: it counts tokens."""
    version = assistant.current_version
    for name in UNSUPPORTED:
        if body.get(name):
            raise _invalid(f"{name} is not supported", name)
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream must be true or false", "stream")
    sampling = {
        name: _number(body, name, getattr(version, name)) for name in ("temperature", "top_p", "repetition_penalty")
    }
    try:
        request = engine_request_build(
            version=version,
            messages=_messages(body),
            user_name=user.get_username(),
            max_tokens=_max_tokens(body, version.max_tokens),
            sampling=sampling,
        )
    except ContextTooSmall as error:
        raise ApiError(400, str(error), param="messages", code="context_length_exceeded") from error
    except InferenceError as error:
        raise api_error_from_engine(error) from error
    payload = {**request.body, "stream": body.get("stream", False)}
    payload.update({name: body[name] for name in PASS_THROUGH if body.get(name) is not None})
    return dataclasses.replace(request, body=payload)


# --- the engine -------------------------------------------------------------------------------------


def api_error_from_engine(error: InferenceError) -> ApiError:
    """The engine's refusal as the API's: the caller's own mistakes and a full queue pass through; the
    engine's internals (its model names, its key, its crashes) do not."""
    if isinstance(error, InferenceBusy):
        return ApiError(429, str(error), type="rate_limit_error", code=error.code or "queue_full")
    if isinstance(error, InferenceRejected) and error.status == 400:
        return ApiError(400, str(error), param=error.param, code=error.code)
    if isinstance(error, InferenceRejected) and error.status == 404:  # the adapter is not loaded in the engine
        return ApiError(
            503, "This assistant's model is not loaded right now.", type="server_error", code="model_unavailable"
        )
    if isinstance(error, InferenceRejected) or error.status != 503:
        return ApiError(502, "The model server failed to answer.", type="server_error", code="engine_error")
    return ApiError(
        503,
        "The model server is not reachable right now. Try again shortly.",
        type="server_error",
        code="engine_unavailable",
    )


def _relabel(data: dict, slug: str) -> dict:
    if "model" in data:
        data["model"] = slug
    return data


async def chat_completion_create(*, payload: dict, slug: str, sources: list[dict] | None = None) -> dict:
    """One non-streaming completion, labelled with the assistant's slug. With knowledge `sources` (the
    passages the engine request carried), each answer's citation markers are checked against them and the
    response says what [1], [2]... name, in `atelier_sources` (number, document, page; never the text)."""
    try:
        data = _relabel(await inference_chat_async(body=payload), slug)
    except InferenceError as error:
        raise api_error_from_engine(error) from error
    if sources:
        for choice in data.get("choices", []):
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = citations_finalize(text=message["content"], sources=sources)
        data["atelier_sources"] = _sources_named(sources)
    return data


def _sources_named(sources: list[dict]) -> list[dict]:
    return [{"n": s["n"], "document": s["document"], "page": s.get("page")} for s in sources]


async def chat_completion_stream(*, payload: dict, slug: str, sources: list[dict] | None = None) -> AsyncIterator[str]:
    """Start a streaming completion. Refusals (429, 400, engine down) raise here, before any byte is sent,
    so they keep their HTTP status; what comes back relays the engine's chunks as they arrive, with the
    citation markers checked against the knowledge `sources` as in a non-streaming answer. Closing it
    closes the engine connection, which makes the engine cancel the generation."""
    try:
        chunks = await inference_chat_stream_async(body=payload)
    except InferenceError as error:
        raise api_error_from_engine(error) from error
    return _relay(chunks, slug, sources or [])


def stream_chunk_citations_check(*, chunk: dict, streams: dict[int, CitationStream], sources: list[dict]) -> dict:
    """The chunk with each choice's text passed through that choice's CitationStream; a choice's held-back
    tail goes out with its finishing chunk."""
    for choice in chunk.get("choices", []):
        stream = streams.setdefault(choice.get("index", 0), CitationStream(sources=sources))
        delta = choice.get("delta") or {}
        text = stream.feed(delta["content"]) if isinstance(delta.get("content"), str) else None
        if choice.get("finish_reason"):
            text = (text or "") + stream.flush()
        if text is not None:
            choice["delta"] = {**delta, "content": text}
    return chunk


async def _relay(chunks: AsyncIterator[dict], slug: str, sources: list[dict]) -> AsyncIterator[str]:
    streams: dict[int, CitationStream] = {}
    first = True
    try:
        async for chunk in chunks:
            if sources:
                chunk = stream_chunk_citations_check(chunk=chunk, streams=streams, sources=sources)
                if first:
                    chunk["atelier_sources"] = _sources_named(sources)
            first = False
            yield sse_event(_relabel(chunk, slug))
    except InferenceError as error:  # the engine went away mid-answer: say so in OpenAI's stream shape
        yield sse_event(api_error_from_engine(error).body())
        return
    finally:
        await chunks.aclose()
    yield sse_event("[DONE]")
