"""HTML to blocks, leaving out what a browser would not show.

lxml parses the page (libxml2's HTML parser: it recovers from any markup, and never fetches anything), the
page's own stylesheet is applied (`readers/css.py`), and one walk over `<body>` emits text in document order.
What is left out, each with its `HiddenReason`:
- `script`, `style`, `template`, `noscript` and `iframe`, and comments, anywhere (recorded first, each once,
  even inside an element hidden another way);
- elements with the `hidden` attribute or `aria-hidden="true"`;
- `display: none`, `opacity: 0`, and off-screen positioning (absolute or fixed at -1000px or further, or a
  text-indent that far), which hide an element and everything in it;
- `visibility: hidden`, a font under 3px, a transparent colour, and text coloured like its background,
  which are inherited and can be undone by a descendant, so they are decided per text node. The background is
  the nearest ancestor's solid colour (white by default); under a background image it is unknown, and no text
  there is judged by its colour: white text on a photograph is the designer's call, not an attack we can see.
Attributes are never indexed. `title` and `alt` values that address a model (`ATTRIBUTE_INSTRUCTION`) are also
recorded as hidden, for the audit; ordinary captions and tooltips are not, or every image would be a finding.

Block elements (p, li, h1-h6, td, ...) end a block; `<pre>` keeps its whitespace; headings carry their level.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

from lxml import etree
from lxml import html as lxml_html
from tinycss2.color3 import parse_color

from apps.knowledge.readers.css import Cascade, Declared, css_cascade
from apps.knowledge.reading import (
    RGB,
    WHITE,
    BlockWriter,
    HiddenReason,
    Reading,
    background_colour_hiding,
    blend,
)

NON_RENDERED = frozenset({"script", "style", "template", "noscript", "iframe"})
BLOCK_TAGS = frozenset(
    {
        *("address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl"),
        *("dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header"),
        *("hgroup", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody"),
        *("tfoot", "thead", "tr", "ul"),
    }
)
HEADING_LEVELS = {f"h{level}": level for level in range(1, 7)}
_WHITESPACE = re.compile(r"\s+")
MIN_FONT_PX = 3.0
OFF_SCREEN_PX = -1000.0
DEFAULT_FONT_PX = 16.0
_FONT_KEYWORDS_PX = {
    "xx-small": 9.0,
    "x-small": 10.0,
    "small": 13.0,
    "medium": 16.0,
    "large": 18.0,
    "x-large": 24.0,
    "xx-large": 32.0,
}
_UNIT_PX = {"px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4, "q": 96 / 101.6}

# Phrases that speak to a language model rather than describe an image or a link. Only used to decide what the
# audit shows: attributes are left out of the index whatever they say.
ATTRIBUTE_INSTRUCTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b[^.]{0,40}?\b(?:instructions?|prompts?|rules?|directions?|above|"
    r"previous|prior)\b"
    r"|\byou\s+(?:are|must|should|will)\s+now\b"
    r"|\b(?:system|hidden)\s+prompt\b"
    r"|\b(?:as\s+an?\s+)?(?:ai|assistant|language\s+model|llm|chatbot)\b[^.]{0,40}?\b(?:must|should|always|never)\b"
    r"|\b(?:do\s+not|don't|never)\s+(?:tell|mention|reveal|disclose)\b"
    r"|\b(?:respond|reply|answer)\s+(?:only\s+)?(?:with|in)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Inherited:
    """What a text node inherits from its ancestors. `background` is None where it is unknown (an image)."""

    color: RGB = (0.0, 0.0, 0.0)
    color_alpha: float = 1.0
    background: RGB | None = WHITE
    font_px: float = DEFAULT_FONT_PX
    font_source: str = ""
    invisible: str = ""  # the visibility declaration that hides this subtree, if any


def html_read(text: str) -> Reading:
    """Visible text of an HTML document as blocks, and what was left out."""
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)  # lxml refuses str input that declares an encoding
    if not text.strip():
        return Reading([], [])
    root = lxml_html.document_fromstring(text)
    reader = _Reader(css_cascade(root))
    for element in root.iter(*NON_RENDERED):
        reader.writer.passage(element.text_content(), reason=HiddenReason.NON_RENDERED, detail=f"<{element.tag}>")
    for comment in root.iter(etree.Comment):
        reader.writer.passage(comment.text or "", reason=HiddenReason.COMMENT)
    body = root.find("body")
    if body is None:
        reader.walk(root, _Inherited(), preformatted=False)
    else:  # <html> is not walked (its <head> shows nothing), but its colours and font reach the body
        reader.walk(body, _inherit(_Inherited(), reader.cascade.get(root, {})), preformatted=False)
    return reader.writer.reading()


class _Reader:
    def __init__(self, cascade: Cascade) -> None:
        self.cascade = cascade
        self.writer = BlockWriter()

    def walk(self, element, inherited: _Inherited, *, preformatted: bool) -> None:
        if not isinstance(element.tag, str):
            return  # a comment or processing instruction: recorded up front with the non-rendered elements
        tag = element.tag.lower()
        if tag in NON_RENDERED:
            return
        declared = self.cascade.get(element, {})
        hiding = _element_hiding(element, declared)
        if hiding is not None:
            reason, detail = hiding
            self.writer.passage(_rendered_text(element), reason=reason, detail=detail)
            return
        self._attributes_audit(element, tag)
        style = _inherit(inherited, declared)
        preformatted = preformatted or tag == "pre"
        block = tag in BLOCK_TAGS
        if block:
            self.writer.block_end()
        if tag == "br":
            self.writer.text("\n")
        elif tag in ("td", "th") and element.getprevious() is not None:
            self.writer.text(" | ")
        self._text(element.text, style, preformatted)
        for child in element:
            self.walk(child, style, preformatted=preformatted)
            self._text(child.tail, style, preformatted)
        if block:
            self.writer.block_end(heading_level=HEADING_LEVELS.get(tag), preformatted=tag == "pre")

    def _text(self, text: str | None, style: _Inherited, preformatted: bool) -> None:
        if not text:
            return
        if not preformatted:
            text = _WHITESPACE.sub(" ", text)
        self.writer.text(text, hidden=_text_hiding(style))

    def _attributes_audit(self, element, tag: str) -> None:
        for name in ("title", "alt"):
            value = element.get(name)
            if value and ATTRIBUTE_INSTRUCTION.search(value):
                self.writer.passage(value, reason=HiddenReason.ATTRIBUTE_INSTRUCTION, detail=f"{name} of <{tag}>")


def _rendered_text(element) -> str:
    """An element's text without its comments and non-rendered elements (each of those is a passage already)."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and child.tag.lower() not in NON_RENDERED:
            parts.append(_rendered_text(child))
        parts.append(child.tail or "")
    return "".join(parts)


