"""Hybrid retrieval: the passages an assistant version may read that best answer the conversation.

1. Query. The newest user message, rewritten when it is ambiguous on its own: when it has fewer than
   AMBIGUOUS_MAX_WORDS words, or opens with a word that points back ("it", "that", "what about", "and",
   "the second one"...), the previous user message is put in front of it ("Which kettles do you sell?" +
   "what about the second one?"). One rule, no model call: cheap, predictable, and a follow-up almost
   always names its subject in the turn before.
2. Two rankings, each CANDIDATES deep: the embedding's cosine distance (pgvector, HNSW index) and
   Postgres full text (the generated English tsvector, GIN index), queried with `websearch_to_tsquery` over
   the query's words joined by `or` (a question's words are rarely all in one passage; ts_rank still
   favours passages holding more of them). On a large table only the query's rarer words are searched:
   ts_rank must score every passage that matches, so one common word ("file", "value", "return") made it
   rank most of the table: 380-530 ms at 100,000 chunks (bench/knowledge.py). Each word's share of chunks
   comes from Postgres's own statistics of the tsvector column (ANALYZE's most common lexemes; an untracked
   word counts as the rarest tracked one), times the table's row estimate: words are taken rarest first
   while the rows they match add up to at most TEXT_MATCH_ROWS. On a small table that is every word; a
   first cut by share alone (no word in over 10% of chunks, 3% in all) also dropped them there and cost
   full text 0.10 of recall@5 (0.695 to 0.595) on the quality evaluation, for no speed. Before the first ANALYZE
   there are no statistics and every word is searched, which is fine on a small table.
3. Reciprocal rank fusion, k = RRF_K: score = sum over rankings of 1 / (k + rank), divided by its maximum
   (2 / (k + 1), first in both) so scores run 0..1 and a version's `knowledge_min_score` reads the same
   whatever k is. The top `knowledge_top_k` at or above the minimum are returned, each with its vector rank,
   text rank (None where it was not in that ranking) and fused score.

Permission is in the SQL of both rankings: only chunks of a document's *current* (ready) version, in the
collections attached to this assistant version, owned by the assistant's owner. Nothing is filtered after
the fact, so another person's passage can never reach a prompt, however well it matches.

The HNSW index and the permission filter: pgvector 0.6 (the embedded server's) filters an index scan's
results after the scan, so a scan that finds the ef_search nearest chunks of the whole table keeps only the
readable ones among them: a small collection among many other people's chunks can come back short or empty.
So ef_search follows the readable share of the table (`hnsw_ef_search`): about CANDIDATES × EF_HEADROOM
nearest chunks are expected to be readable, never fewer than HNSW_EF_SEARCH_MIN (recall) nor more than
pgvector's limit, HNSW_EF_SEARCH_MAX. The readable rows are counted from the versions (their `chunks_total`,
a hundred rows, not the chunks) and the table's from Postgres's statistics. A share too small for any
ef_search goes straight to an exact scan of the readable chunks, which the version and collection filters
keep small; and a scan that still returns fewer rows than the readable set holds (up to CANDIDATES) asks
again exactly. Correct first, fast when the index suffices. At 100,000 chunks (bench/knowledge.py, quiet
machine) a fixed ef_search of 200 fell back to the exact scan for a tenth of the table often enough to make
its p95 42 ms against 17 ms with every collection readable.

And the planner must be made to use the index at all. The permission joins (chunk -> current version ->
document -> collection) make it misjudge the readable set by about 100x (434 rows estimated for 100,000 in
bench/knowledge.py), so it preferred to compute every readable chunk's distance and sort them: 1.0-1.3 s at
100,000 chunks instead of ~25 ms. The index attempt runs with `enable_sort` off and orders by distance alone
(ties are broken by id afterwards, in Python), which leaves the HNSW scan as the only plan without a sort.
The same misjudgement made the full-text ranking repeat its GIN scan once per readable document (1,000 times:
290-380 ms for a word in 1% of the chunks); with nested loops off it scans the index once and hash-joins the
matches to the readable versions (12 ms).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet, Sum
from pgvector.django import CosineDistance

from apps.core.inference_client import inference_embed
from apps.knowledge.models import SEARCH_CONFIG, Chunk, DocumentVersion

RRF_K = 60
CANDIDATES = 20
HNSW_EF_SEARCH_MIN, HNSW_EF_SEARCH_MAX = 100, 1000  # 100: recall@10 1.000 at 100,000 chunks; 1000: pgvector's limit
EF_HEADROOM = 2  # expect twice CANDIDATES readable rows among the scan's nearest
TEXT_MATCH_ROWS = 2000  # the most rows the full-text words may match (ts_rank of each costs ~5 µs)
AMBIGUOUS_MAX_WORDS = 4
QUERY_MAX_CHARS = 2000
_POINTING_BACK = re.compile(
    r"^\s*(it|its|it's|that|this|these|those|they|them|their|he|she|his|her|and|also|so|then|what about|how about"
    r"|which one|the (first|second|third|last|other|same|former|latter))\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class RetrievedChunk:
    chunk_id: int
    text: str
    document: str
    document_id: int
    version_id: int
    page: int | None
    start: int
    end: int
    heading_path: list[str]
    vector_rank: int | None
    text_rank: int | None
    score: float


def retrieval_query(*, messages: list[dict]) -> str:
    """The text to search for, from the conversation (oldest first); the rewriting rule is the module's."""
    users = [m["content"] for m in messages if m["role"] == "user" and m["content"].strip()]
    if not users:
        return ""
    last = users[-1].strip()
    ambiguous = len(_WORD.findall(last)) < AMBIGUOUS_MAX_WORDS or _POINTING_BACK.match(last)
    if ambiguous and len(users) > 1:
        last = f"{users[-2].strip()}\n{last}"
    return last[-QUERY_MAX_CHARS:]


