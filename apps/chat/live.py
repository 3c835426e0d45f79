"""A reply's live event stream in Redis, so any number of browser tabs (or a reloaded one) can follow a
generation that runs in a Celery worker.

Each reply has one Redis stream. The worker appends `token` events as they arrive, then exactly one
final `done` event; a viewer reads from the start (catching up) and then blocks for more. The database
holds the same text (flushed a few times a second and at the end), so once the stream expires the
message row alone tells the whole story. Stop requests travel the other way, as a flag the worker polls.

A worker that vanishes mid-answer leaves its row `streaming` and its stream without a `done` event;
`answers_fail_abandoned` (run by beat, for chat replies and arena answers alike) fails such rows and
sends that event, so followers stop waiting.
"""

import functools
import json
from collections.abc import Callable, Mapping
from datetime import timedelta

import redis
import redis.asyncio
from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

STREAM_TTL_SECONDS = 600  # after the answer ends; viewers arriving later read the database


def _stream_key(message_id) -> str:
    return f"atelier:reply:{message_id}"


def _stop_key(message_id) -> str:
    return f"atelier:reply:{message_id}:stop"


@functools.cache
def _pool(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def redis_client() -> redis.Redis:
    """This process's client (its pool is thread-safe, and redis-py re-creates it after a fork)."""
    return _pool(settings.REDIS_URL)


def reply_events_reset(*, message_id) -> None:
    """A (re)started generation: viewers drop what they showed so far."""
    key = _stream_key(message_id)
    redis_client().pipeline().delete(key).xadd(key, {"event": "reset", "data": "{}"}).expire(
        key, STREAM_TTL_SECONDS * 6
    ).execute()


def reply_event_publish(*, message_id, event: str, data: dict, final: bool = False) -> None:
    client = redis_client()
    client.xadd(_stream_key(message_id), {"event": event, "data": json.dumps(data)})
    if final:
        client.expire(_stream_key(message_id), STREAM_TTL_SECONDS)


def reply_stop_request(*, message_id) -> None:
    redis_client().set(_stop_key(message_id), "1", ex=STREAM_TTL_SECONDS)


def reply_stop_requested(*, message_id) -> bool:
    return bool(redis_client().exists(_stop_key(message_id)))


async def reply_events_follow(*, message_id, block_ms: int = 3000):
    """Yield (event, data) from the start of the reply's stream; yields ("idle", {}) after each quiet
    `block_ms` so the caller can check the database (the stream may have expired, the worker died)."""
    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    last = "0"
    try:
        while True:
            result = await client.xread({_stream_key(message_id): last}, block=block_ms, count=200)
            if not result:
                yield "idle", {}
                continue
            for entry_id, fields in result[0][1]:
                last = entry_id
                yield fields[b"event"].decode(), json.loads(fields[b"data"])
    finally:
        await client.aclose()


def answers_fail_abandoned(
    *,
    answers: models.QuerySet,
    error: str,
    done_event: Callable[[models.Model], dict],
    also_set: Mapping[str, object] | None = None,
) -> int:
    """Fail the `answers` (rows with `status`, `error` and `updated_at`) that have been `streaming` but
    silent for longer than CHAT_ANSWER_ABANDONED_AFTER_SECONDS, keeping their text, set `also_set` on
    them, and publish each one's final `done` event (`done_event(answer)`). A streaming answer saves
    several times a second and the engine client gives up after 120 s of silence, so one quiet for
    longer has lost its worker. Rows another run holds locked are skipped. Returns how many failed."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.CHAT_ANSWER_ABANDONED_AFTER_SECONDS)
    changes = {"status": "error", "error": error, "updated_at": now, **(also_set or {})}
    with transaction.atomic():
        abandoned = list(answers.select_for_update(skip_locked=True).filter(status="streaming", updated_at__lt=cutoff))
        for answer in abandoned:
            for field, value in changes.items():
                setattr(answer, field, value)
        answers.model.objects.bulk_update(abandoned, list(changes))
    for answer in abandoned:
        reply_event_publish(message_id=answer.pk, event="done", data=done_event(answer), final=True)
    return len(abandoned)