def _element_hiding(element, declared: dict[str, Declared]) -> tuple[HiddenReason, str] | None:
    """Why this element hides itself and everything in it, if it does."""
    if element.get("hidden") is not None:
        return HiddenReason.MARKED_HIDDEN, "hidden attribute"
    if (element.get("aria-hidden") or "").strip().lower() == "true":
        return HiddenReason.MARKED_HIDDEN, 'aria-hidden="true"'
    display = declared.get("display")
    if display is not None and _ident(display.value) == "none":
        return HiddenReason.DISPLAY_NONE, _describe("display", display)
    opacity = declared.get("opacity")
    if opacity is not None and (value := _number(opacity.value)) is not None and value <= 0.01:
        return HiddenReason.TRANSPARENT, _describe("opacity", opacity)
    position = declared.get("position")
    if position is not None and _ident(position.value) in ("absolute", "fixed"):
        for side in ("left", "top", "right"):
            offset = declared.get(side)
            px = None if offset is None else _length_px(offset.value, DEFAULT_FONT_PX)
            if px is not None and px <= OFF_SCREEN_PX:
                return HiddenReason.OFF_PAGE, f"{_describe('position', position)}; {_describe(side, offset)}"
    indent = declared.get("text-indent")
    if indent is not None and (px := _length_px(indent.value, DEFAULT_FONT_PX)) is not None and px <= OFF_SCREEN_PX:
        return HiddenReason.OFF_PAGE, _describe("text-indent", indent)
    return None


