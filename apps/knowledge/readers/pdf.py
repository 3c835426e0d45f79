"""PDF to blocks with pdfminer.six (MIT), leaving out text a reader of the rendered page cannot see.

pdfminer gives every glyph as an `LTChar` with its box, its size and a copy of the graphics state, and groups
glyphs into lines and text boxes (a box becomes a block). What it does not track, it was checked in its
source (20260107), we add with one interpreter and one device subclass:
- the text render mode lives in the text state, which `render_char` never sees: `Tr` is mirrored into our
  graphics state, which every `LTChar` carries;
- fill and stroke alpha: pdfminer's `gs` operator is a no-op; ours reads the ExtGState's `ca` and `CA`;
- draw order and filled shapes: each text string, filled path and image gets a sequence number, and filled
  paths are kept as polygons with their colour and alpha (pdfminer's own LTRect/LTCurve drop the alpha).
A form XObject starts from its caller's graphics state (pdfminer starts it fresh, so `/GS0 gs /Fm0 Do` would
lose the transparency).

Each glyph is then judged, first match wins: render mode 3 or 7 (`INVISIBLE_RENDER_MODE`); alpha 0
(`TRANSPARENT`); under 2pt (`TINY_FONT`); centre outside the crop box (`OFF_PAGE`); its box inside an opaque
shape or image drawn later (`COVERED`); coloured like what lies under it (`BACKGROUND_COLOUR`): the topmost
opaque shape drawn earlier under its centre, or white paper, so white text on a dark band stays visible; under
an earlier image the background is unknown and colour is not judged. Colours in DeviceGray, DeviceRGB,
DeviceCMYK (and their Cal/ICC equivalents by component count) are judged; patterns and spot colours are not.

Known gaps: text clipped away by a clipping path is kept; pdfminer inflates compressed streams without a size
limit, so a deflate bomb inside a PDF costs memory until the worker's own limit (the upload limit bounds the
file, not what it inflates to). Scanned PDFs made searchable by OCR put an invisible (mode 3) text layer over
the page image; those pages come out hidden, as the rule says.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from pdfminer.converter import PDFPageAggregator
from pdfminer.layout import LAParams, LTAnno, LTChar, LTContainer, LTTextBox
from pdfminer.pdfcolor import PDFColorSpace
from pdfminer.pdfdocument import PDFDocument, PDFEncryptionError, PDFPasswordIncorrect
from pdfminer.pdfinterp import PDFGraphicState, PDFPageInterpreter, PDFResourceManager
from pdfminer.pdfpage import PDFPage
from pdfminer.pdfparser import PDFParser
from pdfminer.pdftypes import dict_value, resolve1
from pdfminer.psparser import literal_name
from pdfminer.utils import apply_matrix_pt, apply_matrix_rect

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

MIN_FONT_PT = 2.0
INVISIBLE_RENDER_MODES = frozenset({3, 7})
STROKE_ONLY_RENDER_MODES = frozenset({1, 5})
# pdfminer logs every malformed operator it skips; a hostile PDF would flood the worker's log.
logging.getLogger("pdfminer").setLevel(logging.ERROR)


class _GraphicState(PDFGraphicState):
    """pdfminer's graphics state plus what hiding depends on."""

    def __init__(self) -> None:
        super().__init__()
        self.fill_alpha = 1.0
        self.stroke_alpha = 1.0
        self.text_render = 0
        self.order = 0  # set on the copy each text string carries

    def copy(self) -> _GraphicState:
        state = _GraphicState()
        state.__dict__.update(self.__dict__)
        return state


class _Interpreter(PDFPageInterpreter):
    inherited_state: _GraphicState | None = None

    def init_state(self, ctm) -> None:
        super().init_state(ctm)
        self.graphicstate = self.inherited_state.copy() if self.inherited_state else _GraphicState()

    def subinterp(self) -> _Interpreter:
        interpreter = super().subinterp()
        interpreter.inherited_state = self.graphicstate.copy()
        return interpreter

    def do_gs(self, name) -> None:
        try:
            parameters = dict_value(dict_value(self.resources.get("ExtGState"))[literal_name(name)])
        except (KeyError, TypeError):
            return
        for key, attribute in (("ca", "fill_alpha"), ("CA", "stroke_alpha")):
            value = resolve1(parameters.get(key))
            if isinstance(value, int | float):
                setattr(self.graphicstate, attribute, min(max(float(value), 0.0), 1.0))

    def do_Tr(self, render) -> None:
        super().do_Tr(render)
        self.graphicstate.text_render = self.textstate.render

    def do_F(self) -> None:  # the obsolete spelling of f, a no-op in pdfminer
        self.do_f()


