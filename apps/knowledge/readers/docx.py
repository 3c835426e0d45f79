"""Word (.docx) to blocks, with zipfile and lxml: the archive is checked before anything is decompressed.

A .docx is a ZIP archive, so an upload can be a zip bomb. The central directory declares every member's sizes
before any data is read; we refuse an archive with more than `DOCX_MAX_MEMBERS` members, more than
`DOCX_MAX_UNCOMPRESSED_BYTES` declared in total, or a member over 1 MiB that expands more than
`DOCX_MAX_RATIO` times (real Word XML compresses 5-20x). The declarations cannot lie to us afterwards:
zipfile stops a member at its declared size and checks its CRC. Encrypted members are refused. XML is parsed
without DTDs, entities or network (no billion laughs, no XXE). python-docx is not used to read: it loads
every part of the package, which is what a bomb wants.

Only the main document part is read (found through `[Content_Types].xml`, so a renamed part still works),
with its styles. Paragraphs in document order (table cells and text boxes included, the VML fallback copy of a
text box and tracked deletions excluded) become blocks; a paragraph whose style is "heading N" or "Title", or
has an outline level, is a heading. A run is hidden when its effective properties (document defaults, then
the paragraph style chain, then the character style chain, then the run's own) are: `w:vanish`
(`MARKED_HIDDEN`), a size under 2pt (`TINY_FONT`), or a colour like its background (`BACKGROUND_COLOUR`;
the background is the run's highlight or shading, else the paragraph's, else the table cell's, else the page
colour, else white). Headers, footers, footnotes and comments are not read.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

from lxml import etree

from apps.knowledge.reading import (
    RGB,
    WHITE,
    BlockWriter,
    ExtractionError,
    ExtractionFailure,
    HiddenReason,
    Reading,
    background_colour_hiding,
)

DOCX_MAX_MEMBERS = 1000
DOCX_MAX_UNCOMPRESSED_BYTES = 200 * 2**20
DOCX_MAX_RATIO = 100
_RATIO_CHECKED_FROM_BYTES = 2**20
MIN_FONT_HALF_POINTS = 4  # w:sz counts half-points: under 2pt

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_CONTENT_TYPES = "{http://schemas.openxmlformats.org/package/2006/content-types}"
_RELATIONSHIPS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_NOT_SHOWN = frozenset({_MC_FALLBACK, f"{W}del", f"{W}moveFrom"})
_MAIN_CONTENT_TYPE = re.compile(r"(wordprocessingml|ms-word)\.[\w.]*main\+xml$", re.IGNORECASE)
_HEADING_STYLE = re.compile(r"heading ([1-9])", re.IGNORECASE)
_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
_HIGHLIGHTS = {
    "black": "000000",
    "blue": "0000FF",
    "cyan": "00FFFF",
    "green": "00FF00",
    "magenta": "FF00FF",
    "red": "FF0000",
    "yellow": "FFFF00",
    "white": "FFFFFF",
    "darkBlue": "000080",
    "darkCyan": "008080",
    "darkGreen": "008000",
    "darkMagenta": "800080",
    "darkRed": "800000",
    "darkYellow": "808000",
    "darkGray": "808080",
    "lightGray": "C0C0C0",
}


def docx_main_part(data: bytes) -> str | None:
    """The main document part's name if `data` is a safe-to-open Word package, None if it is some other ZIP
    (a spreadsheet, an EPUB). Raises ExtractionError for a zip bomb, an encrypted or a damaged archive."""
    with _archive(data) as archive:
        return _main_part(archive)


def docx_read(data: bytes) -> Reading:
    with _archive(data) as archive:
        main = _main_part(archive)
        if main is None:
            raise ExtractionError(ExtractionFailure.TYPE_MISMATCH, "This ZIP archive is not a Word document.")
        document = _xml(archive, main)
        styles_part = _related_part(archive, main, "styles")
        styles = _Styles(_xml(archive, styles_part) if styles_part else None)
    page_background = _hex_rgb(_attribute(document, "background", "color"))
    body = document.find(f"{W}body")
    writer = BlockWriter()
    for paragraph in _paragraphs(body if body is not None else document):
        properties = paragraph.find(f"{W}pPr")
        style_id = _val(properties, "pStyle") or styles.default_paragraph
        paragraph_fill = _hex_rgb(_attribute(properties, "shd", "fill"))
        cell = next(paragraph.iterancestors(f"{W}tc"), None)
        cell_fill = _hex_rgb(_attribute(cell.find(f"{W}tcPr") if cell is not None else None, "shd", "fill"))
        for run in _runs(paragraph):
            run_properties = styles.run_properties(
                paragraph_style=style_id, run_style=_val(run.find(f"{W}rPr"), "rStyle"), direct=run.find(f"{W}rPr")
            )
            fills = (run_properties.get("highlight"), run_properties.get("shading"), paragraph_fill, cell_fill)
            background = next((fill for fill in (*fills, page_background) if fill is not None), WHITE)
            writer.text(_run_text(run), hidden=_run_hiding(run_properties, background))
        writer.block_end(heading_level=styles.heading_level(style_id, properties))
    return writer.reading()


@contextmanager
def _archive(data: bytes) -> Iterator[zipfile.ZipFile]:
    """The archive, opened only after its declared sizes passed the zip-bomb limits."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
        raise ExtractionError(ExtractionFailure.CORRUPT, "This file is a damaged ZIP archive.") from error
    with archive:
        _archive_check(archive.infolist())
        yield archive


