"""Chat-specific shaping of an answer's end. The HTML itself comes from the one untrusted renderer,
`apps.core.rendering.untrusted_markdown_render`; while an answer streams, the browser shows plain text."""

from django.urls import reverse

from apps.core.rendering import untrusted_markdown_render


def answer_done_event(message) -> dict:
    """The final server-sent event of an answer, from the worker or for a late viewer: its end state and
    its text rendered and sanitized (the one HTML the browser inserts)."""
    return {
        "status": message.status,
        "html": untrusted_markdown_render(message.content),
        "error": message.error,
        "finish_reason": message.finish_reason,
        "context": message.context,
        # knowledge: the passages the answer was given, each linked to its cited-passage page
        "sources": [
            {
                "n": source["n"],
                "document": source["document"],
                "page": source.get("page"),
                "url": reverse("knowledge:cited", args=[message.pk, source["n"]]),
            }
            for source in message.sources
        ],
    }
