"""What every format reader shares: the blocks a reader hands back, the hidden passages it found, the one
refusal type, and the contrast rule that decides when text is coloured like its background.

A reader (`apps/knowledge/readers/`) turns one format into a `Reading`: visible text as `Block`s in reading
order (a paragraph, a heading, a PDF text box) and every piece it left out as a `HiddenPassage` with its
`HiddenReason`. `BlockWriter` is how readers build both: they feed it text pieces in document order, each
visible or hidden for a reason, and it joins consecutive hidden pieces with the same reason into one passage
(three white `<span>`s in a row are one hidden sentence, not three findings). Whitespace between two hidden
pieces does not end the passage; visible text does.

`extraction.py` then cleans the blocks (invisible Unicode, encoded payloads) and lays them out as one text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

RGB = tuple[float, float, float]  # each channel 0..1

WHITE: RGB = (1.0, 1.0, 1.0)
# Text whose WCAG contrast ratio against its background is below this reads as the background: #f0f0f0 on
# white is 1.13 (hidden), #dddddd on white is 1.36 (faint but readable, kept). Normal body text is 4.5+.
MIN_CONTRAST = 1.2


class HiddenReason(StrEnum):
    """Why a passage was left out of the indexed text. One value per technique, whatever the format."""

    NON_RENDERED = "non-rendered element"  # HTML script, style, template, noscript, iframe
    COMMENT = "comment"  # HTML comments, Markdown link-reference comments
    MARKED_HIDDEN = "marked hidden"  # HTML hidden and aria-hidden, Word's hidden-text property (w:vanish)
    DISPLAY_NONE = "display: none"
    VISIBILITY_HIDDEN = "visibility: hidden"
    TRANSPARENT = "transparent"  # CSS opacity 0 or a transparent colour, PDF fill alpha 0
    TINY_FONT = "tiny font"  # HTML under 3px, PDF and Word under 2pt
    OFF_PAGE = "off the page"  # HTML off-screen positioning, PDF text outside the page box
    BACKGROUND_COLOUR = "coloured like its background"
    INVISIBLE_RENDER_MODE = "invisible render mode"  # PDF text render mode 3 (or 7: clip only)
    COVERED = "covered by a shape"  # PDF text under an opaque shape or image drawn later
    ATTRIBUTE_INSTRUCTION = "instruction in an attribute"  # HTML title/alt that addresses a model
    ENCODED_TEXT = "encoded text"  # a base64 run that decodes to readable text
    INVISIBLE_CHARACTERS = "invisible characters"  # what apps.core.unicode.unicode_clean removed


@dataclass(frozen=True)
class HiddenPassage:
    """One removed passage, kept for the audit.

    `text` is what was removed (whitespace collapsed; for tag characters, the message they spell; for other
    invisible characters, the characters themselves). `detail` says how it was hidden, for a person: the CSS
    declaration and the rule it came from, the PDF fill colour, the decoded base64. `page` is the PDF page
    (1-based), None for formats without pages.
    """

    reason: HiddenReason
    text: str
    detail: str = ""
    page: int | None = None


@dataclass(frozen=True)
class Block:
    """A run of visible text that layout keeps together: a paragraph, a heading, a list item, a PDF text box.
    `preformatted` keeps its spaces and blank lines (code)."""

    text: str
    heading_level: int | None = None
    page: int | None = None
    preformatted: bool = False


@dataclass(frozen=True)
class Reading:
    """A reader's result. `page_count` is set for paginated formats (PDF), so empty pages still count."""

    blocks: list[Block]
    hidden: list[HiddenPassage]
    page_count: int | None = None


class ExtractionFailure(StrEnum):
    """Why a file was refused, as a stable code for callers; the message says it for a person."""

    EMPTY = "empty"
    TOO_LARGE = "too large"
    UNSUPPORTED_TYPE = "unsupported type"
    TYPE_MISMATCH = "type mismatch"  # the content is not what the file name says
    CORRUPT = "corrupt"
    ENCRYPTED = "encrypted"
    NO_TEXT_LAYER = "no text layer"  # a scanned PDF: images, no text
    ZIP_BOMB = "zip bomb"


