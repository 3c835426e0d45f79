"""Uploads, ingestion and its controls against the real database and the real embedding model."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.knowledge import ingestion
from apps.knowledge.ingestion import document_ingest, versions_fail_stale
from apps.knowledge.models import Chunk, Document, DocumentVersion
from apps.knowledge.retrieval import chunks_search
from apps.knowledge.services import (
    KnowledgeError,
    document_cancel,
    document_delete,
    document_reingest,
    document_retry,
    document_upload,
)
from tests.factories import make_user
from tests.knowledge.documents import pdf_build, pdf_text
from tests.knowledge.factories import ingested, make_collection
from tests.knowledge.test_refusals import _docx_rebuilt, _pdf_encrypted

pytestmark = pytest.mark.django_db
Status = DocumentVersion.Status
KETTLE = (
    "# Kettle manual\n\nThe kettle boils one litre of water in three minutes.\n\nDescale it monthly with citric acid."
)
LAMP = "# Lamp manual\n\nThe reading lamp has three brightness levels.\n\nIts bulb lasts ten thousand hours."


def _search(collection, query: str, top_k: int = 4):
    return chunks_search(collection_ids=[collection.pk], owner_id=collection.owner_id, query=query, top_k=top_k)


def test_a_document_is_extracted_chunked_embedded_and_retrieved(inference_server):
    collection = make_collection(make_user("ada"))
    kettle = ingested(collection, "kettle.md", KETTLE)
    ingested(collection, "lamp.md", LAMP)
    assert (kettle.status, kettle.error) == (Status.READY, "")
    assert kettle.chunks_total == kettle.chunks_embedded == kettle.chunks.count() > 0
    assert kettle.document.current_version_id == kettle.pk and kettle.text.startswith("Kettle manual")
    for chunk in kettle.chunks.all():
        assert kettle.text[chunk.start : chunk.end] == chunk.text and len(chunk.embedding) == 384

    results = _search(collection, "How long does the kettle take to boil water?")
    assert results[0].document == "kettle.md" and "three minutes" in results[0].text
    assert results[0].vector_rank == 1 and results[0].text_rank == 1 and results[0].score == 1.0
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_each_unreadable_file_fails_alone_with_its_reason(inference_server):
    collection = make_collection(make_user("ada"))
    good = ingested(collection, "kettle.md", KETTLE)
    bad = {
        "broken.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 4,
        "locked.pdf": _pdf_encrypted("secret", "AES-256"),
        "blank.html": b"<html><body><p> </p></body></html>",
    }
    failures = {name: ingested(collection, name, data) for name, data in bad.items()}
    assert {name: v.failure for name, v in failures.items()} == {
        "broken.pdf": "corrupt",
        "locked.pdf": "encrypted",
        "blank.html": "empty",
    }
    for version in failures.values():
        assert version.status == Status.FAILED and version.error and not version.chunks.exists()
        assert version.document.current_version_id is None and version.retryable
    good.refresh_from_db()
    assert good.status == Status.READY and good.chunks.count() == good.chunks_total
    assert {r.document for r in _search(collection, "kettle boil citric acid")} == {"kettle.md"}


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("photo.md", b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG"),
        ("empty.txt", b"", "empty"),
        ("program.exe", b"MZ\x90\x00", "not a file type"),
        ("bomb.docx", _docx_rebuilt(extra={"word/media/filler.bin": bytes(20 * 2**20)}), "zip bomb"),
    ],
    ids=["wrong-type", "empty", "unsupported", "zip-bomb"],
)
def test_refused_uploads_change_nothing(filename, data, message):
    collection = make_collection(make_user("ada"))
    with pytest.raises(KnowledgeError, match=message):
        document_upload(collection=collection, filename=filename, data=data)
    assert not Document.objects.exists() and not DocumentVersion.objects.exists()


def test_an_upload_over_the_limit_is_refused(settings):
    settings.KNOWLEDGE_MAX_UPLOAD_MB = 1
    with pytest.raises(KnowledgeError, match="limit is 1 MB"):
        document_upload(collection=make_collection(make_user("ada")), filename="big.txt", data=b"a " * 2**20)


def test_the_same_bytes_twice_are_a_duplicate_and_changed_bytes_a_new_version():
    collection = make_collection(make_user("ada"))
    first = document_upload(collection=collection, filename="kettle.md", data=KETTLE.encode())
    with pytest.raises(KnowledgeError, match=r"same content as “kettle\.md”"):
        document_upload(collection=collection, filename="copy.md", data=KETTLE.encode())
    second = document_upload(collection=collection, filename="kettle.md", data=(KETTLE + "\n\nNew.").encode())
    assert second.document_id == first.document_id and (first.number, second.number) == (1, 2)
    assert Document.objects.get().content_hash == second.content_hash != first.content_hash
    other = make_collection(collection.owner, "Other")  # dedup is per collection
    assert document_upload(collection=other, filename="kettle.md", data=KETTLE.encode()).number == 1


def test_a_new_version_replaces_the_old_chunks_only_once_it_is_ready(inference_server):
    collection = make_collection(make_user("ada"))
    old = ingested(collection, "kettle.md", KETTLE)
    new = document_upload(collection=collection, filename="kettle.md", data=KETTLE.replace("three", "five").encode())
    assert "three minutes" in _search(collection, "kettle boil minutes")[0].text  # old still served meanwhile
    document_ingest(version_id=new.pk)
    new.refresh_from_db()
    assert new.status == Status.READY and Document.objects.get().current_version_id == new.pk
    assert not Chunk.objects.filter(version=old).exists()
    assert {r.version_id for r in _search(collection, "kettle boil minutes")} == {new.pk}

    broken = document_upload(collection=collection, filename="kettle.md", data=b"<html><p></p></html>")
    document_ingest(version_id=broken.pk)  # fails: the ready version stays served
    assert {r.version_id for r in _search(collection, "kettle boil minutes")} == {new.pk}


def test_reingest_parses_again_into_a_new_version(inference_server):
    collection = make_collection(make_user("ada"))
    first = ingested(collection, "kettle.md", KETTLE)
    again = document_reingest(document=first.document)
    assert again.number == 2 and again.original.name == first.original.name
    document_ingest(version_id=again.pk)
    again.refresh_from_db()
    assert again.status == Status.READY and again.text == first.text and again.chunks.count() == first.chunks_total


def test_cancel_a_queued_ingestion_then_retry_it(inference_server):
    collection = make_collection(make_user("ada"))
    version = document_upload(collection=collection, filename="kettle.md", data=KETTLE.encode())
    assert document_cancel(version=version).status == Status.CANCELLED
    assert document_ingest(version_id=version.pk) == "skipped"
    document_retry(version=version)
    assert document_ingest(version_id=version.pk) == Status.READY


def test_a_cancel_during_processing_is_seen_between_batches(inference_server):
    collection = make_collection(make_user("ada"))
    version = document_upload(collection=collection, filename="kettle.md", data=KETTLE.encode())
    running = ingestion._claim(version.pk)  # a worker took it: processing, fresh heartbeat
    assert document_cancel(version=version).status == Status.PROCESSING  # the flag only, for the worker
    with pytest.raises(KnowledgeError):
        document_retry(version=version)  # still running
    assert ingestion._ingest_or_fail(running) == Status.CANCELLED  # its next check between batches stops it
    version.refresh_from_db()
    assert version.status == Status.CANCELLED and not version.chunks.exists() and version.retryable


def test_an_attempt_taken_for_dead_stops_without_touching_the_retry(settings, inference_server):
    collection = make_collection(make_user("ada"))
    version = document_upload(collection=collection, filename="kettle.md", data=KETTLE.encode())
    slow = ingestion._claim(version.pk)  # attempt 1: alive, but silent longer than beat allows
    silent_since = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_INGEST_STALE_SECONDS + 1)
    DocumentVersion.objects.filter(pk=version.pk).update(heartbeat_at=silent_since)
    assert versions_fail_stale() == 1
    document_retry(version=version)
    assert document_ingest(version_id=version.pk) == Status.READY  # attempt 2
    chunks = list(version.chunks.values_list("pk", flat=True))
    with pytest.raises(ingestion._Superseded):
        ingestion._ingest_or_fail(slow)  # attempt 1 wakes up: it stops at its first write
    version.refresh_from_db()
    assert version.status == Status.READY and version.attempts == 2
    assert list(version.chunks.values_list("pk", flat=True)) == chunks


def test_a_silent_processing_version_becomes_failed_and_retryable(settings, inference_server):
    collection = make_collection(make_user("ada"))
    version = document_upload(collection=collection, filename="kettle.md", data=KETTLE.encode())
    silent_since = timezone.now() - timedelta(seconds=settings.KNOWLEDGE_INGEST_STALE_SECONDS + 1)
    DocumentVersion.objects.filter(pk=version.pk).update(status=Status.PROCESSING, heartbeat_at=silent_since)
    assert versions_fail_stale() == 1
    version.refresh_from_db()
    assert (version.status, version.failure) == (Status.FAILED, "worker lost") and "Retry" in version.error
    document_retry(version=version)
    assert document_ingest(version_id=version.pk) == Status.READY


def test_delete_takes_the_chunks_and_the_original(inference_server):
    from django.core.files.storage import default_storage

    collection = make_collection(make_user("ada"))
    version = ingested(collection, "kettle.md", KETTLE)
    name = version.original.name
    document_delete(document=version.document)
    assert not Chunk.objects.exists() and not DocumentVersion.objects.exists()
    assert default_storage.exists(name)  # removed on commit; this test's transaction never commits


def test_a_pdf_records_pages_and_chunks_know_their_page(inference_server):
    pages = [pdf_text(72, 700, "The kettle boils water quickly."), pdf_text(72, 700, "The lamp glows softly at night.")]
    version = ingested(make_collection(make_user("ada")), "manual.pdf", pdf_build(pages))
    assert version.status == Status.READY and version.pages_parsed == 2
    assert {chunk.page for chunk in version.chunks.all()} <= {1, 2}


def test_a_small_collection_among_many_nearer_chunks_still_finds_its_own(inference_server):
    from django.db import connection

    other = ingested(make_collection(make_user("bob")), "kettles.md", KETTLE.replace("three", "four"))
    template = other.chunks.first()
    Chunk.objects.bulk_create(  # many of Bob's chunks, each as near the query as his real one
        Chunk(version=other, index=1000 + i, text=template.text, start=0, end=1, embedding=template.embedding)
        for i in range(400)
    )
    collection = make_collection(make_user("ada"))
    ingested(collection, "kettle.md", KETTLE)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # the planner's choice on a big table: the HNSW index
    results = _search(collection, "How long does the kettle take to boil?")
    assert results and {r.document for r in results} == {"kettle.md"}
    assert results[0].vector_rank == 1


def test_fused_scores_follow_reciprocal_rank_fusion(inference_server):
    from apps.knowledge.retrieval import RRF_K

    collection = make_collection(make_user("ada"))
    ingested(collection, "kettle.md", KETTLE)
    ingested(collection, "lamp.md", LAMP)
    results = _search(collection, "lamp bulb brightness kettle", top_k=10)
    assert len(results) >= 2
    for r in results:
        ranks = [rank for rank in (r.vector_rank, r.text_rank) if rank is not None]
        assert r.score == round(sum(1 / (RRF_K + rank) for rank in ranks) / (2 / (RRF_K + 1)), 4)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    strict = chunks_search(
        collection_ids=[collection.pk], owner_id=collection.owner_id, query="lamp", top_k=10, min_score=0.99
    )
    assert all(r.score >= 0.99 for r in strict) and len(strict) <= len(results)


def test_full_text_searches_the_rarer_words_when_common_ones_would_match_too_many_rows(monkeypatch):
    """The word cut of retrieval.py's step 2, from Postgres's own statistics of the table."""
    from django.db import connection

    from apps.knowledge import retrieval

    version = document_upload(collection=make_collection(make_user("ada")), filename="k.md", data=b"# Kettles\n\nx")
    Chunk.objects.bulk_create(
        Chunk(
            version=version,
            index=i,
            text="The kettle boils water." + (" Descale it monthly." if i % 40 == 0 else ""),
            start=0,
            end=1,
            embedding=[1.0] + [0.0] * 383,
        )
        for i in range(400)
    )
    words = ["the", "kettle", "descale"]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE knowledge_chunk")
    assert retrieval.informative_words(words) == ["descale", "kettle"]  # rarest first; "the" has no lexeme
    monkeypatch.setattr(retrieval, "TEXT_MATCH_ROWS", 50)
    assert retrieval.informative_words(words) == ["descale"]  # "kettle" would match all 400 rows


def test_the_planner_settings_of_a_search_do_not_leak_into_the_callers_transaction():
    from django.db import connection

    from apps.knowledge.retrieval import chunks_rank, readable_chunks

    collection = make_collection(make_user("ada"))
    version = document_upload(collection=collection, filename="k.md", data=b"# Kettles\n\nx")
    version.status = DocumentVersion.Status.READY
    version.save()
    Document.objects.filter(pk=version.document_id).update(current_version=version)
    text = "The kettle boils water."
    Chunk.objects.create(version=version, index=0, text=text, start=0, end=len(text), embedding=[1.0] * 384)
    readable = readable_chunks(collection_ids=[collection.pk], owner_id=collection.owner_id)
    settings = ("enable_sort", "enable_nestloop", "hnsw.ef_search")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.ef_search = 50")  # the caller's own value, not the search's
        found = chunks_rank(readable=readable, readable_rows=1, query="kettle", embedding=[1.0] * 384, top_k=3)
        assert [(r.vector_rank, r.text_rank) for r in found] == [(1, 1)]
        cursor.execute("SELECT " + ", ".join(["current_setting(%s)"] * len(settings)), settings)
        assert cursor.fetchone() == ("on", "on", "50")


def test_ef_search_widens_with_the_share_of_the_table_other_people_hold():
    from apps.knowledge.retrieval import ef_search_for

    assert ef_search_for(readable_rows=100_000, table_rows=100_000) == 100  # all readable: the recall floor
    assert ef_search_for(readable_rows=10_000, table_rows=100_000) == 400  # a tenth: 40 expected readable rows
    assert ef_search_for(readable_rows=5_000, table_rows=100_000) == 800
    assert ef_search_for(readable_rows=1_000, table_rows=100_000) is None  # beyond pgvector's 1000: exact
    assert ef_search_for(readable_rows=50, table_rows=-1) == 100  # never analyzed: counted as all readable