def _readable(prefix: str, *, collection_ids: list[int], owner_id: int) -> Q:
    """The permission filter on document versions, from a model `prefix` away: the current, ready versions of
    the documents in these collections of `owner_id`. The one statement of it, for chunks and their count."""
    return Q(
        **{
            f"{prefix}current_of__collection_id__in": collection_ids,
            f"{prefix}current_of__collection__owner_id": owner_id,
            f"{prefix}status": DocumentVersion.Status.READY,
        }
    )


def readable_chunks(*, collection_ids: list[int], owner_id: int) -> QuerySet[Chunk]:
    """The chunks an assistant of `owner_id` with these collections may read (the permission filter)."""
    return Chunk.objects.filter(_readable("version__", collection_ids=collection_ids, owner_id=owner_id))


def readable_rows(*, collection_ids: list[int], owner_id: int) -> int:
    """How many chunks `readable_chunks` holds, counted from their versions (no chunk is read)."""
    versions = DocumentVersion.objects.filter(_readable("", collection_ids=collection_ids, owner_id=owner_id))
    return versions.aggregate(rows=Sum("chunks_total"))["rows"] or 0


def chunks_search(
    *, collection_ids: list[int], owner_id: int, query: str, top_k: int, min_score: float = 0.0
) -> list[RetrievedChunk]:
    """Hybrid search of the readable chunks for `query` (the module docstring)."""
    if not query.strip() or not collection_ids:
        return []
    rows = readable_rows(collection_ids=collection_ids, owner_id=owner_id)
    if not rows:
        return []
    return chunks_rank(
        readable=readable_chunks(collection_ids=collection_ids, owner_id=owner_id),
        readable_rows=rows,
        query=query,
        embedding=inference_embed(texts=[query])[0],
        top_k=top_k,
        min_score=min_score,
    )


def chunks_rank(
    *,
    readable: QuerySet[Chunk],
    readable_rows: int,
    query: str,
    embedding: list[float],
    top_k: int,
    min_score: float = 0.0,
) -> list[RetrievedChunk]:
    """The hybrid ranking of `readable` (`readable_rows` chunks) for `query` and its embedding: the SQL every
    search runs once the query is embedded (bench/knowledge.py times it alone)."""
    by_vector = vector_ranking(readable, embedding, ef_search=hnsw_ef_search(readable_rows=readable_rows))
    by_text = text_ranking(readable, query)
    vector_ranks = {pk: rank for rank, pk in enumerate(by_vector, 1)}
    text_ranks = {pk: rank for rank, pk in enumerate(by_text, 1)}
    best = 2 / (RRF_K + 1)
    scores = {
        pk: sum(1 / (RRF_K + ranks[pk]) for ranks in (vector_ranks, text_ranks) if pk in ranks) / best
        for pk in {*vector_ranks, *text_ranks}
    }
    chosen = sorted((pk for pk in scores if scores[pk] >= min_score), key=lambda pk: (-scores[pk], pk))[:top_k]
    rows = Chunk.objects.select_related("version__document").in_bulk(chosen)
    return [
        RetrievedChunk(
            chunk_id=pk,
            text=rows[pk].text,
            document=rows[pk].version.document.filename,
            document_id=rows[pk].version.document_id,
            version_id=rows[pk].version_id,
            page=rows[pk].page,
            start=rows[pk].start,
            end=rows[pk].end,
            heading_path=rows[pk].heading_path,
            vector_rank=vector_ranks.get(pk),
            text_rank=text_ranks.get(pk),
            score=round(scores[pk], 4),
        )
        for pk in chosen
    ]


def text_ranking(readable: QuerySet[Chunk], query: str) -> list[int]:
    """The readable chunks best matching the query's informative words in full text, CANDIDATES at most."""
    words = informative_words(_WORD.findall(query)[:64])
    if not words:
        return []
    search = SearchQuery(" or ".join(words), search_type="websearch", config=SEARCH_CONFIG)
    best = (
        readable.filter(search=search)
        .annotate(rank=SearchRank(F("search"), search))
        .order_by("-rank", "pk")
        .values_list("pk", flat=True)[:CANDIDATES]
    )
    with _planner(enable_nestloop="off"):  # one GIN scan, joined to the readable versions
        return list(best)