def _inherit(parent: _Inherited, declared: dict[str, Declared]) -> _Inherited:
    style = parent
    visibility = declared.get("visibility")
    if visibility is not None:
        keyword = _ident(visibility.value)
        if keyword in ("hidden", "collapse"):
            style = replace(style, invisible=_describe("visibility", visibility))
        elif keyword == "visible":
            style = replace(style, invisible="")
    font_px = _font_size_px(declared, parent.font_px)
    if font_px is not None:
        source = declared.get("font-size") or declared["font"]
        style = replace(style, font_px=font_px, font_source=source.source)
    color = declared.get("color")
    if color is not None:
        parsed = _color(color.value)
        if parsed == "currentColor":
            pass
        elif parsed is not None:
            style = replace(style, color=tuple(parsed[:3]), color_alpha=parsed.alpha)
    background = _background(declared)
    if background == "unknown":
        style = replace(style, background=None)
    elif background is not None and background.alpha > 0:
        if background.alpha >= 1:
            style = replace(style, background=tuple(background[:3]))
        elif parent.background is not None:
            style = replace(style, background=blend(tuple(background[:3]), background.alpha, parent.background))
        else:
            style = replace(style, background=None)
    return style


@functools.lru_cache(maxsize=256)  # a page has few distinct styles and many text nodes
def _text_hiding(style: _Inherited) -> tuple[HiddenReason, str] | None:
    if style.invisible:
        return HiddenReason.VISIBILITY_HIDDEN, style.invisible
    if style.font_px < MIN_FONT_PX:
        return HiddenReason.TINY_FONT, f"font-size {style.font_px:g}px ({style.font_source})"
    if style.color_alpha <= 0.01:
        return HiddenReason.TRANSPARENT, "transparent colour"
    if style.background is not None:
        return background_colour_hiding(blend(style.color, style.color_alpha, style.background), style.background)
    return None


def _background(declared: dict[str, Declared]):
    """The element's own background: an RGBA colour, "unknown" for an image or gradient, or None (none set)."""
    image = declared.get("background-image")
    if image is not None and _ident(image.value) != "none":
        return "unknown"
    color = declared.get("background-color")
    if color is not None:
        parsed = _color(color.value)
        return parsed if parsed not in (None, "currentColor") else None
    shorthand = declared.get("background")
    if shorthand is None:
        return None
    if any(token.type in ("url", "function") and _color([token]) is None for token in shorthand.value):
        return "unknown"
    for token in shorthand.value:
        parsed = _color([token])
        if parsed not in (None, "currentColor"):
            return parsed
    return None


def _font_size_px(declared: dict[str, Declared], parent_px: float) -> float | None:
    size = declared.get("font-size")
    if size is not None:
        return _length_px(size.value, parent_px, font=True)
    shorthand = declared.get("font")
    if shorthand is None:
        return None
    for token in shorthand.value:  # "font: bold 0/0 a": the first length is the size
        if token.type in ("dimension", "percentage") or (token.type == "number" and token.value == 0):
            return _length_px([token], parent_px, font=True)
        if token.type == "ident" and token.lower_value in _FONT_KEYWORDS_PX:
            return _FONT_KEYWORDS_PX[token.lower_value]
    return None


def _length_px(value: list, relative_to: float, *, font: bool = False) -> float | None:
    """A CSS length in px; em and % are relative to `relative_to` (the parent's font size). None when unknown."""
    if len(value) != 1:
        return None
    token = value[0]
    if token.type == "number" and token.value == 0:
        return 0.0
    if token.type == "percentage":
        return token.value / 100 * relative_to if font else None
    if token.type == "ident" and font:
        keyword = token.lower_value
        if keyword == "smaller":
            return relative_to / 1.2
        if keyword == "larger":
            return relative_to * 1.2
        return _FONT_KEYWORDS_PX.get(keyword)
    if token.type != "dimension":
        return None
    unit = token.lower_unit
    if unit == "em":
        return token.value * relative_to
    if unit == "rem":
        return token.value * DEFAULT_FONT_PX
    return token.value * _UNIT_PX[unit] if unit in _UNIT_PX else None


def _color(value: list):
    return parse_color(value[0]) if len(value) == 1 else None


def _ident(value: list) -> str:
    return value[0].lower_value if len(value) == 1 and value[0].type == "ident" else ""


def _number(value: list) -> float | None:
    if len(value) != 1:
        return None
    if value[0].type == "number":
        return value[0].value
    if value[0].type == "percentage":
        return value[0].value / 100
    return None


def _describe(name: str, declared: Declared) -> str:
    return f"{name}: {declared.css} ({declared.source})"
