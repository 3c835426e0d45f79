"""Structure-keeping chunking of an `Extraction`: pieces small enough to embed, each pointing back to its exact
passage (`text[start:end]`), its heading path and its page.

Sections first: a chunk never spans a heading or a page boundary, so its heading path and page are exact (a
section holding nothing but its heading joins the next, so a heading and its subheading's text stay
together). Inside a section, paragraphs (blocks, separated by a blank line) are packed greedily up to the
size limit; a paragraph too long on its own is cut at sentence ends, then between words, then (a single
enormous word) anywhere. Consecutive chunks of one section overlap by up to `overlap` tokens, starting on a
word, so a sentence cut in two is whole in one of them.

Size is counted in estimated tokens of the embedding model, all-MiniLM-L6-v2, which reads at most 256
WordPiece tokens ([CLS] and [SEP] included) and ignores the rest. `token_estimate` follows its pre-tokenizer
without loading it: each punctuation mark and each CJK character is a token; a Latin word (accents folded,
as the uncased model does) one per 4 characters, one per 1.5 if it holds digits (numbers, hashes, base64);
a word in another script one per letter. Measured against the real tokenizer (bench/extraction.py, 857 chunks
of READMEs, licences, a PDF and a stress text of hashes, numbers, base64, Cyrillic, Greek and Japanese): the
real count is 0.80x the estimate at the median and 1.12x at worst (characters / 3, tried first, was 2x at
worst), so 220 estimated tokens stay inside the 254 the model reads. The known blind spot: long random letter
strings without digits, up to 2.5x more tokens than estimated.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass

from apps.knowledge.extraction import Extraction, Heading

CHUNK_MAX_TOKENS = 220  # estimated; measured real counts run at most 1.12x the estimate: under 254
CHUNK_OVERLAP_TOKENS = 20

_PARAGRAPH = re.compile(r"\S(?:(?!\n\n).)*", re.DOTALL)  # a blank line separates blocks (extraction.py)
_SENTENCE_END = re.compile(r"(?<=[.!?…。])\s+")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_PIECE = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+|[^\\w\\s]")
_WORD = re.compile(r"\S+")


def token_estimate(text: str) -> int:
    """Estimated all-MiniLM-L6-v2 WordPiece tokens in `text`, special tokens excluded (module docstring)."""
    tokens = 0
    for match in _PIECE.finditer(text):
        piece = match.group()
        if len(piece) == 1:
            tokens += 1
            continue
        folded = "".join(char for char in unicodedata.normalize("NFKD", piece) if not unicodedata.combining(char))
        if not folded.isascii():
            tokens += len(piece)  # the vocabulary has few pieces of other scripts: about one per letter
        elif any(char.isdigit() for char in piece):
            tokens += math.ceil(len(piece) / 1.5)  # numbers, hashes, base64: short pieces
        else:
            tokens += math.ceil(len(piece) / 4)
    return tokens


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
    text = extraction.text
    chunks: list[Chunk] = []
    for start, end, heading_path in _sections(extraction):
        units = [piece for paragraph in _paragraphs(text, start, end) for piece in _fit(text, paragraph, max_tokens)]
        for chunk_start, chunk_end in _pack(text, units, max_tokens, overlap):
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


def _fit(text: str, span: tuple[int, int], max_tokens: int) -> list[tuple[int, int, int]]:
    """`span` as (start, end, tokens) pieces of at most `max_tokens`: whole, else sentences, else words, else
    (one enormous word) cuts of `max_tokens` characters, since no character is more than one token."""
    start, end = span
    tokens = token_estimate(text[start:end])
    if tokens <= max_tokens:
        return [(start, end, tokens)]
    for separator in (_SENTENCE_END, re.compile(r"\s+")):
        pieces, piece_start = [], start
        for match in separator.finditer(text, start, end):
            pieces.append((piece_start, match.start()))
            piece_start = match.end()
        pieces.append((piece_start, end))
        if len(pieces) > 1:
            return [fitted for piece in pieces for fitted in _fit(text, piece, max_tokens)]
    cuts = range(start, end, max_tokens)
    return [(cut, min(cut + max_tokens, end), token_estimate(text[cut : cut + max_tokens])) for cut in cuts]


def _pack(text: str, units: list[tuple[int, int, int]], max_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Consecutive units packed greedily into chunks of at most `max_tokens`; each chunk after the first starts
    with up to `overlap` tokens of whole words from the end of the one before."""
    chunks: list[tuple[int, int]] = []
    index = 0
    while index < len(units):
        start, used = units[index][0], 0
        if chunks and overlap:
            start, used = _overlap(text, chunks[-1], min(overlap, max_tokens - units[index][2]), default=start)
        end = units[index][1]
        used += units[index][2]
        index += 1
        while index < len(units) and used + units[index][2] <= max_tokens:
            end = units[index][1]
            used += units[index][2]
            index += 1
        chunks.append((start, end))
    return chunks


def _overlap(text: str, previous: tuple[int, int], budget: int, *, default: int) -> tuple[int, int]:
    """Where the next chunk starts when it repeats the last words of `previous` (at most `budget` tokens, and
    never all of it), and how many tokens that repeats. `default` when not even one word fits."""
    start, used = default, 0
    words = list(_WORD.finditer(text, *previous))
    for word in reversed(words[1:]):
        tokens = token_estimate(word.group())
        if used + tokens > budget:
            break
        start, used = word.start(), used + tokens
    return start, used
