"""Every bad input is one ExtractionError with its own failure code and a message a person can act on."""

import io
import struct
import zipfile

import pytest
from pypdf import PdfReader, PdfWriter

from apps.knowledge.extraction import (
    ExtractionError,
    ExtractionFailure,
    document_extract,
    document_format_detect,
    upload_max_bytes,
    upload_size_check,
)
from apps.knowledge.readers.docx import DOCX_MAX_MEMBERS, DOCX_MAX_UNCOMPRESSED_BYTES
from tests.knowledge.documents import PNG_1X1, VISIBLE, docx_build, docx_white_run, pdf_build, pdf_page

F = ExtractionFailure


def _refusal(data: bytes, filename: str) -> ExtractionError:
    with pytest.raises(ExtractionError) as raised:
        document_extract(data=data, filename=filename)
    return raised.value


def _docx_rebuilt(replace: dict[str, bytes] | None = None, extra: dict[str, bytes] | None = None) -> bytes:
    """A real Word file with members replaced or added."""
    source = zipfile.ZipFile(io.BytesIO(docx_build(docx_white_run)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            archive.writestr(name, (replace or {}).get(name, source.read(name)))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return out.getvalue()


def _pdf_encrypted(user_password: str, algorithm: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_build([pdf_page()]))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("data", [b"", b"  \n\t\n"], ids=["no-bytes", "whitespace"])
def test_empty_file(data):
    error = _refusal(data, "notes.txt")
    assert (error.failure, str(error)) == (F.EMPTY, "“notes.txt” is empty.")


def test_markup_without_text_is_empty():
    assert _refusal(b"<html><body><div><img src=x.png></div></body></html>", "a.html").failure is F.EMPTY


def test_unsupported_extension():
    error = _refusal(b"a,b\n1,2\n", "table.csv")
    assert error.failure is F.UNSUPPORTED_TYPE and "table.csv" in str(error) and "PDF" in str(error)


@pytest.mark.parametrize(
    ("data", "filename", "content"),
    [
        (pdf_build([pdf_page()]), "report.docx", "a PDF document"),
        (PNG_1X1, "notes.txt", "a PNG image"),
        (bytes(range(256)) * 8, "readme.md", "binary data, not text"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504), "locked.docx", "password-protected Office file"),
        (docx_build(docx_white_run), "report.pdf", "a Word document"),
        (b"# Title\n\nJust Markdown.", "report.pdf", "a text file"),
    ],
    ids=["pdf-as-docx", "png-as-txt", "binary-as-md", "ole2-as-docx", "docx-as-pdf", "text-as-pdf"],
)
def test_content_that_does_not_match_its_name(data, filename, content):
    error = _refusal(data, filename)
    assert error.failure is F.TYPE_MISMATCH
    assert filename in str(error) and content in str(error)


def test_a_zip_that_is_not_a_word_document():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
    error = _refusal(out.getvalue(), "book.docx")
    assert error.failure is F.TYPE_MISMATCH and "ZIP archive that is not a Word document" in str(error)


def test_corrupt_pdf():
    error = _refusal(b"%PDF-1.7\n" + bytes(range(256)) * 4, "broken.pdf")
    assert (error.failure, str(error)) == (F.CORRUPT, "This PDF is damaged and cannot be read.")


def test_truncated_pdf():
    data = pdf_build([pdf_page()])
    assert _refusal(data[: len(data) // 2], "half.pdf").failure is F.CORRUPT


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_password_protected_pdf(algorithm):
    error = _refusal(_pdf_encrypted("secret", algorithm), "locked.pdf")
    assert error.failure is F.ENCRYPTED and "password" in str(error)


def test_pdf_encrypted_only_for_permissions_opens():
    """An empty user password: every viewer opens it without asking, and so do we."""
    extraction = document_extract(data=_pdf_encrypted("", "AES-256"), filename="restricted.pdf")
    assert VISIBLE in extraction.text


def test_image_only_pdf():
    error = _refusal(pdf_build(["q 612 0 0 792 0 0 cm /Im1 Do Q\n"], image=True), "scan.pdf")
    assert error.failure is F.NO_TEXT_LAYER and "OCR" in str(error)


def test_pdf_with_neither_text_nor_images():
    assert _refusal(pdf_build(["0 0 1 rg 10 10 100 100 re f\n"]), "shapes.pdf").failure is F.EMPTY


def test_zip_bomb_by_ratio():
    error = _refusal(_docx_rebuilt(extra={"word/media/filler.bin": bytes(20 * 2**20)}), "bomb.docx")
    assert error.failure is F.ZIP_BOMB and "expands" in str(error)


def test_zip_bomb_by_declared_size_is_refused_before_decompression():
    """The central directory claims more than the limit; the data itself is tiny. Only the declaration can
    have refused it."""
    data = bytearray(_docx_rebuilt(extra={"word/media/big.bin": b"x" * 100}))
    entry = data.rindex(b"word/media/big.bin") - 46  # its central directory header: 46 bytes, then the name
    assert data[entry : entry + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, entry + 24, DOCX_MAX_UNCOMPRESSED_BYTES + 1)  # uncompressed size field
    struct.pack_into("<I", data, entry + 20, DOCX_MAX_UNCOMPRESSED_BYTES)  # compressed size: ratio ~1
    error = _refusal(bytes(data), "bomb.docx")
    assert error.failure is F.ZIP_BOMB and "would unpack to" in str(error)


def test_zip_bomb_by_member_count():
    members = {f"extra/item{index}.xml": b"<a/>" for index in range(DOCX_MAX_MEMBERS)}
    error = _refusal(_docx_rebuilt(extra=members), "many.docx")
    assert error.failure is F.ZIP_BOMB and f"more than the {DOCX_MAX_MEMBERS}" in str(error)


def test_damaged_zip():
    assert _refusal(b"PK\x03\x04" + bytes(300), "broken.docx").failure is F.CORRUPT


def test_malformed_word_xml():
    data = _docx_rebuilt(replace={"word/document.xml": b"<w:document><w:body><w:p>"})
    error = _refusal(data, "broken.docx")
    assert (error.failure, str(error)) == (F.CORRUPT, "This Word document is damaged and cannot be read.")


def test_xml_entity_expansion_is_refused():
    """A billion-laughs document.xml: entities are never resolved, and libxml2 refuses the amplification."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + level)} "{("&" + chr(97 + level) + ";") * 10}">' for level in range(6)
    )
    document = (
        f'<?xml version="1.0"?><!DOCTYPE d [{entities}]><w:document xmlns:w="{w}"><w:body>'
        "<w:p><w:r><w:t>Safe &g;</w:t></w:r></w:p></w:body></w:document>"
    )
    error = _refusal(_docx_rebuilt(replace={"word/document.xml": document.encode()}), "laughs.docx")
    assert error.failure is F.CORRUPT


def test_upload_size_limit(settings):
    settings.KNOWLEDGE_MAX_UPLOAD_MB = 1
    assert upload_max_bytes() == 2**20
    upload_size_check(size=2**20)
    error = _refusal(b"a" * (2**20 + 1), "big.txt")
    assert (error.failure, str(error)) == (F.TOO_LARGE, "The file is 1.0 MB; the limit is 1 MB.")


def test_the_default_upload_limit_is_50_mb():
    assert upload_max_bytes() == 50 * 2**20


def test_extension_case_does_not_matter():
    assert document_format_detect(data=pdf_build([pdf_page()]), filename="SCAN.PDF") == "pdf"


def test_the_error_survives_a_round_trip_through_its_args():
    """Celery rebuilds a task's exception as type(error)(*error.args)."""
    error = _refusal(b"", "notes.txt")
    rebuilt = type(error)(*error.args)
    assert (rebuilt.failure, str(rebuilt)) == (F.EMPTY, "“notes.txt” is empty.")
