"""Generating one answer, in a worker: build the engine request, stream from the engine, persist as it comes.

Idempotent under redelivery: a worker killed mid-answer leaves the message `streaming`; Celery hands the
task to another worker (acks_late), which resets the text and starts the answer again. If no worker
picks it up, beat's `replies_fail_abandoned` marks it failed once it has been silent too long, keeping
its text, so the person can retry.
"""

import logging
import time
from dataclasses import dataclass

from django.db import transaction

from apps.assistants.engine import ContextTooSmall, EngineRequest, engine_request_build
from apps.assistants.models import CanaryIncident
from apps.chat.live import answers_fail_abandoned, reply_event_publish, reply_events_reset, reply_stop_requested
from apps.chat.models import Message
from apps.chat.rendering import answer_done_event
from apps.chat.selectors import message_ancestors
from apps.core.inference_client import InferenceError, inference_chat_stream, stream_deltas
from apps.knowledge.prompting import citations_finalize

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25  # how stale the database copy may be while the Redis stream carries every token
TOP_LOGPROBS = 5
ABANDONED_ERROR = "The worker stopped while writing this answer. Retry to generate it again."
CANARY_ERROR = "This answer was withheld: it repeated the assistant's confidential instructions."


@dataclass(frozen=True)
class ReplyOutcome:
    status: str
    conversation_id: str = ""
    first_exchange_done: bool = False  # the conversation's first answer just finished: time for a title


def _claim(message_id: str) -> Message | None:
    """Mark the answer as streaming, unless it already ended (stopped while queued, or done)."""
    with transaction.atomic():
        reply = (
            Message.objects.select_for_update(of=("self",))
            .select_related("assistant_version__base_model", "assistant_version__adapter", "conversation__owner")
            .filter(pk=message_id)
            .first()
        )
        if reply is None or reply.finished:
            return None
        reply.status, reply.content, reply.tokens, reply.error = Message.Status.STREAMING, "", [], ""
        reply.sources = []
        reply.save(update_fields=["status", "content", "tokens", "error", "sources", "updated_at"])
    reply_events_reset(message_id=reply.pk)
    return reply


def _finish(reply: Message, *, status: str, finish_reason: str = "", error: str = "") -> None:
    if reply.sources:  # a citation marker naming no retrieved passage is removed
        reply.content = citations_finalize(text=reply.content, sources=reply.sources)
    reply.status, reply.finish_reason, reply.error = status, finish_reason, error[:500]
    update_fields = ["status", "finish_reason", "error", "content", "tokens", "context", "sources", "updated_at"]
    reply.save(update_fields=update_fields)
    reply_event_publish(message_id=reply.pk, event="done", data=answer_done_event(reply), final=True)


def reply_engine_request(*, reply: Message, history: list[Message]) -> EngineRequest:
    """What the engine is asked for `reply`, given the branch above it (`history`, ending with the
    question). Costs counted now are saved on their messages, so each turn is counted once."""
    owner = reply.conversation.owner
    request = engine_request_build(
        version=reply.assistant_version,
        messages=[{"role": m.role, "content": m.content} for m in history],
        user_name=owner.get_username() if owner else "",
        token_counts=[m.token_count for m in history],
    )
    counted = []
    for message, count in zip(history, request.token_counts, strict=True):
        if message.token_count is None:
            message.token_count = count
            counted.append(message)
    Message.objects.bulk_update(counted, ["token_count"])  # counted once, reused by every later answer
    return request


def reply_generate(*, message_id: str) -> ReplyOutcome:
    """Generate the answer `message_id`."""
    reply = _claim(message_id)
    if reply is None:
        return ReplyOutcome("skipped")
    history = message_ancestors(message=reply)[:-1]
    if not history or history[-1].role != Message.Role.USER:
        raise ValueError("An answer is generated for a question: its history must end with the user's message.")
    try:
        request = reply_engine_request(reply=reply, history=history)
    except (ContextTooSmall, InferenceError) as error:
        _finish(reply, status=Message.Status.ERROR, error=str(error))
        return ReplyOutcome(reply.status)
    reply.context, reply.sources = request.report, request.sources
    reply.save(update_fields=["context", "sources", "updated_at"])  # once: the flushes below only add text
    reply_event_publish(message_id=reply.pk, event="context", data=request.report)

    body = {**request.body, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    status, finish_reason = Message.Status.DONE, ""
    canary = reply.assistant_version.canary
    last_flush = time.monotonic()
    stream = inference_chat_stream(body=body)
    try:
        for delta in stream_deltas(stream):
            if delta.text or delta.tokens:
                reply.content += delta.text
                reply.tokens.extend(delta.tokens)
                if canary and canary in reply.content:
                    _canary_withhold(reply)
                    return ReplyOutcome(reply.status)
                data = {"text": delta.text, "tokens": delta.tokens}
                reply_event_publish(message_id=reply.pk, event="token", data=data)
            finish_reason = delta.finish_reason or finish_reason
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                reply.save(update_fields=["content", "tokens", "updated_at"])
                if reply_stop_requested(message_id=reply.pk):
                    status, finish_reason = Message.Status.STOPPED, "stopped"
                    break
    except InferenceError as error:
        # Whatever streamed so far is kept; the person sees why it ended and can regenerate.
        _finish(reply, status=Message.Status.ERROR, finish_reason="error", error=str(error))
        return ReplyOutcome(reply.status)
    except Exception:
        log.exception("answer %s failed", reply.pk)
        _finish(reply, status=Message.Status.ERROR, finish_reason="error", error="An internal error ended this answer.")
        raise
    finally:
        stream.close()  # closing the connection cancels the request in the engine
    _finish(reply, status=status, finish_reason=finish_reason)
    first_exchange = status == Message.Status.DONE and history[-1].parent_id is None
    return ReplyOutcome(status, str(reply.conversation_id), first_exchange)


def _canary_withhold(reply: Message) -> None:
    """The answer wrote the version's canary: keep the text for the owner, show the person an error. What
    streamed before the canary was complete was already sent; the final event replaces it."""
    CanaryIncident.objects.create(version=reply.assistant_version, message_id=reply.pk, withheld_text=reply.content)
    log.warning("answer %s withheld: it contained the canary of %s", reply.pk, reply.assistant_version)
    reply.content, reply.tokens = "", []
    _finish(reply, status=Message.Status.ERROR, finish_reason="canary", error=CANARY_ERROR)


def replies_fail_abandoned() -> int:
    """Mark answers whose worker vanished mid-stream as failed (keeping their text), so they can be
    retried, and tell anyone following them."""
    return answers_fail_abandoned(
        answers=Message.objects.all(),
        error=ABANDONED_ERROR,
        done_event=answer_done_event,
        also_set={"finish_reason": "error"},
    )
