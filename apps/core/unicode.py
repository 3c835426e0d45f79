"""Invisible Unicode: the one normalizer for every piece of untrusted text (rendering, ingestion, scans).

Text a person cannot see can still steer a model or hide a payload from a reviewer:
- Unicode tag characters (U+E0000–U+E007F) spell ASCII invisibly ("ASCII smuggling"); they are decoded
  so the hidden message can be logged and audited;
- bidi overrides and isolates (U+202A–U+202E, U+2066–U+2069) reorder what is shown ("Trojan Source");
- zero-width characters split or join words without a trace;
- variation selectors (U+FE00–U+FE0F, U+E0100–U+E01EF) can carry bytes, one per character;
- soft hyphens break words for a filter but not for a reader.

`unicode_clean` removes them all, reports each kind once with its count, then applies NFC so that one
visible string has one encoding. An emoji sequence that relied on a zero-width joiner or a variation
selector falls apart into its components: a small price for text that says only what it shows.
"""

import logging
import re
import unicodedata
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TAGS = "\U000e0000-\U000e007f"
BIDI = "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e"
VARIATION_SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
SOFT_HYPHEN = "\u00ad"

KINDS = {  # kind: the characters, as a regex class body
    "tag characters": TAGS,
    "bidi controls": BIDI,
    "zero-width characters": ZERO_WIDTH,
    "variation selectors": VARIATION_SELECTORS,
    "soft hyphens": SOFT_HYPHEN,
}
_ANY = re.compile(f"[{''.join(KINDS.values())}]")
_KIND_OF = {kind: re.compile(f"[{chars}]") for kind, chars in KINDS.items()}
_TAG_RUN = re.compile(f"[{TAGS}]+")


@dataclass(frozen=True)
class UnicodeFinding:
    """One kind of invisible character found in a text: how many, and for tag characters the message
    they spell."""

    kind: str
    count: int
    decoded: str = ""


@dataclass(frozen=True)
class CleanText:
    text: str
    findings: list[UnicodeFinding] = field(default_factory=list)

    @property
    def removed(self) -> int:
        return sum(f.count for f in self.findings)


def tag_characters_decode(text: str) -> str:
    """The ASCII that a text's tag characters spell (U+E0020–U+E007E map to ' '–'~'); runs are joined by
    a space."""
    runs = (
        "".join(chr(ord(c) - 0xE0000) for c in run if 0xE0020 <= ord(c) <= 0xE007E) for run in _TAG_RUN.findall(text)
    )
    return " ".join(r for r in runs if r)


def unicode_clean(text: str, *, source: str = "") -> CleanText:
    """`text` without invisible characters, in NFC, with what was removed. A decoded tag-character message
    is logged (with `source`, say a document id), since it is an attack rather than an accident."""
    if not _ANY.search(text):
        return CleanText(unicodedata.normalize("NFC", text))
    findings = []
    for kind, pattern in _KIND_OF.items():
        count = len(pattern.findall(text))
        if count:
            decoded = tag_characters_decode(text) if kind == "tag characters" else ""
            findings.append(UnicodeFinding(kind=kind, count=count, decoded=decoded))
            if decoded:
                log.warning("hidden tag-character message removed%s: %r", f" from {source}" if source else "", decoded)
    return CleanText(unicodedata.normalize("NFC", _ANY.sub("", text)), findings)