def _archive_check(members: list[zipfile.ZipInfo]) -> None:
    if len(members) > DOCX_MAX_MEMBERS:
        raise ExtractionError(
            ExtractionFailure.ZIP_BOMB,
            f"This archive holds {len(members)} files, more than the {DOCX_MAX_MEMBERS} a Word document may.",
        )
    total = sum(member.file_size for member in members)
    if total > DOCX_MAX_UNCOMPRESSED_BYTES:
        raise ExtractionError(
            ExtractionFailure.ZIP_BOMB,
            f"This archive would unpack to {total / 2**20:.0f} MB, more than the "
            f"{DOCX_MAX_UNCOMPRESSED_BYTES / 2**20:.0f} MB allowed (a zip bomb?).",
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > _RATIO_CHECKED_FROM_BYTES and ratio > DOCX_MAX_RATIO:
            raise ExtractionError(
                ExtractionFailure.ZIP_BOMB,
                f"A file inside this archive expands {ratio:.0f} times when unpacked (more than {DOCX_MAX_RATIO}):"
                " a zip bomb?",
            )
        if member.flag_bits & 0x1:
            raise ExtractionError(ExtractionFailure.ENCRYPTED, "This archive is protected by a password.")


def _xml(archive: zipfile.ZipFile, name: str):
    try:
        return etree.fromstring(archive.read(name), parser=_XML_PARSER)
    except (KeyError, zipfile.BadZipFile, etree.XMLSyntaxError, ValueError, EOFError) as error:
        raise ExtractionError(ExtractionFailure.CORRUPT, "This Word document is damaged and cannot be read.") from error


def _main_part(archive: zipfile.ZipFile) -> str | None:
    if "[Content_Types].xml" not in archive.namelist():
        return None
    for override in _xml(archive, "[Content_Types].xml").iter(f"{_CONTENT_TYPES}Override"):
        if _MAIN_CONTENT_TYPE.search(override.get("ContentType", "")):
            name = override.get("PartName", "").lstrip("/")
            return name if name in archive.namelist() else None
    return None


def _related_part(archive: zipfile.ZipFile, part: str, kind: str) -> str | None:
    """The part that `part` relates to with a relationship of type `.../kind`, if any."""
    folder, name = posixpath.split(part)
    rels = posixpath.join(folder, "_rels", f"{name}.rels")
    if rels not in archive.namelist():
        return None
    for relationship in _xml(archive, rels).iter(f"{_RELATIONSHIPS}Relationship"):
        if relationship.get("Type", "").endswith(f"/{kind}"):
            target = relationship.get("Target", "")
            path = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
            return path if path in archive.namelist() else None
    return None


class _Styles:
    def __init__(self, root) -> None:
        self.by_id = {} if root is None else {style.get(f"{W}styleId"): style for style in root.iter(f"{W}style")}
        defaults = None if root is None else root.find(f"{W}docDefaults/{W}rPrDefault/{W}rPr")
        self.defaults = _run_props(defaults)
        self.default_paragraph = next(
            (
                style_id
                for style_id, style in self.by_id.items()
                if style.get(f"{W}type") == "paragraph" and style.get(f"{W}default") in ("1", "true", "on")
            ),
            None,
        )

    def chain(self, style_id: str | None) -> list:
        """The style and its bases, the base first."""
        chain = []
        while style_id and style_id in self.by_id and all(style is not self.by_id[style_id] for style in chain):
            chain.append(self.by_id[style_id])
            style_id = _val(self.by_id[style_id], "basedOn")
        return chain[::-1]

    def run_properties(self, *, paragraph_style: str | None, run_style: str | None, direct) -> dict:
        properties = dict(self.defaults)
        for style in self.chain(paragraph_style) + self.chain(run_style):
            properties.update(_run_props(style.find(f"{W}rPr")))
        properties.update(_run_props(direct))
        return properties

    def heading_level(self, style_id: str | None, paragraph_properties) -> int | None:
        outline = _val(paragraph_properties, "outlineLvl")
        for style in reversed(self.chain(style_id)):
            name = _val(style, "name") or ""
            if match := _HEADING_STYLE.fullmatch(name.strip()):
                return int(match.group(1))
            if name.strip().lower() == "title":
                return 1
            outline = outline or _val(style.find(f"{W}pPr"), "outlineLvl")
        if outline is not None and outline.isdigit() and int(outline) < 9:
            return int(outline) + 1
        return None


def _run_props(run_properties) -> dict:
    """The hiding-relevant properties an rPr element sets."""
    if run_properties is None:
        return {}
    found: dict = {}
    vanish = run_properties.find(f"{W}vanish")
    if vanish is not None:
        found["vanish"] = vanish.get(f"{W}val", "true").lower() not in ("0", "false", "off")
    size = _val(run_properties, "sz")
    if size is not None and size.isdigit():
        found["size"] = int(size)
    color = _val(run_properties, "color")
    if color is not None:
        found["color"] = _hex_rgb(color)
    shading = _attribute(run_properties, "shd", "fill")
    if shading is not None:
        found["shading"] = _hex_rgb(shading)
    highlight = _val(run_properties, "highlight")
    if highlight is not None:
        found["highlight"] = _hex_rgb(_HIGHLIGHTS.get(highlight))
    return found


def _run_hiding(properties: dict, background: RGB) -> tuple[HiddenReason, str] | None:
    if properties.get("vanish"):
        return HiddenReason.MARKED_HIDDEN, "hidden text (w:vanish)"
    size = properties.get("size")
    if size is not None and size < MIN_FONT_HALF_POINTS:
        return HiddenReason.TINY_FONT, f"{size / 2:g} pt"
    color = properties.get("color")
    return None if color is None else background_colour_hiding(color, background)


def _paragraphs(element):
    """Paragraphs in document order, text-box paragraphs after the paragraph that anchors them."""
    for child in element:
        if child.tag in _NOT_SHOWN:
            continue
        if child.tag == f"{W}p":
            yield child
        yield from _paragraphs(child)


def _runs(element):
    """The paragraph's own runs, not those of the text boxes it anchors."""
    for child in element:
        if child.tag == f"{W}r":
            yield child
        elif child.tag not in _NOT_SHOWN and child.tag != f"{W}p":
            yield from _runs(child)


def _run_text(run) -> str:
    pieces = []
    for child in run:
        if child.tag == f"{W}t":
            pieces.append(child.text or "")
        elif child.tag == f"{W}tab":
            pieces.append("\t")
        elif child.tag in (f"{W}br", f"{W}cr"):
            pieces.append("\n")
        elif child.tag == f"{W}noBreakHyphen":
            pieces.append("-")
    return "".join(pieces)


def _val(element, child: str) -> str | None:
    return _attribute(element, child, "val")


def _attribute(element, child: str, attribute: str) -> str | None:
    if element is None:
        return None
    found = element.find(f"{W}{child}")
    return None if found is None else found.get(f"{W}{attribute}")


def _hex_rgb(value: str | None) -> RGB | None:
    """A Word colour (RRGGBB) as RGB; "auto", "none" and anything else unparseable as None."""
    if value is None or not re.fullmatch(r"[0-9A-Fa-f]{6}", value):
        return None
    return tuple(int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]