@dataclass(frozen=True)
class _Paint:
    """A filled shape or an image, in page space. `color` None: unknown (an image, a pattern)."""

    order: int
    box: tuple[float, float, float, float]
    polygons: list[list[tuple[float, float]]]
    color: RGB | None
    opaque: bool

    def contains(self, x: float, y: float) -> bool:
        x0, y0, x1, y1 = self.box
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            return False
        if not self.polygons:  # an image fills its box
            return True
        return any(_inside(x, y, polygon) for polygon in self.polygons)


class _Device(PDFPageAggregator):
    def begin_page(self, page, ctm) -> None:
        super().begin_page(page, ctm)
        self.paints: list[_Paint] = []
        self.order = 0
        self.images = 0
        x0, y0, x1, y1 = apply_matrix_rect(ctm, page.cropbox)
        self.page_box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def render_string(self, textstate, seq, ncs, graphicstate) -> None:
        self.order += 1
        graphicstate.order = self.order
        super().render_string(textstate, seq, ncs, graphicstate)

    def paint_path(self, gstate, stroke, fill, evenodd, path) -> None:
        if not fill:
            return
        polygons: list[list[tuple[float, float]]] = []
        for segment in path:
            operator, *operands = segment
            if operator == "m" or not polygons:
                polygons.append([])
            points = [(float(operands[i]), float(operands[i + 1])) for i in range(0, len(operands) - 1, 2)]
            polygons[-1].extend(apply_matrix_pt(self.ctm, point) for point in points)
        polygons = [polygon for polygon in polygons if len(polygon) >= 3]
        if not polygons:
            return
        xs = [x for polygon in polygons for x, _ in polygon]
        ys = [y for polygon in polygons for _, y in polygon]
        self.order += 1
        self.paints.append(
            _Paint(
                order=self.order,
                box=(min(xs), min(ys), max(xs), max(ys)),
                polygons=polygons,
                color=_rgb(gstate.ncs, gstate.ncolor),
                opaque=gstate.fill_alpha >= 0.99,
            )
        )

    def render_image(self, name, stream) -> None:
        super().render_image(name, stream)
        self.order += 1
        self.images += 1
        masked = any(key in stream for key in ("SMask", "Mask", "ImageMask"))
        figure = self.cur_item
        self.paints.append(_Paint(self.order, (figure.x0, figure.y0, figure.x1, figure.y1), [], None, not masked))


def pdf_read(data: bytes) -> Reading:
    try:
        document = PDFDocument(PDFParser(io.BytesIO(data)))
    except PDFPasswordIncorrect as error:
        raise ExtractionError(
            ExtractionFailure.ENCRYPTED,
            "This PDF is protected by a password. Save a copy without the password and upload that.",
        ) from error
    except PDFEncryptionError as error:
        raise ExtractionError(
            ExtractionFailure.ENCRYPTED, "This PDF is encrypted in a way Atelier cannot open."
        ) from error
    except Exception as error:  # pdfminer raises many types on malformed input; all mean the same here
        raise ExtractionError(ExtractionFailure.CORRUPT, "This PDF is damaged and cannot be read.") from error

    resources = PDFResourceManager()
    device = _Device(resources, laparams=LAParams(all_texts=True))
    interpreter = _Interpreter(resources, device)
    writer = BlockWriter()
    pages = glyphs = images = 0
    try:
        for number, page in enumerate(PDFPage.create_pages(document), start=1):
            interpreter.process_page(page)
            pages, images = number, images + device.images
            for box in _text_boxes(device.get_result()):
                for line in box:
                    for item in line:
                        if isinstance(item, LTChar):
                            glyphs += not item.get_text().isspace()
                            hidden = None if item.get_text().isspace() else _glyph_hiding(item, device)
                            writer.text(item.get_text(), hidden=hidden, page=number)
                        elif isinstance(item, LTAnno):
                            writer.text(item.get_text(), page=number)
                writer.block_end(page=number)
    except Exception as error:  # a malformed content stream, font or image, anywhere in the file: as above
        raise ExtractionError(ExtractionFailure.CORRUPT, "This PDF is damaged and cannot be read.") from error
    if not pages:
        raise ExtractionError(ExtractionFailure.EMPTY, "This PDF has no pages.")
    if not glyphs:
        if images:
            raise ExtractionError(
                ExtractionFailure.NO_TEXT_LAYER,
                "This PDF holds only images (a scan?) and no text. Run it through OCR first, then upload it.",
            )
        raise ExtractionError(ExtractionFailure.EMPTY, "This PDF contains no text.")
    return writer.reading(page_count=pages)


