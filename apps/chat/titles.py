"""Conversation titles: a provisional one from the first question at once, then the model's own summary
of the first exchange (a person's rename wins)."""

from apps.chat.models import Conversation, Message
from apps.core.inference_client import InferenceError, inference_chat

TITLE_CHARS = 60
TITLE_PROMPT = (
    "Write a title of at most six words for a conversation that begins with the exchange below. "
    "Reply with the title only.\n\nQuestion: {question}\n\nAnswer: {answer}"
)


def title_from(text: str) -> str:
    """The first line of the first question, cut at a word boundary."""
    line = " ".join(text.split())
    if len(line) <= TITLE_CHARS:
        return line or "New chat"
    return line[:TITLE_CHARS].rsplit(" ", 1)[0].rstrip(",.;:") + "…"


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
