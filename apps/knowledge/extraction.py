"""Document extraction: an uploaded file's bytes in, the text to index out, with what was hidden in it kept apart.

    extraction = document_extract(data=upload.read(), filename=upload.name)
    extraction.text      # visible, cleaned text: what gets chunked and embedded
    extraction.pages     # PDF: each page's [start, end) in .text
    extraction.headings  # HTML h1-h6, Markdown #, Word heading styles: level, title, [start, end)
    extraction.hidden    # every removed passage with its reason, for the audit
    extraction.tag_messages  # what Unicode tag characters spelled, decoded

Pure: no database, no network, no settings beyond `KNOWLEDGE_MAX_UPLOAD_MB`. Every refusal is one
`ExtractionError`, whose message can be shown to the uploader as it is and whose `failure` is a stable code.

1. Type, by content. The name's extension says what the uploader claims (PDF, DOCX, HTML, Markdown, text); the
   bytes must agree: `%PDF-` for a PDF, a ZIP holding a Word main part for a .docx, text that decodes (UTF-8,
   a BOM, or a legacy encoding charset-normalizer is sure of) with no NULs or control characters for the text
   formats. A mismatch is refused, naming what the content is ("a PNG image").
2. Reading, per format (`apps/knowledge/readers/`): visible text as blocks, hidden passages with their reason.
3. Cleaning, per block, the same for every format: `apps.core.unicode.unicode_clean` removes invisible
   characters (tag-character messages are decoded, logged and kept; the selectors and joiners inside ordinary
   emoji are removed without a finding), then base64 runs of 24+ characters are decoded and a run that
   decodes to readable text (three or more words, mostly letters) is removed as `ENCODED_TEXT`, whether or
   not it reads as an instruction: prose nobody can read is no knowledge. Runs that decode to bytes (hashes,
   keys, images, identifiers that happen to be long) or to a token (JSON) stay. A tutorial that shows an
   encoded sentence in a code block loses it: the price of not guessing what counts as an instruction.
4. Layout: blocks joined by a blank line ("\\n\\n" appears nowhere else outside preformatted blocks, so
   the chunker can split on it), spaces collapsed per line, offsets of headings and pages recorded.

A document whose every passage was hidden extracts to empty `.text` with its `.hidden` filled: the caller
decides, with the audit in hand. A document with nothing in it at all is refused as EMPTY.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath

from charset_normalizer import from_bytes
from django.conf import settings

from apps.core.unicode import KINDS, unicode_clean
from apps.knowledge.readers.docx import docx_main_part, docx_read
from apps.knowledge.readers.html import html_read
from apps.knowledge.readers.markdown import markdown_read
from apps.knowledge.readers.pdf import pdf_read
from apps.knowledge.reading import (
    Block,
    ExtractionError,
    ExtractionFailure,
    HiddenPassage,
    HiddenReason,
    Reading,
)

__all__ = [
    "DocumentFormat",
    "Extraction",
    "ExtractionError",
    "ExtractionFailure",
    "Heading",
    "HiddenPassage",
    "HiddenReason",
    "Page",
    "document_extract",
    "document_format_detect",
    "upload_max_bytes",
    "upload_size_check",
]

log = logging.getLogger(__name__)

BASE64_MIN_RUN = 24
_BASE64_RUN = re.compile(rf"(?<![\w+/=-])[A-Za-z0-9+/_-]{{{BASE64_MIN_RUN},}}={{0,2}}(?![\w+/=-])")
_BASE64_WHOLE = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # category Cc less \t \n \v \f \r
_WORD = re.compile(r"[^\W\d_]{2,}")
_INVISIBLE_KIND = {kind: re.compile(f"[{chars}]") for kind, chars in KINDS.items()}
# Invisible characters that ordinary emoji are made of: removed like the rest, but no finding. A presentation
# selector (U+FE0E/U+FE0F) right after a character ("⚠️"), a zero-width joiner between two pictographs
# ("👩‍💻"). Smuggled bytes need runs of selectors, or joiners between letters, and those are still reported.
_PICTOGRAPH = "\u2600-\u27bf\U0001f000-\U0001faff"
_EMOJI_PARTS = re.compile(
    f"(?<=[^{KINDS['variation selectors']}])[\ufe0e\ufe0f](?![{KINDS['variation selectors']}])"
    f"|(?<=[{_PICTOGRAPH}\ufe0f])\u200d(?=[{_PICTOGRAPH}])"
)


class DocumentFormat(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"


EXTENSIONS = {
    ".pdf": DocumentFormat.PDF,
    ".docx": DocumentFormat.DOCX,
    ".html": DocumentFormat.HTML,
    ".htm": DocumentFormat.HTML,
    ".xhtml": DocumentFormat.HTML,
    ".md": DocumentFormat.MARKDOWN,
    ".markdown": DocumentFormat.MARKDOWN,
    ".txt": DocumentFormat.TEXT,
    ".text": DocumentFormat.TEXT,
}
_TEXT_FORMATS = frozenset({DocumentFormat.HTML, DocumentFormat.MARKDOWN, DocumentFormat.TEXT})
_FORMAT_NAMES = {
    DocumentFormat.PDF: "a PDF document",
    DocumentFormat.DOCX: "a Word document",
    DocumentFormat.HTML: "an HTML page",
    DocumentFormat.MARKDOWN: "a Markdown file",
    DocumentFormat.TEXT: "a text file",
}
# Binary formats named in refusals, so that "report.txt" that is really a PNG says so.
_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old-style or password-protected Office file (.doc, .xls)"),
    (b"{\\rtf", "an RTF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a program"),
    (b"PK\x05\x06", "an empty ZIP archive"),
]


@dataclass(frozen=True)
class Page:
    """A PDF page (`number` from 1) and its span [start, end) in `Extraction.text`. A page with no visible
    text has start == end."""

    number: int
    start: int
    end: int


@dataclass(frozen=True)
class Heading:
    """A heading (`level` 1 = outermost) and its span [start, end) in `Extraction.text`."""

    level: int
    title: str
    start: int
    end: int


@dataclass(frozen=True)
class Extraction:
    format: DocumentFormat
    text: str
    pages: list[Page] = field(default_factory=list)  # empty for formats without pages
    headings: list[Heading] = field(default_factory=list)
    hidden: list[HiddenPassage] = field(default_factory=list)
    tag_messages: list[str] = field(default_factory=list)

    @property
    def hidden_counts(self) -> dict[HiddenReason, int]:
        return dict(Counter(passage.reason for passage in self.hidden))

    def page_at(self, offset: int) -> int | None:
        """The number of the page holding `offset` in `text` (None without pages)."""
        if not self.pages:
            return None
        index = bisect.bisect_right([page.start for page in self.pages], offset) - 1
        return self.pages[max(index, 0)].number


def upload_max_bytes() -> int:
    """The largest upload accepted, from the KNOWLEDGE_MAX_UPLOAD_MB setting."""
    return settings.KNOWLEDGE_MAX_UPLOAD_MB * 2**20


def upload_size_check(*, size: int) -> None:
    """Refuse an upload over the limit; callers check before reading the file into memory."""
    if size > upload_max_bytes():
        raise ExtractionError(
            ExtractionFailure.TOO_LARGE,
            f"The file is {size / 2**20:.1f} MB; the limit is {settings.KNOWLEDGE_MAX_UPLOAD_MB} MB.",
        )


def document_format_detect(*, data: bytes, filename: str) -> DocumentFormat:
    """The format named by the file's extension, once its content is shown to be that format."""
    claimed = EXTENSIONS.get(PurePosixPath(filename.replace("\\", "/")).suffix.lower())
    if claimed is None:
        raise ExtractionError(
            ExtractionFailure.UNSUPPORTED_TYPE,
            f"“{filename}” is not a file type Atelier reads: upload PDF, Word (.docx), HTML, Markdown or text.",
        )
    if not data.strip():
        raise ExtractionError(ExtractionFailure.EMPTY, f"“{filename}” is empty.")
    actual = _content_format(data)
    if actual == claimed or (actual is DocumentFormat.TEXT and claimed in _TEXT_FORMATS):
        return claimed
    described = _FORMAT_NAMES.get(actual) if isinstance(actual, DocumentFormat) else actual
    raise ExtractionError(
        ExtractionFailure.TYPE_MISMATCH,
        f"“{filename}” is named as {_FORMAT_NAMES[claimed]}, but its content is {described}.",
    )


