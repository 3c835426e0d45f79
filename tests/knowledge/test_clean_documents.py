"""False positives: ordinary documents come through whole, with no hidden findings. Real READMEs and licences
shipped in installed packages, and the look-alikes of hiding that are design (white on dark, text over a
shaded band, base64 that is data)."""

import base64
import hashlib
import importlib.metadata
import io
from pathlib import Path

import docx
import lxml.html
import pytest
from docx.oxml import parse_xml
from docx.shared import RGBColor
from markdown_it import MarkdownIt

from apps.core.unicode import unicode_clean
from apps.knowledge.extraction import DocumentFormat, document_extract
from tests.knowledge.documents import PNG_1X1, VISIBLE, html_page, pdf_build, pdf_page, pdf_text

READMES = ["httpx", "markdown-it-py", "pdfminer.six", "requests", "pillow", "urllib3", "starlette", "pgvector"]


@pytest.mark.parametrize("package", READMES)
def test_real_readme_as_markdown_and_as_html_has_no_findings(package):
    source = importlib.metadata.metadata(package).get_payload()
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(source)
    as_markdown = document_extract(data=source.encode(), filename="README.md")
    as_html = document_extract(data=rendered.encode(), filename="README.html")
    assert as_markdown.hidden == [] and as_html.hidden == []
    assert as_markdown.text == as_html.text
    # Against a naive reading of the same page (every text node, nothing left out), whitespace and table-cell
    # separators aside: not a character lost, none added.
    page = lxml.html.document_fromstring(rendered)
    naive = unicode_clean(page.text_content()).text
    assert "".join(as_markdown.text.replace("|", "").split()) == "".join(naive.replace("|", "").split())
    headings = [" ".join(h.text_content().split()) for h in page.iter("h1", "h2", "h3", "h4", "h5", "h6")]
    assert [heading.title for heading in as_markdown.headings] == [heading for heading in headings if heading]


@pytest.mark.parametrize("package", ["django", "pdfminer.six", "lxml", "celery"])
def test_real_licence_as_text_has_no_findings(package):
    files = [f for f in importlib.metadata.distribution(package).files if "LICENSE" in f.name.upper()]
    licence = Path(files[0].locate()).read_bytes()
    extraction = document_extract(data=licence, filename="LICENSE.txt")
    assert extraction.hidden == []
    assert extraction.text.split() == licence.decode().split()


def test_html_white_on_dark_is_visible():
    head = "<style>body { background: #111; color: #ddd } .invert { color: #fafafa }</style>"
    body = (
        '<p class="invert">Stylesheet white on a dark page.</p>'
        '<div style="background-color: navy"><p style="color: white">Inline white on navy.</p></div>'
        '<table bgcolor="black"><tr><td><font color="white">Legacy white on black.</font></td></tr></table>'
        '<div style="background: url(hero.jpg) center"><p style="color:#fff">White on a photograph.</p></div>'
        '<p style="color:#777">Grey on the dark page.</p>'
    )
    extraction = document_extract(data=html_page(body, head=head), filename="a.html")
    for sentence in (
        "Stylesheet white on a dark page.",
        "Inline white on navy.",
        "Legacy white on black.",
        "White on a photograph.",
        "Grey on the dark page.",
    ):
        assert sentence in extraction.text
    assert [passage.detail for passage in extraction.hidden] == ["<style>"]


def test_html_legacy_page_colours_are_applied():
    page = b'<html><body bgcolor="#000000" text="#ffffff"><p>Old school white on black.</p></body></html>'
    extraction = document_extract(data=page, filename="a.html")
    assert (extraction.text, extraction.hidden) == ("Old school white on black.", [])


def test_html_default_black_text_on_a_near_black_page_is_hidden():
    head = "<style>body { background: #111 }</style>"
    extraction = document_extract(data=html_page("<p>Dark on dark.</p>", head=head), filename="a.html")
    assert "Dark on dark." not in extraction.text
    assert {(p.text, p.detail) for p in extraction.hidden if p.reason == "coloured like its background"} == {
        (
            "Report Quarterly revenue grew in every region. Dark on dark. Margins held steady through the year.",
            "colour #000000 on #111111",
        )
    }


def test_html_small_but_readable_and_screen_positioned_text_is_visible():
    body = (
        '<p style="font-size: 9px">Fine print at nine pixels.</p>'
        '<p style="position: absolute; left: -20px">Slightly outdented.</p>'
        '<p style="opacity: 0.6">Faded but there.</p>'
        '<p><img src="logo.png" alt="Company logo" title="Our logo"></p>'
    )
    extraction = document_extract(data=html_page(body), filename="a.html")
    assert extraction.hidden == []
    for sentence in ("Fine print at nine pixels.", "Slightly outdented.", "Faded but there."):
        assert sentence in extraction.text


