"""Chunks point back to their exact passage, and carry their heading path and page."""

import importlib.metadata
import itertools
import re

import pytest

from apps.knowledge.chunking import CHUNK_MAX_TOKENS, text_chunk, token_estimate
from apps.knowledge.extraction import document_extract
from tests.knowledge.documents import pdf_build, pdf_text

SENTENCE = "The harbour authority reviews every berth request within two working days. "


def _markdown(text: str):
    return document_extract(data=text.encode(), filename="guide.md")


def _assert_exact_and_complete(extraction, chunks, max_tokens):
    """Offsets map back exactly, every chunk fits, and together they cover every visible character."""
    covered = set()
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert extraction.text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip() and chunk.text
        assert token_estimate(chunk.text) <= max_tokens
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, char in enumerate(extraction.text) if not char.isspace())


def test_sections_follow_headings_with_their_path():
    extraction = _markdown(
        "# Port guide\n\nWelcome aboard.\n\n## Berths\n\nBook early.\n\n### Fees\n\nPay on arrival.\n\n"
        "## Customs\n\nDeclare goods.\n"
    )
    chunks = text_chunk(extraction=extraction)
    _assert_exact_and_complete(extraction, chunks, CHUNK_MAX_TOKENS)
    assert [(chunk.text, chunk.heading_path, chunk.page) for chunk in chunks] == [
        ("Port guide\n\nWelcome aboard.", ["Port guide"], None),
        ("Berths\n\nBook early.", ["Port guide", "Berths"], None),
        ("Fees\n\nPay on arrival.", ["Port guide", "Berths", "Fees"], None),
        ("Customs\n\nDeclare goods.", ["Port guide", "Customs"], None),
    ]


def test_a_heading_alone_joins_its_first_subsection():
    extraction = _markdown("# Guide\n\n## Berths\n\nBook early.\n\n# Annex\n\n# Index\n\nSee above.\n")
    chunks = text_chunk(extraction=extraction)
    assert [(chunk.text, chunk.heading_path) for chunk in chunks] == [
        ("Guide\n\nBerths\n\nBook early.", ["Guide", "Berths"]),
        ("Annex", ["Annex"]),  # its next heading is no subsection: it stays on its own
        ("Index\n\nSee above.", ["Index"]),
    ]


def test_long_sections_split_at_paragraphs_then_sentences_with_overlap():
    paragraphs = [SENTENCE * 3, SENTENCE * 12, SENTENCE * 2]  # the middle one alone exceeds the limit
    extraction = _markdown("# Berths\n\n" + "\n\n".join(p.strip() for p in paragraphs) + "\n")
    max_tokens, overlap = 100, 10
    chunks = text_chunk(extraction=extraction, max_tokens=max_tokens, overlap=overlap)
    _assert_exact_and_complete(extraction, chunks, max_tokens)
    assert len(chunks) > 3 and all(chunk.heading_path == ["Berths"] for chunk in chunks)
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.start < previous.end  # they overlap...
        assert token_estimate(extraction.text[chunk.start : previous.end]) <= overlap  # ...by no more than asked
        assert extraction.text[chunk.start - 1].isspace()  # and the next one starts on a word
    assert all(chunk.text.endswith(".") for chunk in chunks)  # sentences are never cut where a sentence end fits


def test_no_overlap_when_asked():
    extraction = _markdown("\n\n".join([SENTENCE.strip()] * 20))
    chunks = text_chunk(extraction=extraction, max_tokens=60, overlap=0)
    _assert_exact_and_complete(extraction, chunks, 60)
    assert all(previous.end < chunk.start for previous, chunk in itertools.pairwise(chunks))


def test_an_enormous_word_is_cut_hard():
    extraction = document_extract(data=("x" * 2000).encode(), filename="a.txt")
    chunks = text_chunk(extraction=extraction, max_tokens=100, overlap=0)
    _assert_exact_and_complete(extraction, chunks, 100)
    assert [len(chunk.text) for chunk in chunks] == [400] * 5  # cut by characters, packed back to 100 tokens


def test_pdf_chunks_record_their_page_and_never_span_two():
    lines = [f"Line {n} of the page says something about berths." for n in range(12)]
    pages = [
        "".join(pdf_text(72, 700 - 20 * i, f"Page {label}. {line}") for i, line in enumerate(lines))
        for label in (1, 2, 3)
    ]
    pages.insert(2, "")  # an empty page 3: page 4 holds the third text
    extraction = document_extract(data=pdf_build(pages), filename="a.pdf")
    chunks = text_chunk(extraction=extraction, max_tokens=60, overlap=10)
    _assert_exact_and_complete(extraction, chunks, 60)
    assert {chunk.page for chunk in chunks} == {1, 2, 4}
    for chunk in chunks:
        page = extraction.pages[chunk.page - 1]
        assert page.start <= chunk.start and chunk.end <= page.end
        assert set(re.findall(r"Page (\d)\.", chunk.text)) == {str({1: 1, 2: 2, 4: 3}[chunk.page])}


def test_real_readme_chunks_map_back_and_fit():
    extraction = _markdown(importlib.metadata.metadata("celery").get_payload())
    chunks = text_chunk(extraction=extraction)
    _assert_exact_and_complete(extraction, chunks, CHUNK_MAX_TOKENS)
    headings = {heading.title for heading in extraction.headings}
    assert all(set(chunk.heading_path) <= headings for chunk in chunks)
    assert sum(1 for chunk in chunks if chunk.heading_path) > len(chunks) / 2


def test_overlap_must_be_smaller_than_the_chunk():
    with pytest.raises(ValueError, match="overlap"):
        text_chunk(extraction=_markdown("text"), max_tokens=10, overlap=10)
