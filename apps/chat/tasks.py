"""Thin Celery wrappers around the chat services. The title task is chained here, after a first answer."""

from celery import shared_task

from apps.chat.generation import replies_fail_abandoned, reply_generate
from apps.chat.titles import conversation_title_generate


@shared_task(name="chat.reply_generate")
def reply_generate_task(message_id: str) -> str:
    outcome = reply_generate(message_id=message_id)
    if outcome.first_exchange_done:
        conversation_title_task.delay(outcome.conversation_id, message_id)
    return outcome.status


@shared_task(name="chat.conversation_title")
def conversation_title_task(conversation_id: str, answer_id: str) -> str:
    return conversation_title_generate(conversation_id=conversation_id, answer_id=answer_id)


@shared_task(name="chat.replies_fail_abandoned")
def replies_fail_abandoned_task() -> int:
    """Run by beat (CELERY_BEAT_SCHEDULE): answers whose worker vanished become failed, retryable ones."""
    return replies_fail_abandoned()