def test_pdf_design_that_looks_like_hiding_is_visible():
    page = pdf_page(
        "q 0 0 0 rg 60 640 500 30 re f 1 1 1 rg " + pdf_text(72, 650, "White on a black band.") + " Q\n",
        "q 0.9 0.9 0.9 rg 60 560 500 30 re f Q " + pdf_text(72, 570, "Black on a grey cell.") + "\n",
        pdf_text(72, 520, "Struck through.") + "q 0 0 0 rg 72 523 80 1 re f Q\n",  # a thin line over the text
        "q 250 0 0 100 300 400 cm /Im1 Do Q " + "q 1 1 1 rg " + pdf_text(320, 440, "Caption on a photo.") + " Q\n",
        "/Clear gs /Opaque gs " + pdf_text(72, 470, "Alpha restored.") + "\n",
    )
    extraction = document_extract(data=pdf_build([page], image=True), filename="a.pdf")
    assert extraction.hidden == []
    for sentence in (
        "White on a black band.",
        "Black on a grey cell.",
        "Struck through.",
        "Caption on a photo.",
        "Alpha restored.",
    ):
        assert sentence in extraction.text


def test_pdf_transparency_is_scoped_by_save_and_restore():
    hidden, shown = pdf_text(72, 650, "Hidden inside q."), pdf_text(72, 630, "Shown after Q.")
    page = pdf_page(f"q /Clear gs {hidden} Q {shown}")
    extraction = document_extract(data=pdf_build([page]), filename="a.pdf")
    assert "Shown after Q." in extraction.text
    assert [passage.text for passage in extraction.hidden] == ["Hidden inside q."]


def test_base64_that_is_data_stays():
    data_runs = [
        base64.b64encode(PNG_1X1).decode(),  # an image
        base64.b64encode(hashlib.sha256(b"x").digest()).decode(),  # a digest
        base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("="),  # a token header
        "AbstractSingletonProxyFactoryBeanConfiguration",  # a long identifier
        hashlib.sha256(b"x").hexdigest(),  # hex
    ]
    text = f"{VISIBLE}\n\n" + "\n\n".join(f"Value: {run}" for run in data_runs)
    extraction = document_extract(data=text.encode(), filename="a.txt")
    assert extraction.hidden == []
    assert all(run in extraction.text for run in data_runs)


def test_word_white_on_dark_cell_and_highlight_is_visible():
    document = docx.Document()
    cell = document.add_table(rows=1, cols=1).cell(0, 0)
    cell._tc.get_or_add_tcPr().append(
        parse_xml('<w:shd xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" w:fill="1F1F1F"/>')
    )
    cell.paragraphs[0].add_run("White in a dark cell.").font.color.rgb = RGBColor(0xFF, 0xFF, 0xFF)
    run = document.add_paragraph().add_run("White on black highlight.")
    run.font.color.rgb = RGBColor(0xFF, 0xFF, 0xFF)
    run.font.highlight_color = docx.enum.text.WD_COLOR_INDEX.BLACK
    out = io.BytesIO()
    document.save(out)
    extraction = document_extract(data=out.getvalue(), filename="a.docx")
    assert extraction.hidden == []
    assert extraction.text == "White in a dark cell.\n\nWhite on black highlight."


def test_word_headings_come_from_heading_styles():
    document = docx.Document()
    document.add_heading("Annual report", level=0)
    document.add_heading("Revenue", level=1)
    document.add_paragraph(VISIBLE)
    document.add_heading("By region", level=2)
    document.add_paragraph("North grew most.")
    out = io.BytesIO()
    document.save(out)
    extraction = document_extract(data=out.getvalue(), filename="a.docx")
    assert extraction.format is DocumentFormat.DOCX
    assert [(h.level, h.title, extraction.text[h.start : h.end]) for h in extraction.headings] == [
        (1, "Annual report", "Annual report"),
        (1, "Revenue", "Revenue"),
        (2, "By region", "By region"),
    ]


def test_emoji_and_scripts_are_not_findings():
    text = "Careful ⚠️, the team 👩‍💻 ships. Émoji, 漢字, עברית and العربية stay."
    extraction = document_extract(data=text.encode(), filename="a.txt")
    assert extraction.hidden == []
    assert "漢字, עברית and العربية stay." in extraction.text


def test_legacy_encoded_text_is_read():
    text = (
        "Le café est fermé le lundi. Nous préférons les crèmes brûlées et les gâteaux à la française, naïvement "
        "préparés par notre équipe. Ça coûte très cher, mais c'est délicieux."
    )
    extraction = document_extract(data=text.encode("cp1252"), filename="menu.txt")
    assert extraction.text == text.strip()
