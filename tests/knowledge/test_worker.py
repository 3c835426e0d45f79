"""Ingestion in real Celery workers: a worker killed mid-ingestion leaves a document that beat marks failed
and that a retry, on a surviving worker, ingests completely, while the version served before stays served."""

import os
import signal
import time

import psutil
import pytest

from apps.knowledge.ingestion import EMBED_BATCH
from apps.knowledge.models import Chunk, Document, DocumentVersion
from apps.knowledge.retrieval import chunks_search
from apps.knowledge.services import document_retry, document_upload
from tests.factories import make_user
from tests.knowledge.factories import make_collection

Status = DocumentVersion.Status
PARAGRAPH = "Paragraph {n} of the long manual explains how the lighthouse lamp number {n} is cleaned, oiled and tested."
FIRST_EDITION = b"The first edition of the manual: lamps are cleaned weekly."


def _long_manual(paragraphs: int) -> bytes:
    return "\n\n".join(PARAGRAPH.format(n=n) for n in range(paragraphs)).encode()


def _wait(predicate, *, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert process is None or process.poll() is None, f"the worker died before {what}"
        time.sleep(0.05)
    return value


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_ingestion_leaves_a_retryable_document(models_ready, celery_worker_process):
    from apps.knowledge.tasks import versions_fail_stale_task
    from config.celery import app
    from tests.conftest import celery_worker

    collection = make_collection(make_user("ada"))
    # Only the worker about to be killed consumes `ingest` meanwhile: the session's worker lets go of it.
    session_worker = [f"test-{os.getpid()}@{os.uname().nodename}"]
    app.control.cancel_consumer("ingest", destination=session_worker, reply=True)
    try:
        with celery_worker(f"doomed-{os.getpid()}", queues=("ingest",)) as worker:
            served = document_upload(collection=collection, filename="manual.txt", data=FIRST_EDITION)
            _wait(lambda: Document.objects.filter(current_version=served).exists(), timeout=120, what="v1")
            doomed = document_upload(collection=collection, filename="manual.txt", data=_long_manual(1200))
            _wait(
                lambda: DocumentVersion.objects.filter(pk=doomed.pk, chunks_embedded__gte=EMBED_BATCH).exists(),
                timeout=120,
                what="the first embedded batch",
                process=worker,
            )
            for process in [*psutil.Process(worker.pid).children(recursive=True), worker]:
                process.send_signal(signal.SIGKILL)
            worker.wait(10)
    finally:
        app.control.add_consumer("ingest", destination=session_worker, reply=True)
    doomed.refresh_from_db()
    assert doomed.status == Status.PROCESSING and 0 < doomed.chunks_embedded < doomed.chunks_total
    assert Document.objects.get().current_version_id == served.pk  # the old version is still the one read
    assert {
        r.version_id
        for r in chunks_search(
            collection_ids=[collection.pk], owner_id=collection.owner_id, query="lamps cleaned weekly", top_k=3
        )
    } == {served.pk}

    time.sleep(2.5)  # beat's task, in a real worker that calls 2 s of silence too long
    queue = f"stale-{os.getpid()}"
    with celery_worker(queue, queues=(queue,), env={"KNOWLEDGE_INGEST_STALE_SECONDS": "2"}):
        assert versions_fail_stale_task.apply_async(queue=queue).get(timeout=60) == 1
    doomed.refresh_from_db()
    assert (doomed.status, doomed.failure) == (Status.FAILED, "worker lost") and doomed.retryable
    assert not Chunk.objects.filter(version=doomed).exists()

    document_retry(version=doomed)  # queued on commit to `ingest`, where the session's worker listens again
    _wait(
        lambda: DocumentVersion.objects.filter(pk=doomed.pk, status__in=[Status.READY, Status.FAILED]).first(),
        timeout=300,
        what="the retried ingestion",
    )
    doomed.refresh_from_db()
    assert doomed.status == Status.READY and doomed.attempts >= 2
    assert doomed.chunks.count() == doomed.chunks_total == doomed.chunks_embedded
    assert Document.objects.get().current_version_id == doomed.pk and not Chunk.objects.filter(version=served).exists()
