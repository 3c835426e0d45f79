"""The web app's and the worker's client for the inference server (`inference/server.py`, over HTTP).

Failures become three domain errors with messages fit for the person chatting; callers never see an
httpx exception.
"""

import json
from collections.abc import Iterator

import httpx
from django.conf import settings

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 120.0  # a long queue wait before the first token is still normal under load


class InferenceError(Exception):
    """The engine could not answer. `message` is written for the end user."""


class InferenceUnavailable(InferenceError):
    pass


class InferenceBusy(InferenceError):
    pass


class InferenceRejected(InferenceError):
    """The request itself was refused (for example: the prompt is longer than the context window)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.INFERENCE_API_KEY}"} if settings.INFERENCE_API_KEY else {}


def _client(read_timeout: float = READ_TIMEOUT) -> httpx.Client:
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT, read=read_timeout)
    return httpx.Client(base_url=settings.INFERENCE_URL, headers=_headers(), timeout=timeout)


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
    except (json.JSONDecodeError, AttributeError):
        error = {}
    message = error.get("message") or response.text[:300] or f"HTTP {response.status_code}"
    if response.status_code == 429:
        raise InferenceBusy("The model is busy with other requests right now. Try again in a moment.")
    if response.status_code >= 500:
        raise InferenceUnavailable(f"The model server failed: {message}")
    raise InferenceRejected(message, error.get("code"))


def _unavailable(error: httpx.HTTPError) -> InferenceUnavailable:
    return InferenceUnavailable(f"The model server is not reachable ({type(error).__name__}). Try again shortly.")


def inference_tokenize(
    *, model: str, messages: list[dict] | None = None, prompt: str | None = None, add_generation_prompt: bool = True
) -> dict:
    """`{"count", "max_model_len", "tokens", "token_strs"}` for raw text or a chat through the template."""
    body = {"model": model, "return_token_strs": True, "add_generation_prompt": add_generation_prompt}
    body.update({"messages": messages} if messages is not None else {"prompt": prompt})
    try:
        with _client(read_timeout=30) as client:
            response = client.post("/tokenize", json=body)
    except httpx.HTTPError as error:
        raise _unavailable(error) from error
    _raise_for(response)
    return response.json()


def inference_complete(*, body: dict) -> dict:
    """One non-streaming `/v1/completions` call (the playground's document simulator)."""
    try:
        with _client() as client:
            response = client.post("/v1/completions", json={**body, "stream": False})
    except httpx.HTTPError as error:
        raise _unavailable(error) from error
    _raise_for(response)
    return response.json()


def inference_chat(*, body: dict) -> dict:
    """One non-streaming `/v1/chat/completions` call."""
    try:
        with _client() as client:
            response = client.post("/v1/chat/completions", json={**body, "stream": False})
    except httpx.HTTPError as error:
        raise _unavailable(error) from error
    _raise_for(response)
    return response.json()


def inference_chat_stream(*, body: dict) -> Iterator[dict]:
    """Stream `/v1/chat/completions` chunks as dicts. Closing the iterator closes the connection, which
    makes the engine cancel the request and free its slot."""
    try:
        with _client() as client, client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            if r.status_code >= 400:
                r.read()
                _raise_for(r)
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise InferenceUnavailable(f"The model server failed mid-answer: {chunk['error'].get('message')}")
                yield chunk
    except httpx.HTTPError as error:
        raise _unavailable(error) from error
