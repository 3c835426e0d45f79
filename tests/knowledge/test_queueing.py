"""Fair queueing of ingestion (apps/knowledge/queueing.py): a bulk upload holds only its owner's share of the
workers, so another person's single file is sent at once; and a task message lost before any worker took it
is sent again, then failed as retryable, by beat's check.

The messages themselves are sent once a transaction commits, which these tests (one transaction each) never
do: what is asserted is which versions the dispatcher marked as sent, and in what order."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.knowledge.ingestion import NEVER_STARTED_ERROR, versions_fail_stale
from apps.knowledge.models import DocumentVersion
from apps.knowledge.queueing import versions_dispatch
from apps.knowledge.services import document_cancel, document_retry, document_upload
from apps.knowledge.tasks import document_ingest_task, versions_fail_stale_task
from tests.factories import make_user
from tests.knowledge.factories import make_collection

pytestmark = pytest.mark.django_db
Status = DocumentVersion.Status


def _sent() -> list[int]:
    """The versions whose task was sent, in the order they were sent."""
    versions = DocumentVersion.objects.filter(dispatched_at__isnull=False).order_by("dispatched_at", "pk")
    return list(versions.values_list("pk", flat=True))


def _upload(collection, name: str):
    data = f"# {name}\n\nThe note called {name} explains how the lamp of the lighthouse is cleaned.".encode()
    return document_upload(collection=collection, filename=f"{name}.md", data=data)


def test_a_bulk_upload_does_not_starve_another_persons_single_file(settings, inference_server):
    settings.KNOWLEDGE_INGEST_PER_USER = 2
    ada, bea = make_collection(make_user("ada")), make_collection(make_user("bea"))
    bulk = [_upload(ada, f"note-{n}") for n in range(6)]
    assert versions_dispatch() == 2 and _sent() == [bulk[0].pk, bulk[1].pk]  # ada's share, oldest first
    single = _upload(bea, "bea")
    assert versions_dispatch() == 1 and _sent()[-1] == single.pk  # sent at once, before ada's third file
    assert versions_dispatch() == 0  # nobody has a free share

    # Ada's first file is ingested (the worker's task, in this process): her third file takes its place.
    assert document_ingest_task(bulk[0].pk) == Status.READY
    assert _sent() == [bulk[0].pk, bulk[1].pk, single.pk, bulk[2].pk]
    # Cancelling a queued file frees its share too.
    assert versions_dispatch() == 0
    document_cancel(version=bulk[1])
    assert versions_dispatch() == 1 and _sent()[-1] == bulk[3].pk
    waiting = DocumentVersion.objects.filter(status=Status.QUEUED, dispatched_at__isnull=True)
    assert set(waiting.values_list("pk", flat=True)) == {bulk[4].pk, bulk[5].pk}


def test_a_queued_version_whose_task_was_lost_is_sent_again_then_failed_as_retryable(settings):
    settings.KNOWLEDGE_INGEST_PER_USER = 1
    settings.KNOWLEDGE_INGEST_QUEUED_STALE_SECONDS = 600
    settings.KNOWLEDGE_INGEST_DISPATCH_MAX = 2
    collection = make_collection(make_user("ada"))
    lost, behind = _upload(collection, "lost"), _upload(collection, "behind")
    assert versions_dispatch() == 1 and _sent() == [lost.pk]  # its message is lost: no worker ever takes it

    def age(version) -> None:  # its task was sent longer ago than a worker takes to start one
        DocumentVersion.objects.filter(pk=version.pk).update(dispatched_at=timezone.now() - timedelta(seconds=601))

    assert versions_fail_stale_task() == 0 and _sent() == [lost.pk]  # sent just now: not lost yet
    age(lost)
    for version, days in ((lost, 2), (behind, 1)):  # both queued long ago
        DocumentVersion.objects.filter(pk=version.pk).update(created_at=timezone.now() - timedelta(days=days))
    assert versions_fail_stale_task() == 0  # beat: sent again, before the one waiting behind it
    lost.refresh_from_db()
    assert (lost.status, lost.dispatches, _sent()) == (Status.QUEUED, 2, [lost.pk])
    behind.refresh_from_db()  # waiting for a share is not being lost, however long it takes
    assert (behind.status, behind.dispatched_at) == (Status.QUEUED, None)

    age(lost)
    assert versions_fail_stale_task() == 1  # the second send was lost too: failed, and the next one is sent
    lost.refresh_from_db()
    assert (lost.status, lost.failure, lost.error) == (Status.FAILED, "never started", NEVER_STARTED_ERROR)
    behind.refresh_from_db()
    assert lost.retryable and behind.dispatches == 1

    document_retry(version=lost)
    lost.refresh_from_db()
    assert (lost.status, lost.dispatched_at, lost.dispatches) == (Status.QUEUED, None, 0)


def test_a_silent_worker_and_a_lost_message_are_told_apart(settings):
    """A processing version is judged by its heartbeat, not by when its task was sent."""
    settings.KNOWLEDGE_INGEST_QUEUED_STALE_SECONDS = 600
    settings.KNOWLEDGE_INGEST_STALE_SECONDS = 300
    version = _upload(make_collection(make_user("ada")), "busy")
    versions_dispatch()
    past = timezone.now() - timedelta(seconds=601)
    DocumentVersion.objects.filter(pk=version.pk).update(
        status=Status.PROCESSING, dispatched_at=past, heartbeat_at=timezone.now()
    )
    assert versions_fail_stale() == 0
    version.refresh_from_db()
    assert (version.status, version.dispatched_at) == (Status.PROCESSING, past)