_WORD_ROWS = """
WITH stats AS (
    SELECT m.lexeme, m.share
    FROM pg_stats s, unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS m(lexeme, share)
    WHERE s.schemaname = current_schema() AND s.tablename = %(table)s AND s.attname = 'search'
        AND m.lexeme IS NOT NULL
)
SELECT w.word, COALESCE(MAX(stats.share), (SELECT MIN(share) FROM stats), 0)
    * (SELECT GREATEST(reltuples, 0) FROM pg_class WHERE oid = %(table)s::regclass) AS matched
FROM unnest(%(words)s::text[]) WITH ORDINALITY AS w(word, position)
CROSS JOIN LATERAL unnest(tsvector_to_array(to_tsvector(%(config)s::regconfig, w.word))) AS l(lexeme)
LEFT JOIN stats ON stats.lexeme = l.lexeme
GROUP BY w.word, w.position
ORDER BY matched, w.position
"""


def informative_words(words: list[str]) -> list[str]:
    """The words worth a full-text search, rarest first (the module docstring, step 2). Stop words, which
    have no lexeme, are dropped here as the search would drop them."""
    with connection.cursor() as cursor:
        cursor.execute(_WORD_ROWS, {"table": Chunk._meta.db_table, "words": words, "config": SEARCH_CONFIG})
        estimates = cursor.fetchall()
    chosen, total = [], 0.0
    for word, matched in estimates:
        if total + matched > TEXT_MATCH_ROWS:
            break
        chosen.append(word)
        total += matched
    return chosen


def hnsw_ef_search(*, readable_rows: int) -> int | None:
    """The ef_search for a search of `readable_rows` chunks in the chunk table as it is now (`ef_search_for`)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [Chunk._meta.db_table])
        table_rows = cursor.fetchone()[0]  # -1 before the first ANALYZE: the share then counts as whole
    return ef_search_for(readable_rows=readable_rows, table_rows=table_rows)


def ef_search_for(*, readable_rows: int, table_rows: float) -> int | None:
    """The ef_search that should leave CANDIDATES × EF_HEADROOM readable rows after the permission filter, or
    None when even pgvector's largest would not (an exact scan then; the module docstring on the index)."""
    share = readable_rows / max(table_rows, readable_rows, 1)
    ef_search = max(HNSW_EF_SEARCH_MIN, math.ceil(CANDIDATES * EF_HEADROOM / max(share, 1e-9)))
    return ef_search if ef_search <= HNSW_EF_SEARCH_MAX else None


def vector_ranking(readable: QuerySet[Chunk], embedding: list[float], *, ef_search: int | None) -> list[int]:
    """The readable chunks nearest `embedding`, CANDIDATES at most: through the HNSW index with `ef_search`,
    or exactly when it is None (the module docstring on the index)."""
    nearest = (
        readable.annotate(distance=CosineDistance("embedding", embedding))
        .order_by("distance")  # the index's own order: a second sort key would make Postgres sort every row
        .values_list("pk", "distance")[:CANDIDATES]
    )
    rows = []
    if ef_search is not None:
        with _planner(**{"hnsw.ef_search": str(ef_search), "enable_sort": "off"}):  # the index scan
            rows = list(nearest)
    if ef_search is None or (len(rows) < CANDIDATES and len(rows) < readable[:CANDIDATES].count()):
        with _planner(enable_indexscan="off", enable_seqscan="on", enable_sort="on"):  # an exact scan
            rows = list(nearest.all())  # a fresh query: `nearest` keeps the rows it already returned
    return [pk for pk, _ in sorted(rows, key=lambda row: (row[1], row[0]))]


@contextmanager
def _planner(**values: str) -> Iterator[None]:
    """The queries inside, which only read, run with these settings (SET LOCAL) in a transaction of their
    own that is always rolled back: inside a caller's transaction that is a savepoint, and rolling it back
    (unlike releasing it) undoes SET LOCAL, so the settings never reach the caller's other queries."""
    with transaction.atomic(), connection.cursor() as cursor:
        calls = ", ".join(["set_config(%s, %s, true)"] * len(values))
        cursor.execute(f"SELECT {calls}", [part for setting in values.items() for part in setting])
        yield
        transaction.set_rollback(True)


def knowledge_retrieve(*, version, messages: list[dict]) -> list[RetrievedChunk]:
    """What `version` retrieves for the conversation; [] without collections. `version` is a saved
    AssistantVersion (read as its assistant's owner), or the builder's unsaved AssistantConfig, whose
    collections the builder's form already limited to the editor's own (read as their owner: the one owner
    of them all, or nothing)."""
    if getattr(version, "pk", None) is not None:
        collection_ids = list(version.knowledge_collections.values_list("pk", flat=True))
        owner_ids = {version.assistant.owner_id}
    else:
        collection_ids = [collection.pk for collection in version.knowledge_collections]
        owner_ids = {collection.owner_id for collection in version.knowledge_collections}
    if not collection_ids or len(owner_ids) != 1:
        return []
    return chunks_search(
        collection_ids=collection_ids,
        owner_id=owner_ids.pop(),
        query=retrieval_query(messages=messages),
        top_k=version.knowledge_top_k,
        min_score=version.knowledge_min_score,
    )
