"""The API's work: turn an OpenAI-style request into the engine's, and relay the engine's answer.

The assistant is applied here, server-side: its rendered instructions go first, its sampling settings
are the defaults, and its adapter (or base model) is the engine model. The caller never names an engine
model and cannot strip the instructions (the engine's `truncate_prompt_tokens` is not passed on).
"""

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
from django.conf import settings

from apps.api.errors import ApiError
from apps.assistants.models import Assistant
from apps.chat.prompt import instructions_render

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 120.0  # a long queue wait before the first token is still normal under load
ENGINE_CHAT_PATH = "/v1/chat/completions"

ROLES = {"system", "developer", "user", "assistant"}
# The engine's own bounds: (low, low inclusive, high). Outside them the request is refused with a 400.
SAMPLING_BOUNDS = {
    "temperature": (0.0, True, 2.0),
    "top_p": (0.0, False, 1.0),
    "repetition_penalty": (0.0, False, 10.0),
}
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
    low, low_inclusive, high = SAMPLING_BOUNDS[name]
    if not (value >= low if low_inclusive else value > low) or value > high:
        bracket = "[" if low_inclusive else "("
        raise _invalid(f"{name} must be in {bracket}{low:g}, {high:g}]", name)
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


def completion_payload_build(*, assistant: Assistant, body: dict, user) -> dict:
    """The engine's /v1/chat/completions body for an OpenAI-style `body` sent to `assistant`."""
    version = assistant.current_version
    for name in UNSUPPORTED:
        if body.get(name):
            raise _invalid(f"{name} is not supported", name)
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream must be true or false", "stream")
    system = {"role": "system", "content": instructions_render(version=version, user_name=user.get_username())}
    payload = {
        "model": version.adapter or version.base_model.name,
        "messages": [system, *_messages(body)],
        "temperature": _number(body, "temperature", version.temperature),
        "top_p": _number(body, "top_p", version.top_p),
        "repetition_penalty": _number(body, "repetition_penalty", version.repetition_penalty),
        "max_tokens": _max_tokens(body, version.max_tokens),
        "stream": body.get("stream", False),
    }
    payload.update({name: body[name] for name in PASS_THROUGH if body.get(name) is not None})
    return payload


# --- the engine -------------------------------------------------------------------------------------


def _engine_client() -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {settings.INFERENCE_API_KEY}"} if settings.INFERENCE_API_KEY else {}
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    return httpx.AsyncClient(base_url=settings.INFERENCE_URL, headers=headers, timeout=timeout)


def _unreachable(error: httpx.HTTPError) -> ApiError:
    return ApiError(
        503,
        f"The model server is not reachable right now ({type(error).__name__}). Try again shortly.",
        type="server_error",
        code="engine_unavailable",
    )


def _engine_error(response: httpx.Response) -> ApiError:
    """The engine's refusal as the API's: the caller's own mistakes and a full queue pass through; the
    engine's internals (its model names, its key, its crashes) do not."""
    try:
        error = response.json().get("error") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        error = {}
    status = response.status_code
    if status == 429:
        message = error.get("message") or "The model server is busy. Try again in a moment."
        return ApiError(429, message, type="rate_limit_error", code=error.get("code") or "queue_full")
    if status == 400:
        return ApiError(
            400, error.get("message") or "Invalid request.", param=error.get("param"), code=error.get("code")
        )
    if status == 404:  # the assistant's adapter is not loaded in the engine
        return ApiError(
            503, "This assistant's model is not loaded right now.", type="server_error", code="model_unavailable"
        )
    return ApiError(502, "The model server failed to answer.", type="server_error", code="engine_error")


def _relabel(data: dict, slug: str) -> dict:
    if "model" in data:
        data["model"] = slug
    return data


async def chat_completion_create(*, payload: dict, slug: str) -> dict:
    """One non-streaming completion, labelled with the assistant's slug."""
    try:
        async with _engine_client() as client:
            response = await client.post(ENGINE_CHAT_PATH, json={**payload, "stream": False})
    except httpx.HTTPError as error:
        raise _unreachable(error) from error
    if response.status_code >= 400:
        raise _engine_error(response)
    return _relabel(response.json(), slug)


async def chat_completion_stream(*, payload: dict, slug: str) -> AsyncIterator[bytes]:
    """Start a streaming completion. Refusals (429, 400, engine down) raise here, before any byte is sent,
    so they keep their HTTP status; what comes back relays the engine's server-sent events as they arrive.
    Closing it closes the engine connection, which makes the engine cancel the generation."""
    stack = AsyncExitStack()
    try:
        try:
            client = await stack.enter_async_context(_engine_client())
            response = await stack.enter_async_context(
                client.stream("POST", ENGINE_CHAT_PATH, json={**payload, "stream": True})
            )
            if response.status_code >= 400:
                await response.aread()
        except httpx.HTTPError as error:
            raise _unreachable(error) from error
        if response.status_code >= 400:
            raise _engine_error(response)
    except BaseException:
        await stack.aclose()
        raise
    return _relay(stack, response, slug)


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


async def _relay(stack: AsyncExitStack, response: httpx.Response, slug: str) -> AsyncIterator[bytes]:
    async with stack:
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    yield _sse(data)
                    return
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    continue
                yield _sse(json.dumps(_relabel(chunk, slug), ensure_ascii=False))
        except httpx.HTTPError as error:  # the engine went away mid-answer: say so in OpenAI's stream shape
            yield _sse(json.dumps(_unreachable(error).body()))
