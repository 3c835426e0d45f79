"""Reads for conversations, and the one place that decides who may open one."""

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from apps.assistants.selectors import can_chat, share_link_valid
from apps.chat.models import Conversation, Message


@dataclass
class ThreadEntry:
    message: Message
    position: int  # 1-based, among its siblings (the versions of this turn)
    siblings: list[Message]

    @property
    def previous(self) -> Message | None:
        return self.siblings[self.position - 2] if self.position > 1 else None

    @property
    def next(self) -> Message | None:
        return self.siblings[self.position] if self.position < len(self.siblings) else None


def conversation_thread(*, conversation: Conversation, leaf: Message | None = None) -> list[ThreadEntry]:
    """The branch on screen (or the one through `leaf`), each turn with its sibling versions."""
    leaf_id = leaf.pk if leaf is not None else conversation.current_leaf_id
    if leaf_id is None:
        return []
    # Every branch's messages (the sibling arrows need them), without the per-token JSON nobody reads here.
    messages = list(
        Message.objects.filter(conversation=conversation)
        .select_related("assistant_version")
        .defer("tokens")
        .order_by("created_at")
    )
    by_id = {m.pk: m for m in messages}
    children: dict = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m)
    entries, node = [], by_id.get(leaf_id)
    while node is not None:
        siblings = children[node.parent_id]
        entries.append(ThreadEntry(node, siblings.index(node) + 1, siblings))
        node = by_id.get(node.parent_id)
    entries.reverse()
    return entries


def message_ancestors(*, message: Message) -> list[Message]:
    """The branch from the conversation's first message down to `message`, in order."""
    return [entry.message for entry in conversation_thread(conversation=message.conversation, leaf=message)]


def conversation_list(*, user=None, session_key: str = "", query: str = "") -> QuerySet[Conversation]:
    """A person's conversations, newest first, searched in titles and message text."""
    if user is not None and user.is_authenticated:
        conversations = Conversation.objects.filter(owner=user)
    elif session_key:
        conversations = Conversation.objects.filter(owner__isnull=True, session_key=session_key)
    else:
        return Conversation.objects.none()
    if query.strip():
        matching = Message.objects.filter(content__icontains=query.strip()).values("conversation_id")
        conversations = conversations.filter(Q(title__icontains=query.strip()) | Q(pk__in=matching))
    return conversations.select_related("assistant__current_version")


def can_open(*, user, session_key: str, conversation: Conversation) -> bool:
    """The conversation's owner (or, for an anonymous one, its browser session) may open it, as long as
    they may still chat with the assistant: a conversation started through a share link ends with it."""
    if conversation.owner_id is not None:
        mine = user.is_authenticated and conversation.owner_id == user.pk
    else:
        mine = bool(session_key) and conversation.session_key == session_key
    if not mine:
        return False
    assistant = conversation.assistant
    return can_chat(user=user, assistant=assistant) or share_link_valid(
        assistant=assistant, token=conversation.share_token
    )


def conversation_get_for_viewer(*, conversation_id, user, session_key: str) -> Conversation | None:
    conversation = (
        Conversation.objects.select_related("assistant__current_version", "assistant__owner")
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None or not can_open(user=user, session_key=session_key, conversation=conversation):
        return None
    return conversation


def message_get_for_viewer(*, message_id, user, session_key: str) -> Message | None:
    message = Message.objects.select_related("conversation__assistant").filter(pk=message_id).first()
    if message is None or not can_open(user=user, session_key=session_key, conversation=message.conversation):
        return None
    return message


def conversation_get_by_snapshot(*, token: str) -> Conversation | None:
    if not token:
        return None
    return (
        Conversation.objects.select_related("assistant__current_version", "snapshot_leaf")
        .filter(snapshot_token=token)
        .first()
    )


def message_get_in_snapshot(*, token: str, message_id) -> Message | None:
    """A message the holder of a snapshot link may read: one on the shared branch (the snapshot's leaf and
    its ancestors), not a later turn or another branch of the same conversation."""
    conversation = conversation_get_by_snapshot(token=token)
    if conversation is None or conversation.snapshot_leaf is None:
        return None
    branch = message_ancestors(message=conversation.snapshot_leaf)
    return next((message for message in branch if str(message.pk) == str(message_id)), None)


def conversation_export_markdown(*, conversation: Conversation) -> str:
    """The branch on screen as Markdown, for download."""
    assistant = conversation.assistant.name
    lines = [f"# {conversation.title or 'Conversation'}", "", f"With **{assistant}**, exported from Atelier.", ""]
    for entry in conversation_thread(conversation=conversation):
        who = "You" if entry.message.role == Message.Role.USER else assistant
        lines += [f"### {who}", "", entry.message.content or f"_({entry.message.get_status_display()})_", ""]
    return "\n".join(lines)


def conversation_export_json(*, conversation: Conversation) -> dict:
    """Every message, branches included, as a tree (parent ids); `current_leaf` marks the branch shown."""
    return {
        "id": str(conversation.pk),
        "title": conversation.title,
        "assistant": conversation.assistant.slug,
        "created_at": conversation.created_at.isoformat(),
        "current_leaf": str(conversation.current_leaf_id) if conversation.current_leaf_id else None,
        "messages": [
            {
                "id": str(m.pk),
                "parent": str(m.parent_id) if m.parent_id else None,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "assistant_version": m.assistant_version.number if m.assistant_version else None,
                "created_at": m.created_at.isoformat(),
            }
            for m in conversation.messages.select_related("assistant_version").order_by("created_at")
        ],
    }
