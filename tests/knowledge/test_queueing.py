"""Fair queueing of ingestion (apps/knowledge/queueing.py): a bulk upload holds only its owner's share of the
workers, so another person's single file is sent at once.

The messages themselves are sent once a transaction commits, which these tests (one transaction each) never
do: what is asserted is which versions the dispatcher marked as sent, and in what order."""

import pytest

from apps.knowledge.models import DocumentVersion
from apps.knowledge.queueing import versions_dispatch
from apps.knowledge.services import document_cancel, document_upload
from apps.knowledge.tasks import document_ingest_task
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