def document_extract(*, data: bytes, filename: str) -> Extraction:
    """The visible text of an uploaded document, its structure, and what was hidden in it (module docstring)."""
    upload_size_check(size=len(data))
    document_format = document_format_detect(data=data, filename=filename)
    if document_format is DocumentFormat.PDF:
        reading = pdf_read(data)
    elif document_format is DocumentFormat.DOCX:
        reading = docx_read(data)
    else:
        text = _text_decode(data)
        if document_format is DocumentFormat.HTML:
            reading = html_read(text)
        elif document_format is DocumentFormat.MARKDOWN:
            reading = markdown_read(text)
        else:
            reading = _plain_read(text)
    if not reading.blocks and not reading.hidden:
        raise ExtractionError(ExtractionFailure.EMPTY, f"“{filename}” contains no text.")
    extraction = _layout(reading, document_format=document_format, source=filename)
    if extraction.hidden:
        counts = ", ".join(f"{count} {reason}" for reason, count in extraction.hidden_counts.items())
        log.warning("hidden content removed from %s: %s", filename, counts)
    return extraction


def _content_format(data: bytes) -> DocumentFormat | str:
    """What the bytes are: a DocumentFormat (TEXT standing for every text format), or a description."""
    if data.startswith(b"%PDF-"):
        return DocumentFormat.PDF
    if data.startswith(b"PK\x03\x04"):
        return DocumentFormat.DOCX if docx_main_part(data) else "a ZIP archive that is not a Word document"
    for signature, description in _SIGNATURES:
        if data.startswith(signature):
            return description
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "a WebP image"
    try:
        _text_decode(data)
    except ExtractionError:
        return "binary data, not text"
    return DocumentFormat.TEXT


