"""Hybrid retrieval: the passages an assistant version may read that best answer the conversation.

1. Query. The newest user message, rewritten when it is ambiguous on its own: when it has fewer than
   AMBIGUOUS_MAX_WORDS words, or opens with a word that points back ("it", "that", "what about", "and",
   "the second one"...), the previous user message is put in front of it ("Which kettles do you sell?" +
   "what about the second one?"). One rule, no model call: cheap, predictable, and a follow-up almost
   always names its subject in the turn before.
2. Two rankings, each CANDIDATES deep: the embedding's cosine distance (pgvector, HNSW index) and
   Postgres full text (the generated English tsvector, GIN index), queried with `websearch_to_tsquery` over
   the query's words joined by `or` (a question's words are rarely all in one passage; ts_rank still
   favours passages holding more of them).
3. Reciprocal rank fusion, k = RRF_K: score = sum over rankings of 1 / (k + rank), divided by its maximum
   (2 / (k + 1), first in both) so scores run 0..1 and a version's `knowledge_min_score` reads the same
   whatever k is. The top `knowledge_top_k` at or above the minimum are returned, each with its vector rank,
   text rank (None where it was not in that ranking) and fused score.

Permission is in the SQL of both rankings: only chunks of a document's *current* (ready) version, in the
collections attached to this assistant version, owned by the assistant's owner. Nothing is filtered after
the fact, so another person's passage can never reach a prompt, however well it matches.

The HNSW index and the permission filter: pgvector 0.6 (the embedded server's) filters an index scan's
results after the scan, so when the planner uses the index, a small collection among many other people's
chunks can come back short or empty (the scan's ef_search nearest are mostly not readable). The vector
ranking therefore asks with a wider ef_search (HNSW_EF_SEARCH), and when it still returns fewer rows than
the readable set holds (up to CANDIDATES), asks again with index scans off: an exact scan of the readable
chunks only, which the version and collection filters keep small. Correct first, fast when the index suffices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F, QuerySet
from pgvector.django import CosineDistance

from apps.core.inference_client import inference_embed
from apps.knowledge.models import SEARCH_CONFIG, Chunk, DocumentVersion

RRF_K = 60
CANDIDATES = 20
HNSW_EF_SEARCH = 200
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


def readable_chunks(*, collection_ids: list[int], owner_id: int) -> QuerySet[Chunk]:
    """The chunks an assistant of `owner_id` with these collections may read (the permission filter)."""
    return Chunk.objects.filter(
        version__current_of__collection_id__in=collection_ids,
        version__current_of__collection__owner_id=owner_id,
        version__status=DocumentVersion.Status.READY,
    )


def chunks_search(
    *, collection_ids: list[int], owner_id: int, query: str, top_k: int, min_score: float = 0.0
) -> list[RetrievedChunk]:
    """Hybrid search of the readable chunks for `query` (the module docstring)."""
    if not query.strip() or not collection_ids:
        return []
    readable = readable_chunks(collection_ids=collection_ids, owner_id=owner_id)
    if not readable.exists():
        return []
    by_vector = _vector_ranking(readable, inference_embed(texts=[query])[0])
    by_text: list[int] = []
    words = _WORD.findall(query)
    if words:
        search = SearchQuery(" or ".join(words[:64]), search_type="websearch", config=SEARCH_CONFIG)
        by_text = list(
            readable.filter(search=search)
            .annotate(rank=SearchRank(F("search"), search))
            .order_by("-rank", "pk")
            .values_list("pk", flat=True)[:CANDIDATES]
        )
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


def _vector_ranking(readable: QuerySet[Chunk], embedding: list[float]) -> list[int]:
    """The readable chunks nearest `embedding`, CANDIDATES at most (the module docstring on the index)."""
    nearest = (
        readable.annotate(distance=CosineDistance("embedding", embedding))
        .order_by("distance", "pk")
        .values_list("pk", flat=True)[:CANDIDATES]
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL hnsw.ef_search = {HNSW_EF_SEARCH}")
        ids = list(nearest)
    if len(ids) < CANDIDATES and len(ids) < readable[:CANDIDATES].count():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute("SET LOCAL enable_seqscan = on")
            ids = list(nearest)
    return ids


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