class ExtractionError(Exception):
    """The one error for a file that cannot be extracted. `str(error)` is a plain-English message fit to
    show the person who uploaded it; `failure` is the stable code. Both are in `args`, so the error survives
    Celery's serialization."""

    def __init__(self, failure: ExtractionFailure, message: str) -> None:
        super().__init__(failure, message)
        self.failure = ExtractionFailure(failure)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BlockWriter:
    """Builds a `Reading` from text pieces fed in document order (see the module docstring)."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.hidden: list[HiddenPassage] = []
        self._parts: list[str] = []
        self._pending: tuple[HiddenReason, str, int | None, list[str]] | None = None

    def text(self, text: str, *, hidden: tuple[HiddenReason, str] | None = None, page: int | None = None) -> None:
        """Add a piece of text: visible, or hidden as (reason, detail)."""
        if not text:
            return
        if hidden is None:
            if text.strip():
                self._passage_close()
            elif self._pending is not None:
                self._pending[3].append(text)
            self._parts.append(text)
            return
        reason, detail = hidden
        if self._pending is not None and self._pending[:2] == (reason, detail):
            self._pending[3].append(text)
            return
        self._passage_close()
        self._pending = (reason, detail, page, [text])

    def passage(self, text: str, *, reason: HiddenReason, detail: str = "", page: int | None = None) -> None:
        """Record a whole hidden passage at once (a hidden element and everything in it)."""
        self._passage_close()
        self._passage_add(text, reason=reason, detail=detail, page=page)

    def block_end(self, *, heading_level: int | None = None, page: int | None = None, preformatted: bool = False):
        """End the current block; blank ones are dropped."""
        text = "".join(self._parts)
        self._parts = []
        if self._pending is not None:
            self._pending[3].append("\n")
        if text.strip():
            self.blocks.append(Block(text, heading_level=heading_level, page=page, preformatted=preformatted))

    def reading(self, *, page_count: int | None = None) -> Reading:
        self.block_end()
        self._passage_close()
        return Reading(self.blocks, self.hidden, page_count)

    def _passage_close(self) -> None:
        if self._pending is not None:
            reason, detail, page, parts = self._pending
            self._pending = None
            self._passage_add("".join(parts), reason=reason, detail=detail, page=page)

    def _passage_add(self, text: str, *, reason: HiddenReason, detail: str, page: int | None) -> None:
        text = " ".join(text.split())
        if text:
            self.hidden.append(HiddenPassage(reason=reason, text=text, detail=detail, page=page))


def _luminance(rgb: RGB) -> float:
    def linear(channel: float) -> float:
        channel = min(max(channel, 0.0), 1.0)
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4

    r, g, b = rgb
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def contrast_ratio(foreground: RGB, background: RGB) -> float:
    """The WCAG 2 contrast ratio, 1 (identical) to 21 (black on white)."""
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def blend(top: RGB, alpha: float, bottom: RGB) -> RGB:
    """`top` drawn with `alpha` over `bottom`."""
    return tuple(alpha * t + (1 - alpha) * b for t, b in zip(top, bottom, strict=True))  # type: ignore[return-value]


def background_colour_hiding(foreground: RGB, background: RGB) -> tuple[HiddenReason, str] | None:
    """The contrast rule, as every reader reports it: text coloured `foreground` on `background` is hidden
    (BACKGROUND_COLOUR, with both colours as the detail) when their contrast is under MIN_CONTRAST."""
    if contrast_ratio(foreground, background) >= MIN_CONTRAST:
        return None
    return HiddenReason.BACKGROUND_COLOUR, f"colour {_hex_colour(foreground)} on {_hex_colour(background)}"


def _hex_colour(rgb: RGB) -> str:
    return "#" + "".join(f"{round(min(max(channel, 0.0), 1.0) * 255):02x}" for channel in rgb)
