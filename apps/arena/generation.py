"""Generating one side's answer of a battle turn, in a worker on the `chat` queue, like a chat answer.

The request comes from `engine_request_build` (the one builder chat uses), with that side's own
history: every earlier prompt of the battle and that side's earlier answers. Tokens go to the answer's
Redis stream through apps.chat.live (the same stream machinery, keyed by the answer's id), so a reload
replays them; the database copy is flushed a few times a second and at the end, with the latency.

Idempotent under redelivery like chat: a redelivered task resets the answer and starts it again; an
answer whose worker vanished is failed by beat (`battle_answers_fail_abandoned`), so the battle can
still be voted on (and is then excluded, since a failed answer is no fair comparison).
"""

import logging
import time

from django.db import transaction
from django.utils import timezone

from apps.arena.models import BattleAnswer
from apps.assistants.engine import ContextTooSmall, engine_request_build
from apps.chat.live import answers_fail_abandoned, reply_event_publish, reply_events_reset
from apps.core.inference_client import InferenceError, inference_chat_stream, stream_deltas
from apps.core.rendering import untrusted_markdown_render

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25
ABANDONED_ERROR = "The worker stopped while writing this answer."


def answer_done_event(answer: BattleAnswer) -> dict:
    """The final event of an answer: its end state and its text as sanitized HTML."""
    return {"status": answer.status, "html": untrusted_markdown_render(answer.content), "error": answer.error}


def _claim(answer_id: str) -> BattleAnswer | None:
    with transaction.atomic():
        answer = (
            BattleAnswer.objects.select_for_update(of=("self",))
            .select_related("turn__battle__user", "turn__battle__version_a__base_model")
            .select_related("turn__battle__version_b__base_model")
            .filter(pk=answer_id)
            .first()
        )
        if answer is None or answer.finished:
            return None
        answer.status, answer.content, answer.error, answer.started_at = (
            BattleAnswer.Status.STREAMING,
            "",
            "",
            timezone.now(),
        )
        answer.save(update_fields=["status", "content", "error", "started_at", "updated_at"])
    reply_events_reset(message_id=answer.pk)
    return answer


def _history(answer: BattleAnswer) -> list[dict]:
    """The conversation this side has seen: earlier prompts and its own earlier answers, then the prompt."""
    earlier = BattleAnswer.objects.filter(
        turn__battle_id=answer.turn.battle_id, side=answer.side, turn__number__lt=answer.turn.number
    ).select_related("turn")
    messages = []
    for previous in earlier.order_by("turn__number"):
        messages.append({"role": "user", "content": previous.turn.prompt})
        messages.append({"role": "assistant", "content": previous.content})
    return [*messages, {"role": "user", "content": answer.turn.prompt}]


def _finish(answer: BattleAnswer, *, status: str, started: float, finish_reason: str = "", error: str = "") -> None:
    answer.status, answer.finish_reason, answer.error = status, finish_reason, error[:500]
    answer.latency_ms = round(1000 * (time.monotonic() - started))
    answer.finished_at = timezone.now()
    answer.save(
        update_fields=[
            "status", "finish_reason", "error", "content", "completion_tokens", "context",
            "first_token_ms", "latency_ms", "finished_at", "updated_at",
        ]
    )  # fmt: skip
    reply_event_publish(message_id=answer.pk, event="done", data=answer_done_event(answer), final=True)


def battle_answer_generate(*, answer_id: str) -> str:
    """Generate one side's answer; returns its final status ("skipped" when it had already ended)."""
    answer = _claim(answer_id)
    if answer is None:
        return "skipped"
    started = time.monotonic()
    battle = answer.turn.battle
    try:
        request = engine_request_build(
            version=battle.version_of(answer.side), messages=_history(answer), user_name=battle.user.get_username()
        )
    except (ContextTooSmall, InferenceError) as error:
        _finish(answer, status=BattleAnswer.Status.ERROR, started=started, error=str(error))
        return answer.status
    answer.context = request.report
    finish_reason, last_flush = "", time.monotonic()
    stream = inference_chat_stream(body={**request.body, "logprobs": True})  # one entry per token: the count
    try:
        for delta in stream_deltas(stream):
            if delta.text:
                if answer.first_token_ms is None:
                    answer.first_token_ms = round(1000 * (time.monotonic() - started))
                answer.content += delta.text
                reply_event_publish(message_id=answer.pk, event="token", data={"text": delta.text})
            answer.completion_tokens += len(delta.tokens)
            finish_reason = delta.finish_reason or finish_reason
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                answer.save(update_fields=["content", "completion_tokens", "first_token_ms", "updated_at"])
    except InferenceError as error:
        _finish(answer, status=BattleAnswer.Status.ERROR, started=started, finish_reason="error", error=str(error))
        return answer.status
    except Exception:
        log.exception("battle answer %s failed", answer.pk)
        _finish(answer, status=BattleAnswer.Status.ERROR, started=started, error="An internal error ended this answer.")
        raise
    finally:
        stream.close()
    _finish(answer, status=BattleAnswer.Status.DONE, started=started, finish_reason=finish_reason)
    return answer.status


def battle_answers_fail_abandoned() -> int:
    """Fail answers silent for longer than chat's abandonment limit (their worker vanished)."""
    return answers_fail_abandoned(
        answers=BattleAnswer.objects.all(),
        error=ABANDONED_ERROR,
        done_event=answer_done_event,
        also_set={"finished_at": timezone.now()},
    )