def _text_decode(data: bytes) -> str:
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            try:
                return _text_check(data[len(bom) :].decode(codec))
            except UnicodeDecodeError:
                break
    else:
        if b"\x00" not in data:
            try:
                return _text_check(data.decode("utf-8"))
            except UnicodeDecodeError:
                guess = from_bytes(data).best()
                if guess is not None:
                    return _text_check(str(guess))
    raise ExtractionError(ExtractionFailure.TYPE_MISMATCH, "The file is binary data, not text.")


def _text_check(text: str) -> str:
    """Text with more than 1% control characters (other than whitespace) is binary that happened to decode."""
    if len(_CONTROL.findall(text)) > len(text) / 100:
        raise ExtractionError(ExtractionFailure.TYPE_MISMATCH, "The file is binary data, not text.")
    return text


def _plain_read(text: str) -> Reading:
    """Plain text: paragraphs are separated by blank lines; no headings, nothing hidden by layout."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    return Reading([Block(paragraph) for paragraph in paragraphs if paragraph.strip()], [])


def _layout(reading: Reading, *, document_format: DocumentFormat, source: str) -> Extraction:
    hidden = list(reading.hidden)
    invisible: dict[str, list[str]] = {}
    tag_messages: list[str] = []
    parts: list[str] = []
    headings: list[Heading] = []
    page_spans: dict[int, list[int]] = {}
    offset = 0
    for block in reading.blocks:
        clean = unicode_clean(block.text, source=source)
        for finding in clean.findings:
            if finding.decoded:
                tag_messages.append(finding.decoded)
            else:
                suspicious = _INVISIBLE_KIND[finding.kind].findall(_EMOJI_PARTS.sub("", block.text))
                if suspicious:
                    invisible.setdefault(finding.kind, []).extend(suspicious)
        text = _encoded_remove(clean.text, hidden=hidden, page=block.page)
        text = _preformatted_tidy(text) if block.preformatted else _spaces_collapse(text)
        if not text:
            continue
        if parts:
            parts.append("\n\n")
            offset += 2
        start, offset = offset, offset + len(text)
        parts.append(text)
        if block.heading_level is not None:
            headings.append(Heading(level=block.heading_level, title=" ".join(text.split()), start=start, end=offset))
        if block.page is not None:
            page_spans.setdefault(block.page, [start, offset])[1] = offset
    hidden += [
        HiddenPassage(reason=HiddenReason.INVISIBLE_CHARACTERS, text=message, detail="tag characters")
        for message in tag_messages
    ]
    hidden += [
        HiddenPassage(reason=HiddenReason.INVISIBLE_CHARACTERS, text="".join(chars), detail=f"{len(chars)} {kind}")
        for kind, chars in invisible.items()
    ]
    pages: list[Page] = []
    for number in range(1, (reading.page_count or 0) + 1):
        previous_end = pages[-1].end if pages else 0
        start, end = page_spans.get(number, (previous_end, previous_end))
        pages.append(Page(number=number, start=start, end=end))
    return Extraction(
        format=document_format,
        text="".join(parts),
        pages=pages,
        headings=headings,
        hidden=hidden,
        tag_messages=tag_messages,
    )


def _encoded_remove(text: str, *, hidden: list[HiddenPassage], page: int | None) -> str:
    """`text` without the base64 runs that decode to readable text; each one removed is added to `hidden`."""

    def replace(match: re.Match) -> str:
        decoded = _base64_text(match.group())
        if decoded is None:
            return match.group()
        hidden.append(
            HiddenPassage(
                reason=HiddenReason.ENCODED_TEXT, text=match.group(), detail=f"base64 of: {decoded}", page=page
            )
        )
        return ""

    return _BASE64_RUN.sub(replace, text)


def _base64_text(run: str, *, depth: int = 3) -> str | None:
    """What a base64 run spells if it is readable text (through up to `depth` layers of encoding), else None."""
    body = run.rstrip("=")
    url_safe, standard = bool(set(body) & set("-_")), bool(set(body) & set("+/"))
    if len(body) % 4 == 1 or (url_safe and standard):
        return None
    altchars = b"-_" if url_safe else None
    try:
        decoded = base64.b64decode(body + "=" * (-len(body) % 4), altchars=altchars, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    decoded = decoded.strip()
    if _readable(decoded):
        return decoded
    if depth > 1 and len(decoded) >= BASE64_MIN_RUN and _BASE64_WHOLE.fullmatch(decoded):
        return _base64_text(decoded, depth=depth - 1)
    return None


def _readable(text: str) -> bool:
    """Prose, as opposed to bytes that happen to be valid UTF-8 or a token like JSON: printable, at least three
    words separated by spaces, mostly letters."""
    if not text or any(not char.isprintable() and not char.isspace() for char in text):
        return False
    visible = [char for char in text if not char.isspace()]
    letters = sum(1 for char in visible if char.isalpha())
    return len(_WORD.findall(text)) >= 3 and len(text.split()) >= 3 and letters >= 0.7 * len(visible)


def _spaces_collapse(text: str) -> str:
    lines = (re.sub(r"[^\S\n]+", " ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _preformatted_tidy(text: str) -> str:
    """Code keeps its indentation; trailing spaces and blank lines at either end go."""
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")
