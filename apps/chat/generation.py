"""Generating one answer, in a worker: budget the prompt, stream from the engine, persist as it comes.

Idempotent under redelivery: a worker killed mid-answer leaves the message `streaming`; Celery hands the
task to another worker (acks_late), which resets the text and starts the answer again.
"""

import logging
import time

from django.db import transaction

from apps.assistants.selectors import engine_settings
from apps.chat.live import reply_event_publish, reply_events_reset, reply_stop_requested
from apps.chat.models import Conversation, Message
from apps.chat.prompt import ContextTooSmall, prompt_build
from apps.chat.rendering import answer_done_event
from apps.chat.selectors import message_ancestors
from apps.chat.services import title_from
from apps.core.inference_client import InferenceError, inference_chat, inference_chat_stream

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25  # how stale the database copy may be while the Redis stream carries every token
TOP_LOGPROBS = 5


def _claim(message_id: str) -> Message | None:
    """Mark the answer as streaming, unless it already ended (stopped while queued, or done)."""
    with transaction.atomic():
        reply = (
            Message.objects.select_for_update(of=("self",))
            .select_related("assistant_version__base_model", "conversation__owner")
            .filter(pk=message_id)
            .first()
        )
        if reply is None or reply.finished:
            return None
        reply.status, reply.content, reply.tokens, reply.error = Message.Status.STREAMING, "", [], ""
        reply.save(update_fields=["status", "content", "tokens", "error", "updated_at"])
    reply_events_reset(message_id=reply.pk)
    return reply


def _token_entries(choice: dict) -> list[list]:
    entries = (choice.get("logprobs") or {}).get("content") or []
    return [
        [e["token"], round(e["logprob"], 4), [[t["token"], round(t["logprob"], 4)] for t in e.get("top_logprobs", [])]]
        for e in entries
    ]


def _finish(reply: Message, *, status: str, finish_reason: str = "", error: str = "") -> None:
    reply.status, reply.finish_reason, reply.error = status, finish_reason, error[:500]
    reply.save(update_fields=["status", "finish_reason", "error", "content", "tokens", "context", "updated_at"])
    reply_event_publish(message_id=reply.pk, event="done", data=answer_done_event(reply), final=True)


def reply_generate(*, message_id: str) -> str:
    """Generate the answer `message_id`; returns its final status."""
    reply = _claim(message_id)
    if reply is None:
        return "skipped"
    version = reply.assistant_version
    owner = reply.conversation.owner
    history = message_ancestors(message=reply)[:-1]
    try:
        plan = prompt_build(version=version, history=history, user_name=owner.get_username() if owner else "")
    except (ContextTooSmall, InferenceError) as error:
        _finish(reply, status=Message.Status.ERROR, error=str(error))
        return reply.status
    reply.context = plan.report
    reply.save(update_fields=["context", "updated_at"])  # once: the flushes below only add text
    reply_event_publish(message_id=reply.pk, event="context", data=plan.report)

    body = {
        **engine_settings(version=version),
        "messages": plan.messages,
        "max_tokens": plan.max_tokens,  # what the context window leaves of the version's max_tokens
        "logprobs": True,
        "top_logprobs": TOP_LOGPROBS,
    }
    status, finish_reason = Message.Status.DONE, ""
    last_flush = time.monotonic()
    stream = inference_chat_stream(body=body)
    try:
        for chunk in stream:
            for choice in chunk.get("choices", []):
                text = (choice.get("delta") or {}).get("content") or ""
                entries = _token_entries(choice)
                if text or entries:
                    reply.content += text
                    reply.tokens.extend(entries)
                    reply_event_publish(message_id=reply.pk, event="token", data={"text": text, "tokens": entries})
                finish_reason = choice.get("finish_reason") or finish_reason
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                reply.save(update_fields=["content", "tokens", "updated_at"])
                if reply_stop_requested(message_id=reply.pk):
                    status, finish_reason = Message.Status.STOPPED, "stopped"
                    break
    except InferenceError as error:
        # Whatever streamed so far is kept; the person sees why it ended and can regenerate.
        _finish(reply, status=Message.Status.ERROR, finish_reason="error", error=str(error))
        return reply.status
    except Exception:
        log.exception("answer %s failed", reply.pk)
        _finish(reply, status=Message.Status.ERROR, finish_reason="error", error="An internal error ended this answer.")
        raise
    finally:
        stream.close()  # closing the connection cancels the request in the engine
    _finish(reply, status=status, finish_reason=finish_reason)
    if status == Message.Status.DONE and history[-1].parent_id is None:  # the first exchange
        from apps.chat.tasks import conversation_title_task

        conversation_title_task.delay(str(reply.conversation_id), str(reply.pk))
    return status


TITLE_PROMPT = (
    "Write a title of at most six words for a conversation that begins with the exchange below. "
    "Reply with the title only.\n\nQuestion: {question}\n\nAnswer: {answer}"
)


def conversation_title_generate(*, conversation_id: str, answer_id: str) -> str:
    """Replace the provisional title (the first question, cut short) by the model's own summary of the
    first exchange; keep the provisional one when the person renamed it or the model's is unusable."""
    answer = Message.objects.select_related("parent", "assistant_version__base_model").get(pk=answer_id)
    question = answer.parent
    prompt = TITLE_PROMPT.format(question=question.content[:1000], answer=answer.content[:1000])
    body = {
        "model": answer.assistant_version.base_model.name,
        "messages": [
            {"role": "system", "content": "You write short, plain titles."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": 16,
        "temperature": 0.0,
    }
    try:
        text = inference_chat(body=body)["choices"][0]["message"]["content"]
    except (InferenceError, KeyError, IndexError):
        return ""
    title = " ".join(text.strip().splitlines()[0].split()).strip(" \"'*#.:") if text.strip() else ""
    if not title or len(title.split()) > 10 or len(title) > 80:
        return ""
    provisional = title_from(question.content)
    Conversation.objects.filter(pk=conversation_id, title=provisional).update(title=title)
    return title
