from celery import shared_task

from apps.chat.generation import reply_generate


@shared_task(name="chat.reply_generate", queue="chat")
def reply_generate_task(message_id: str) -> str:
    return reply_generate(message_id=message_id)
