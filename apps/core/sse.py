"""Server-sent events: one way to write an event and one way to send a stream of them."""

import json
from collections.abc import AsyncIterator, Iterator

from django.http import StreamingHttpResponse


def sse_event(data: dict | str, *, event: str = "") -> str:
    """One event; a dict is sent as JSON, a str as it is (OpenAI's `[DONE]`)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n"


def sse_response(events: Iterator[str] | AsyncIterator[str]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx and friends must not buffer the stream
    return response