def _text_boxes(container):
    for item in container:
        if isinstance(item, LTTextBox):
            yield item
        elif isinstance(item, LTContainer):
            yield from _text_boxes(item)


def _glyph_hiding(glyph: LTChar, device: _Device) -> tuple[HiddenReason, str] | None:
    state = glyph.graphicstate
    mode = state.text_render
    if mode in INVISIBLE_RENDER_MODES:
        return HiddenReason.INVISIBLE_RENDER_MODE, f"text render mode {mode}"
    stroked = mode in STROKE_ONLY_RENDER_MODES
    alpha = state.stroke_alpha if stroked else state.fill_alpha
    if alpha <= 0.01:
        return HiddenReason.TRANSPARENT, f"{'stroke' if stroked else 'fill'} alpha {alpha:g}"
    if glyph.size < MIN_FONT_PT:
        return HiddenReason.TINY_FONT, f"{glyph.size:.2g} pt"
    cx, cy = (glyph.x0 + glyph.x1) / 2, (glyph.y0 + glyph.y1) / 2
    px0, py0, px1, py1 = device.page_box
    if not (px0 <= cx <= px1 and py0 <= cy <= py1):
        return HiddenReason.OFF_PAGE, "outside the page box"
    inset_x, inset_y = glyph.width * 0.1, glyph.height * 0.1
    corners = [
        (glyph.x0 + inset_x, glyph.y0 + inset_y),
        (glyph.x1 - inset_x, glyph.y0 + inset_y),
        (glyph.x0 + inset_x, glyph.y1 - inset_y),
        (glyph.x1 - inset_x, glyph.y1 - inset_y),
    ]
    for paint in device.paints:
        if paint.order > state.order and paint.opaque and all(paint.contains(x, y) for x, y in corners):
            return HiddenReason.COVERED, f"under an opaque {'shape' if paint.polygons else 'image'} drawn later"
    color = _rgb(state.scs, state.scolor) if stroked else _rgb(state.ncs, state.ncolor)
    if color is None:
        return None
    background: RGB | None = WHITE
    for paint in device.paints:  # the last one drawn before the glyph, under its centre, wins
        if paint.order < state.order and paint.opaque and paint.contains(cx, cy):
            background = paint.color if paint.polygons else None
    return None if background is None else background_colour_hiding(color, background)


def _rgb(space: PDFColorSpace, color) -> RGB | None:
    """A colour in the device spaces as RGB, None where it cannot be judged (patterns, spot colours)."""
    values = color if isinstance(color, tuple | list) else (color,)
    if not all(isinstance(value, int | float) for value in values):
        return None
    values = tuple(min(max(float(value), 0.0), 1.0) for value in values)
    if space.name not in ("DeviceGray", "CalGray", "DeviceRGB", "CalRGB", "DeviceCMYK", "ICCBased"):
        return None
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) == 3:
        return values  # type: ignore[return-value]
    if len(values) == 4:
        c, m, y, k = values
        return ((1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k))
    return None


def _inside(x: float, y: float, polygon: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting."""
    inside = False
    j = len(polygon) - 1
    for i in range(len(polygon)):
        (xi, yi), (xj, yj) = polygon[i], polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside
