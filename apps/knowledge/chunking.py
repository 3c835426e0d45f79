"""Structure-keeping chunking of an `Extraction`: pieces small enough to embed, each pointing back to its exact
passage (`text[start:end]`), its heading path and its page.

Sections first: a chunk never spans a heading or a page boundary, so its heading path and page are exact (a
section holding nothing but its heading joins the next, so a heading and its subheading's text stay
together). Inside a section, paragraphs (blocks, separated by a blank line) are packed greedily up to the
size limit; a paragraph too long on its own is cut at sentence ends, then between words, then (a single
enormous word) anywhere. Consecutive chunks of one section overlap by up to `overlap` tokens, starting on a
word, so a sentence cut in two is whole in one of them.

Size is counted in characters, as a stand-in for the embedding model's tokens: all-MiniLM-L6-v2 reads at most
256 WordPiece tokens (special tokens included) and ignores the rest. Measured with its tokenizer
(bench/chunk_tokens.py), English prose runs 4-5.5 characters a token, Markdown READMEs with URLs and code
2.4-3.3; `CHARS_PER_TOKEN` = 3 keeps nearly every chunk inside the window without a tokenizer at ingestion.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from apps.knowledge.extraction import Extraction, Heading

CHARS_PER_TOKEN = 3.0
CHUNK_MAX_TOKENS = 250  # of the model's 256, leaving room for [CLS] and [SEP]
CHUNK_OVERLAP_TOKENS = 25

_PARAGRAPH = re.compile(r"\S(?:(?!\n\n).)*", re.DOTALL)  # a blank line separates blocks (extraction.py)
_SENTENCE_END = re.compile(r"(?<=[.!?…。])\s+")


@dataclass(frozen=True)
class Chunk:
    """One piece to embed. `text == extraction.text[start:end]`; `heading_path` runs outermost first;
    `page` is the PDF page (None for formats without pages). `index` counts from 0 in document order."""

    index: int
    text: str
    start: int
    end: int
    heading_path: list[str]
    page: int | None


def text_chunk(
    *, extraction: Extraction, max_tokens: int = CHUNK_MAX_TOKENS, overlap: int = CHUNK_OVERLAP_TOKENS
) -> list[Chunk]:
    """The extraction cut into chunks of at most `max_tokens` (estimated), overlapping by up to `overlap`."""
    if overlap >= max_tokens:
        raise ValueError("overlap must be smaller than max_tokens")
    max_chars = int(max_tokens * CHARS_PER_TOKEN)
    overlap_chars = int(overlap * CHARS_PER_TOKEN)
    text = extraction.text
    chunks: list[Chunk] = []
    for start, end, heading_path in _sections(extraction):
        units = [piece for paragraph in _paragraphs(text, start, end) for piece in _fit(text, paragraph, max_chars)]
        for chunk_start, chunk_end in _pack(text, units, max_chars, overlap_chars):
            chunks.append(
                Chunk(
                    index=len(chunks),
                    text=text[chunk_start:chunk_end],
                    start=chunk_start,
                    end=chunk_end,
                    heading_path=heading_path,
                    page=extraction.page_at(chunk_start),
                )
            )
    return chunks


def _sections(extraction: Extraction) -> list[tuple[int, int, list[str]]]:
    """[start, end) spans cut at every heading and page start, each with the heading path in force. A section
    that holds only its heading joins the next one when that is its subsection on the same page."""
    text = extraction.text
    heading_at = {heading.start: heading for heading in extraction.headings}
    cuts = sorted({0, len(text)} | {page.start for page in extraction.pages} | set(heading_at))
    path: list[Heading] = []
    sections: list[tuple[int, int, list[str]]] = []
    waiting: tuple[int, int, list[str], Heading] | None = None  # a heading-only section
    for start, end in itertools.pairwise(cuts):
        heading = heading_at.get(start)
        if heading is not None:
            path = [outer for outer in path if outer.level < heading.level] + [heading]
        if not text[start:end].strip():
            continue
        titles = [outer.title for outer in path]
        if waiting is not None:
            if (
                heading is not None
                and heading.level > waiting[3].level
                and extraction.page_at(start) == extraction.page_at(waiting[0])
            ):
                start = waiting[0]
            else:
                sections.append(waiting[:3])
            waiting = None
        if heading is not None and not text[heading.end : end].strip():
            waiting = (start, end, titles, heading)
        else:
            sections.append((start, end, titles))
    if waiting is not None:
        sections.append(waiting[:3])
    return sections


def _paragraphs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [
        (start + m.start(), start + m.start() + len(m.group().rstrip())) for m in _PARAGRAPH.finditer(text[start:end])
    ]


def _fit(text: str, span: tuple[int, int], max_chars: int) -> list[tuple[int, int]]:
    """`span` as pieces of at most `max_chars`: whole, else sentences, else words, else hard cuts."""
    start, end = span
    if end - start <= max_chars:
        return [span]
    for separator in (_SENTENCE_END, re.compile(r"\s+")):
        pieces, piece_start = [], start
        for match in separator.finditer(text, start, end):
            pieces.append((piece_start, match.start()))
            piece_start = match.end()
        pieces.append((piece_start, end))
        if len(pieces) > 1:
            return [fitted for piece in pieces for fitted in _fit(text, piece, max_chars)]
    return [(cut, min(cut + max_chars, end)) for cut in range(start, end, max_chars)]


def _pack(text: str, units: list[tuple[int, int]], max_chars: int, overlap_chars: int) -> list[tuple[int, int]]:
    """Greedy packing of consecutive units into chunks of at most `max_chars`, each chunk after the first
    starting up to `overlap_chars` back, on a word start."""
    chunks: list[tuple[int, int]] = []
    index = 0
    start = None
    while index < len(units):
        if start is None:
            start = units[index][0]
        end = units[index][1]
        index += 1
        while index < len(units) and units[index][1] - start <= max_chars:
            end = units[index][1]
            index += 1
        chunks.append((start, end))
        start = None
        if index < len(units) and overlap_chars:
            earliest = max(end - overlap_chars, units[index][1] - max_chars, chunks[-1][0] + 1)
            word = re.compile(r"(?<!\S)\S").search(text, earliest, end)
            start = word.start() if word else None
    return chunks
