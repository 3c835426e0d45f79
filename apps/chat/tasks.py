from celery import shared_task

from apps.chat.generation import conversation_title_generate, reply_generate


@shared_task(name="chat.reply_generate", queue="chat")
def reply_generate_task(message_id: str) -> str:
    return reply_generate(message_id=message_id)


@shared_task(name="chat.conversation_title", queue="chat")
def conversation_title_task(conversation_id: str, answer_id: str) -> str:
    return conversation_title_generate(conversation_id=conversation_id, answer_id=answer_id)
