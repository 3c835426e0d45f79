"""Knowledge extraction and chunking, measured: python -m bench.extraction (writes bench/extraction_results.md).

1. Chunk fit. `apps/knowledge/chunking.py` estimates tokens (`token_estimate`) rather than loading the
   tokenizer. This cuts real documents (package READMEs as Markdown, licences as text, a generated PDF, and a
   stress text of hashes, numbers, base64 and other scripts) with the defaults and counts each chunk's tokens
   with all-MiniLM-L6-v2's own tokenizer (var/models): how many would overflow the model's 256-token window
   (254 after [CLS] and [SEP]), how much of it a chunk uses, and how far the estimate is from the truth.
2. Cost of looking for hidden text. `document_extract` against the naive extractor of the same library on
   the same bytes, in one run, interleaved: pdfminer's `extract_text` for a PDF, lxml's `text_content` for
   HTML. Medians of `BENCH_REPEATS` (default 5) rounds; read the ratio, not the seconds.
"""

import base64
import hashlib
import importlib.metadata
import io
import os
import statistics
import sys
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
django.setup()

import lxml.html  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402
from pdfminer.high_level import extract_text  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from apps.knowledge.chunking import CHUNK_MAX_TOKENS, text_chunk, token_estimate  # noqa: E402
from apps.knowledge.extraction import document_extract  # noqa: E402
from tests.knowledge.documents import pdf_build, pdf_text  # noqa: E402

README_PACKAGES = ["celery", "pydantic", "httpx", "pgvector", "fastapi", "charset-normalizer", "redis", "openai"]
LICENCE_PACKAGES = ["django", "celery", "lxml", "numpy", "cryptography"]
WINDOW = 254
OUT = Path(__file__).with_name("extraction_results.md")


def _tokenizer() -> Tokenizer:
    models = Path(os.environ.get("ATELIER_MODELS_DIR", "var/models"))
    path = next(models.glob("all-minilm-l6-v2/*/onnx/tokenizer.json"), None)
    if path is None:
        sys.exit(f"no all-minilm-l6-v2 tokenizer under {models}: build the models first (make test or bootstrap)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _pdf(pages: int) -> bytes:
    sentence = "The harbour authority reviews every berth request within two working days, fees apply."
    return pdf_build(["".join(pdf_text(60, 760 - 14 * i, sentence, size=10) for i in range(50))] * pages)


def _documents() -> list[tuple[str, bytes, str]]:
    documents = [
        (f"{p} README", importlib.metadata.metadata(p).get_payload().encode(), "README.md") for p in README_PACKAGES
    ]
    for package in LICENCE_PACKAGES:
        files = [f for f in importlib.metadata.distribution(package).files if "LICENSE" in f.name.upper()]
        documents.append((f"{package} licence", Path(files[0].locate()).read_bytes(), "LICENSE.txt"))
    documents.append(("generated PDF, 10 pages", _pdf(10), "report.pdf"))
    documents.append(("stress: hashes, numbers, base64, scripts", _stress(), "stress.txt"))
    return documents


def _stress() -> bytes:
    random = __import__("random").Random(7)
    lines = []
    for index in range(60):
        digest = hashlib.sha256(str(index).encode()).hexdigest()
        blob = base64.b64encode(random.randbytes(48)).decode()
        number = " ".join(str(random.randint(0, 10**6)) for _ in range(6))
        lines.append(f"Build {index}: sha256 {digest}, payload {blob}, counters {number}.")
        lines.append("Отчёт о работе порта: суда прибыли вовремя. Κάθε πλοίο ελέγχθηκε. 港の報告書です。")
    return "\n\n".join(lines).encode()


def _medians(functions, repeats: int) -> list[float]:
    """Median seconds of each function, their runs interleaved round by round."""
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, times in zip(functions, samples, strict=True):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in samples]


def main() -> None:
    tokenizer = _tokenizer()
    repeats = int(os.environ.get("BENCH_REPEATS", "5"))
    lines = [
        "# Knowledge extraction and chunking",
        "",
        f"- Chunking default: at most {CHUNK_MAX_TOKENS} estimated tokens a chunk; the model's window is {WINDOW} "
        "(all-MiniLM-L6-v2 reads 256 with [CLS] and [SEP])",
        "",
        "## Chunk fit (real tokenizer)",
        "",
        "| Document | Characters | Chunks | Real tokens a chunk, median | max | Over the window "
        "| Real / estimate, median | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    all_counts, all_ratios = [], []
    for name, data, filename in _documents():
        extraction = document_extract(data=data, filename=filename)
        chunks = text_chunk(extraction=extraction)
        counts = [len(tokenizer.encode(chunk.text, add_special_tokens=False).ids) for chunk in chunks]
        ratios = [count / token_estimate(chunk.text) for count, chunk in zip(counts, chunks, strict=True)]
        all_counts += counts
        all_ratios += ratios
        lines.append(
            f"| {name} | {len(extraction.text):,} | {len(chunks)} | {statistics.median(counts):.0f} | {max(counts)} "
            f"| {sum(c > WINDOW for c in counts)} | {statistics.median(ratios):.2f} | {max(ratios):.2f} |"
        )
    lines += [
        f"| **all** | | {len(all_counts)} | {statistics.median(all_counts):.0f} | {max(all_counts)} "
        f"| {sum(c > WINDOW for c in all_counts)} | {statistics.median(all_ratios):.2f} | {max(all_ratios):.2f} |",
        "",
        "## Cost of the hidden-text checks (same bytes, same library's naive extractor)",
        "",
        "| Document | document_extract (s) | naive (s) | ratio |",
        "|---|---:|---:|---:|",
    ]
    pdf = _pdf(10)
    html = (
        MarkdownIt("commonmark", {"html": True}).render(importlib.metadata.metadata("pydantic").get_payload()).encode()
    )
    for name, ours, naive in (
        (
            "PDF, 10 pages x 50 lines vs pdfminer extract_text",
            lambda: document_extract(data=pdf, filename="a.pdf"),
            lambda: extract_text(io.BytesIO(pdf)),
        ),
        (
            f"HTML, pydantic README ({len(html) // 1024} KB) vs lxml text_content",
            lambda: document_extract(data=html, filename="a.html"),
            lambda: lxml.html.document_fromstring(html.decode()).text_content(),
        ),
    ):
        ours_s, naive_s = _medians([ours, naive], repeats)
        lines.append(f"| {name} | {ours_s:.3f} | {naive_s:.3f} | {ours_s / naive_s:.2f}x |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
