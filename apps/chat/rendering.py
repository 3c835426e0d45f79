"""Assistant messages: Markdown rendered to HTML on the server, then sanitized with an allow-list.

Model output is untrusted (it can echo whatever a prompt or a retrieved document asked for), so the
browser only ever inserts HTML that came through here; while streaming it shows plain text.
"""

import nh3
from django.urls import reverse
from markdown_it import MarkdownIt

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}


def markdown_render(text: str) -> str:
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
    )


def answer_done_event(message) -> dict:
    """The final server-sent event of an answer, from the worker or for a late viewer: its end state and
    its text rendered and sanitized (the one HTML the browser inserts)."""
    return {
        "status": message.status,
        "html": markdown_render(message.content),
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
