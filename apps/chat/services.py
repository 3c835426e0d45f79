"""Writes for conversations. Sending a message saves it first, then queues the answer: the user's words
are never lost to a model failure, and the answer is generated in a worker whether or not anyone is
watching (reload, switch chats or devices: it keeps streaming)."""

import secrets

from django.db import transaction

from apps.assistants.models import Assistant
from apps.chat.live import reply_stop_request
from apps.chat.models import Conversation, Message
from apps.chat.tasks import reply_generate_task
from apps.chat.titles import title_from

MAX_MESSAGE_CHARS = 32_000


class ChatError(Exception):
    """A domain error with a message fit for the person who caused it."""


def _queue_reply(reply: Message) -> None:
    transaction.on_commit(lambda: reply_generate_task.delay(str(reply.pk)))


def _reply_create(*, conversation: Conversation, parent: Message) -> Message:
    version = conversation.assistant.current_version
    if version is None:
        raise ChatError("This assistant has no configuration yet.")
    reply = Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=Message.Role.ASSISTANT,
        status=Message.Status.PENDING,
        assistant_version=version,
    )
    conversation.current_leaf = reply
    conversation.save(update_fields=["current_leaf", "updated_at"])
    _queue_reply(reply)
    return reply


def _clean(content: str) -> str:
    content = content.strip()
    if not content:
        raise ChatError("The message is empty.")
    if len(content) > MAX_MESSAGE_CHARS:
        raise ChatError(f"The message is {len(content):,} characters; the limit is {MAX_MESSAGE_CHARS:,}.")
    return content


@transaction.atomic
def conversation_start(
    *,
    assistant: Assistant,
    owner=None,
    session_key: str = "",
    share_token: str = "",
    first_message: str | None = None,
) -> Conversation:
    """A new conversation; with `first_message`, also its first question and queued answer, so a refused
    message (empty, too long) leaves no empty conversation behind."""
    if owner is None and not session_key:
        raise ChatError("A conversation belongs to a signed-in user or to a browser session.")
    conversation = Conversation.objects.create(
        assistant=assistant, owner=owner, session_key="" if owner else session_key, share_token=share_token
    )
    if first_message is not None:
        message_send(conversation=conversation, content=first_message)
    return conversation


@transaction.atomic
def message_send(*, conversation: Conversation, content: str) -> tuple[Message, Message]:
    """Append a question to the end of the branch on screen and queue its answer."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    content = _clean(content)
    parent = conversation.current_leaf
    if parent is not None and not parent.finished:
        raise ChatError("Wait for the answer to finish (or stop it) before sending the next message.")
    question = Message.objects.create(conversation=conversation, parent=parent, role=Message.Role.USER, content=content)
    if not conversation.title:
        conversation.title = title_from(content)
        conversation.save(update_fields=["title", "updated_at"])
    return question, _reply_create(conversation=conversation, parent=question)


@transaction.atomic
def message_edit(*, message: Message, content: str) -> tuple[Message, Message]:
    """An edited question becomes a sibling branch; the original and its answers stay."""
    if message.role != Message.Role.USER:
        raise ChatError("Only your own messages can be edited; regenerate an answer instead.")
    conversation = Conversation.objects.select_for_update().get(pk=message.conversation_id)
    question = Message.objects.create(
        conversation=conversation, parent=message.parent, role=Message.Role.USER, content=_clean(content)
    )
    return question, _reply_create(conversation=conversation, parent=question)


@transaction.atomic
def reply_regenerate(*, message: Message) -> Message:
    """A new answer to the same question, as a sibling branch of `message` (an answer)."""
    if message.role != Message.Role.ASSISTANT:
        raise ChatError("Only answers can be regenerated.")
    conversation = Conversation.objects.select_for_update().get(pk=message.conversation_id)
    return _reply_create(conversation=conversation, parent=message.parent)


def reply_stop(*, message: Message) -> None:
    """Ask the worker to stop; it keeps the partial answer and marks it stopped."""
    if message.role != Message.Role.ASSISTANT:
        raise ChatError("Only answers can be stopped.")
    if message.finished:
        return
    reply_stop_request(message_id=message.pk)
    # An answer still waiting in the queue stops right here; the worker will find it finished.
    Message.objects.filter(pk=message.pk, status=Message.Status.PENDING).update(
        status=Message.Status.STOPPED, finish_reason="stopped"
    )


@transaction.atomic
def conversation_switch_branch(*, conversation: Conversation, message: Message) -> Message:
    """Show the branch through `message`: follow its newest descendants down to a leaf."""
    if message.conversation_id != conversation.pk:
        raise ChatError("That message is not in this conversation.")
    newest_child = {}  # parent id -> its newest child's id, from one query
    for pk, parent_id in conversation.messages.order_by("created_at").values_list("pk", "parent_id"):
        newest_child[parent_id] = pk
    leaf_id = message.pk
    while leaf_id in newest_child:
        leaf_id = newest_child[leaf_id]
    leaf = message if leaf_id == message.pk else Message.objects.get(pk=leaf_id)
    conversation.current_leaf = leaf
    conversation.save(update_fields=["current_leaf", "updated_at"])
    return leaf


@transaction.atomic
def conversation_rename(*, conversation: Conversation, title: str) -> None:
    title = " ".join(title.split())[:120]
    if not title:
        raise ChatError("A title cannot be empty.")
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])


@transaction.atomic
def conversation_delete(*, conversation: Conversation) -> None:
    for message in conversation.messages.exclude(status__in=Message.TERMINAL):
        reply_stop_request(message_id=message.pk)
    conversation.delete()


@transaction.atomic
def conversation_snapshot_share(*, conversation: Conversation) -> str:
    """A read-only link to the conversation as it is on screen now (the current branch, frozen)."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    conversation.snapshot_token = conversation.snapshot_token or secrets.token_urlsafe(24)
    conversation.snapshot_leaf = conversation.current_leaf
    conversation.save(update_fields=["snapshot_token", "snapshot_leaf", "updated_at"])
    return conversation.snapshot_token


@transaction.atomic
def conversation_snapshot_revoke(*, conversation: Conversation) -> None:
    conversation.snapshot_token = None
    conversation.snapshot_leaf = None
    conversation.save(update_fields=["snapshot_token", "snapshot_leaf", "updated_at"])
