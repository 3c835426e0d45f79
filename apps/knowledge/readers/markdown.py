"""Markdown to blocks: rendered to HTML by markdown-it-py, then read by the HTML reader, so that embedded HTML,
HTML comments and a `<style>` block in the Markdown meet exactly the rules an HTML page does.

CommonMark plus tables and strikethrough, raw HTML on (it is what a Markdown viewer would show, and the HTML
rules decide what of it is visible). Link-reference definitions never render; one that no link or image uses
and that carries a title is the comment idiom (`[//]: # (text)`, `[comment]: <> (text)`): its title is recorded
as a hidden `COMMENT`. An unused definition without a title holds only a URL and is not a finding.
"""

from __future__ import annotations

from markdown_it import MarkdownIt

from apps.knowledge.readers.html import html_read
from apps.knowledge.reading import HiddenPassage, HiddenReason, Reading


def markdown_read(text: str) -> Reading:
    md = MarkdownIt("commonmark", {"html": True, "inline_definitions": True}).enable(["table", "strikethrough"])
    env: dict = {}
    tokens = md.parse(text, env)
    targets = {
        (child.attrs.get("href", child.attrs.get("src")), child.attrs.get("title"))
        for token in tokens
        for child in token.children or []
        if child.type in ("link_open", "image")
    }
    comments = [
        HiddenPassage(
            reason=HiddenReason.COMMENT, text=token.meta["title"], detail=f"[{token.meta['label']}]: link reference"
        )
        for token in tokens
        if token.type == "definition"
        and token.meta["title"]
        and (token.meta["url"], token.meta["title"]) not in targets
    ]
    reading = html_read(md.renderer.render([t for t in tokens if t.type != "definition"], md.options, env))
    return Reading(reading.blocks, comments + reading.hidden)
