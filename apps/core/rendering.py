"""PLACEHOLDER, created on the arena branch only: the real `untrusted_markdown_render` (another branch)
replaces this module whole. The one path from untrusted text to HTML; this stand-in only escapes the
text and keeps its line breaks, so it is safe but renders no Markdown."""

from django.utils.html import escape, linebreaks


def untrusted_markdown_render(text: str) -> str:
    return linebreaks(escape(text))
