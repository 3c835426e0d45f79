"""Fair queueing of ingestion: one person's 500-file upload must not starve another person's single file.

The broker's `ingest` queue is first in, first out, so sending a task per version at upload would put another
person's file behind all 500. Instead a version is created queued and *waiting* (`dispatched_at` is null), and
`versions_dispatch` sends the ingestion task for each owner's oldest waiting versions only while that owner has
fewer than KNOWLEDGE_INGEST_PER_USER versions in flight (sent and not yet finished: queued with
`dispatched_at` set, or processing). It runs when versions are queued (upload, retry, re-ingest: once their
transaction commits), when a queued one is cancelled, after every ingestion task (whatever its outcome), and
from beat as a safety net. So the broker holds at most that many messages per owner: a newcomer's file waits
behind at most KNOWLEDGE_INGEST_PER_USER tasks of each other active owner, never behind their whole upload.

One dispatcher at a time (a transaction-scoped advisory lock), so two tasks finishing together cannot both fill
the same free slot. The messages are sent once the marks commit; a message that is lost anyway (a broker
restart, a failed send) leaves a version queued and dispatched that no worker ever takes: beat's
`versions_fail_stale` (ingestion.py) sends it again, and fails it as retryable after KNOWLEDGE_INGEST_DISPATCH_MAX
sends. Sending twice is harmless: ingestion claims only a queued version, so a duplicate message is skipped.

The price is three queries per dispatch (the head of each owner's line, their counts in flight, the marks),
paid once per finished document: nothing next to extracting and embedding it.
"""

from __future__ import annotations

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from apps.knowledge.models import DocumentVersion

INGEST_TASK = "knowledge.document_ingest"  # sent by name: tasks.py runs the dispatcher after each ingestion
DISPATCH_LOCK = 0x4B4E4F57  # pg_advisory_xact_lock key of the dispatcher ("KNOW")
_OWNER = "document__collection__owner_id"
Status = DocumentVersion.Status


def versions_in_flight() -> Q:
    """Versions whose task was sent and has not finished: what counts against an owner's share."""
    return Q(status=Status.PROCESSING) | Q(status=Status.QUEUED, dispatched_at__isnull=False)


def versions_dispatch() -> int:
    """Send the ingestion task of each owner's oldest waiting versions, up to KNOWLEDGE_INGEST_PER_USER in
    flight per owner (the module docstring); returns how many were sent."""
    share = settings.KNOWLEDGE_INGEST_PER_USER
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK])
        # Each owner's line, cut at a full share: at most KNOWLEDGE_INGEST_PER_USER rows per owner.
        heads = list(
            DocumentVersion.objects.filter(status=Status.QUEUED, dispatched_at__isnull=True)
            .annotate(place=Window(RowNumber(), partition_by=F(_OWNER), order_by=[F("created_at"), F("pk")]))
            .filter(place__lte=share)
            .order_by(_OWNER, "place")
            .values_list("pk", _OWNER, "place")
        )
        if not heads:
            return 0
        busy = dict(
            DocumentVersion.objects.filter(versions_in_flight(), **{f"{_OWNER}__in": {owner for _, owner, _ in heads}})
            .order_by()
            .values(_OWNER)
            .annotate(count=Count("pk"))
            .values_list(_OWNER, "count")
        )
        chosen = [pk for pk, owner, place in heads if place <= share - busy.get(owner, 0)]
        now = timezone.now()
        DocumentVersion.objects.filter(pk__in=chosen).update(
            dispatched_at=now, dispatches=F("dispatches") + 1, updated_at=now
        )
        transaction.on_commit(lambda: [current_app.send_task(INGEST_TASK, args=[pk]) for pk in chosen])
    return len(chosen)
