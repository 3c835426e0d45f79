"""Chat pages. Every view resolves its conversation or message through a selector that checks the viewer
(signed-in owner, or the browser session of an anonymous share-link visitor); anything else is a 404,
so ids cannot be probed."""

import json
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.utils.text import slugify
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.assistants.models import Assistant
from apps.assistants.selectors import assistant_get_by_share_token, can_chat, can_edit
from apps.chat import services
from apps.chat.live import reply_events_follow
from apps.chat.models import Conversation, Message
from apps.chat.ratelimit import anonymous_message_allow
from apps.chat.rendering import answer_done_event
from apps.chat.selectors import (
    conversation_export_json,
    conversation_export_markdown,
    conversation_get_by_snapshot,
    conversation_get_for_viewer,
    conversation_list,
    conversation_thread,
    message_get_for_viewer,
)
from apps.core.inference_client import InferenceError, inference_complete, inference_tokenize
from apps.core.rendering import untrusted_markdown_render
from apps.core.sse import sse_event, sse_response
from apps.finetune.selectors import curation_datasets
from apps.registry.selectors import base_model_get_ready

T = TypeVar("T")


def _session_key(request, *, create: bool = False) -> str:
    if create and not request.session.session_key:
        request.session.save()
    return request.session.session_key or ""


def _conversation_or_404(request, conversation_id) -> Conversation:
    conversation = conversation_get_for_viewer(
        conversation_id=conversation_id, user=request.user, session_key=_session_key(request)
    )
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def _message_or_404(request, message_id) -> Message:
    message = message_get_for_viewer(message_id=message_id, user=request.user, session_key=_session_key(request))
    if message is None:
        raise Http404("No such message.")
    return message


def _rendered(entries) -> list:
    for entry in entries:
        message = entry.message
        if message.role == Message.Role.ASSISTANT and message.finished:
            message.html = mark_safe(untrusted_markdown_render(message.content))  # noqa: S308 (sanitized)
    return entries


def _client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


# --- conversations -----------------------------------------------------------------------------------


@login_required
def conversation_list_view(request):
    query = request.GET.get("q", "")
    conversations = conversation_list(user=request.user, query=query)[:200]
    return render(request, "chat/list.html", {"conversations": conversations, "query": query, "nav_active": "chats"})


@require_http_methods(["GET", "POST"])
def conversation_start(request, slug: str):
    """A new chat with an assistant the signed-in user may use (their own, or a listed public one)."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    assistant = Assistant.objects.select_related("current_version").filter(slug=slug).first()
    if assistant is None or not can_chat(user=request.user, assistant=assistant):
        raise Http404("No such assistant.")
    return _start(request, assistant=assistant, share_token="")


@require_http_methods(["GET", "POST"])
def share_start(request, token: str):
    """The share link: anyone holding it may chat, signed in or (if the site allows) anonymously."""
    assistant = assistant_get_by_share_token(token=token)
    if assistant is None:
        raise Http404("This share link is not valid: it was revoked, it expired, or it never existed.")
    if not request.user.is_authenticated and not settings.ATELIER_ANONYMOUS_SHARING:
        return redirect_to_login(request.get_full_path())
    return _start(request, assistant=assistant, share_token=token)


def _start(request, *, assistant: Assistant, share_token: str):
    content = request.POST.get("content", "") if request.method == "POST" else ""
    if request.method == "POST":
        conversation = _queue_answer(
            request,
            lambda: services.conversation_start(
                assistant=assistant,
                owner=request.user if request.user.is_authenticated else None,
                session_key="" if request.user.is_authenticated else _session_key(request, create=True),
                share_token=share_token,
                first_message=content,
            ),
        )
        if conversation is not None:
            return redirect("chat:conversation", conversation.pk)
    # Signed in: their conversations with it; a visitor through a share link: this browser's.
    visitor_conversations = conversation_list(user=request.user, session_key=_session_key(request))
    context = {
        "assistant": assistant,
        "version": assistant.current_version,
        "share_token": share_token,
        "draft": content,
        "conversations": visitor_conversations.filter(assistant=assistant)[:20],
        "is_owner": can_edit(user=request.user, assistant=assistant),
        "nav_active": "chats",
    }
    return render(request, "chat/start.html", context)


@never_cache
@require_GET
def conversation_detail(request, conversation_id):
    conversation = _conversation_or_404(request, conversation_id)
    thread = _rendered(conversation_thread(conversation=conversation))
    last_answer = next((e.message for e in reversed(thread) if e.message.role == Message.Role.ASSISTANT), None)
    context = {
        "conversation": conversation,
        "assistant": conversation.assistant,
        "thread": thread,
        "busy": bool(last_answer and not last_answer.finished),
        "draft": request.session.pop("chat_draft", ""),
        "recent": conversation_list(user=request.user, session_key=_session_key(request))[:30],
        "gauge": _gauge(last_answer.context if last_answer else {}),
        "snapshot_url": request.build_absolute_uri(reverse("chat:snapshot", args=[conversation.snapshot_token]))
        if conversation.snapshot_token
        else "",
        # The owner may add an answer (or their edit of it) to a fine-tuning dataset: these name their datasets.
        "curate": curation_datasets(user=request.user)
        if request.user.is_authenticated and conversation.owner_id == request.user.pk
        else None,
        "nav_active": "chats",
    }
    return render(request, "chat/conversation.html", context)


GAUGE_PARTS = (
    ("system", "Instructions"),
    ("knowledge", "Knowledge"),
    ("history", "Conversation"),
    ("reserved", "Room for the answer"),
)


def _gauge(report: dict) -> dict:
    """Shares of the context window, for the gauge under the chat. Without a report yet (no answer has
    been budgeted) it is empty and hidden; chat.js fills it live from the answer's `context` event."""
    window = report.get("window") or 0
    segments, offset = [], 0.0
    for kind, label in GAUGE_PARTS:
        tokens = report.get(kind, 0)
        percent = round(100 * tokens / window, 2) if window else 0
        segments.append({"kind": kind, "label": label, "tokens": tokens, "percent": percent, "offset": offset})
        offset += percent
    return {"window": window, "segments": segments, "dropped": report.get("turns_dropped", 0)}


def _queue_answer(request, write: Callable[[], T]) -> T | None:
    """Run a write that queues an answer, counting an anonymous visitor's message against their limit
    first. A refusal becomes a message on the page and None."""
    try:
        if not request.user.is_authenticated:
            anonymous_message_allow(ip=_client_ip(request))
        return write()
    except services.ChatError as error:
        messages.error(request, str(error))
        return None


@require_POST
def message_send(request, conversation_id):
    conversation = _conversation_or_404(request, conversation_id)
    content = request.POST.get("content", "")
    if _queue_answer(request, lambda: services.message_send(conversation=conversation, content=content)) is None:
        request.session["chat_draft"] = content  # the words are never lost
    return redirect("chat:conversation", conversation.pk)


@require_POST
def message_edit(request, message_id):
    message = _message_or_404(request, message_id)
    content = request.POST.get("content", "")
    _queue_answer(request, lambda: services.message_edit(message=message, content=content))
    return redirect("chat:conversation", message.conversation_id)


@require_POST
def message_regenerate(request, message_id):
    message = _message_or_404(request, message_id)
    _queue_answer(request, lambda: services.reply_regenerate(message=message))
    return redirect("chat:conversation", message.conversation_id)


@require_POST
def message_stop(request, message_id):
    message = _message_or_404(request, message_id)
    try:
        services.reply_stop(message=message)
    except services.ChatError as error:
        return JsonResponse({"error": str(error)}, status=400)
    if request.headers.get("Accept") == "application/json":
        return JsonResponse({"stopping": True})
    return redirect("chat:conversation", message.conversation_id)


@require_POST
def branch_switch(request, message_id):
    message = _message_or_404(request, message_id)
    services.conversation_switch_branch(conversation=message.conversation, message=message)
    return redirect("chat:conversation", message.conversation_id)


@require_GET
def message_tokens(request, message_id):
    """The answer's tokens with their probabilities and top alternatives, for the token inspector."""
    message = _message_or_404(request, message_id)
    return JsonResponse({"id": str(message.pk), "status": message.status, "tokens": message.tokens})


@require_POST
def conversation_rename(request, conversation_id):
    conversation = _conversation_or_404(request, conversation_id)
    try:
        services.conversation_rename(conversation=conversation, title=request.POST.get("title", ""))
    except services.ChatError as error:
        messages.error(request, str(error))
    return redirect("chat:conversation", conversation.pk)


@require_POST
def conversation_delete(request, conversation_id):
    conversation = _conversation_or_404(request, conversation_id)
    services.conversation_delete(conversation=conversation)
    messages.success(request, "Conversation deleted.")
    return redirect("chat:list" if request.user.is_authenticated else "dashboard")


@require_POST
def conversation_snapshot(request, conversation_id):
    conversation = _conversation_or_404(request, conversation_id)
    if request.POST.get("action") == "revoke":
        services.conversation_snapshot_revoke(conversation=conversation)
        messages.success(request, "The snapshot link no longer works.")
    else:
        services.conversation_snapshot_share(conversation=conversation)
        messages.success(request, "Snapshot link ready: it shows the conversation as it is now, read-only.")
    return redirect("chat:conversation", conversation.pk)


@require_GET
def conversation_export(request, conversation_id, fmt: str):
    if fmt not in ("md", "json"):
        raise Http404("Exports are .md or .json.")
    conversation = _conversation_or_404(request, conversation_id)
    name = slugify(conversation.title) or "conversation"
    if fmt == "json":
        body = json.dumps(conversation_export_json(conversation=conversation), indent=2, ensure_ascii=False)
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
    else:
        body = conversation_export_markdown(conversation=conversation)
        response = HttpResponse(body, content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response


@require_GET
def snapshot(request, token: str):
    """A read-only conversation snapshot: the branch as it was when shared, no instructions."""
    conversation = conversation_get_by_snapshot(token=token)
    if conversation is None or conversation.snapshot_leaf is None:
        raise Http404("This snapshot link is not valid.")
    thread = _rendered(conversation_thread(conversation=conversation, leaf=conversation.snapshot_leaf))
    context = {"conversation": conversation, "assistant": conversation.assistant, "thread": thread}
    return render(request, "chat/snapshot.html", context)


# --- live answers --------------------------------------------------------------------------------------


async def message_events(request, message_id):
    """Server-sent events for one answer: every token from the start, then `done` with the sanitized HTML.

    The answer is generated by a worker, not by this request: closing the tab loses nothing, and a
    reload (or another device) replays the tokens so far and follows the rest.
    """
    message = await sync_to_async(_message_or_404)(request, message_id)

    async def events():
        if message.finished:
            yield sse_event(answer_done_event(message), event="done")
            return
        async for event, data in reply_events_follow(message_id=message.pk):
            if event == "idle":  # quiet: was it stopped in the queue, or did its stream expire?
                current = await Message.objects.aget(pk=message.pk)
                if current.finished:
                    yield sse_event(answer_done_event(current), event="done")
                    return
                yield ": waiting\n\n"
                continue
            yield sse_event(data, event=event)
            if event == "done":
                return

    return sse_response(events())


# --- the playground ------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def playground(request):
    """Tokenize any text, and continue raw text with the base model (the "document simulator")."""
    model = base_model_get_ready(kind="chat")
    context = {"nav_active": "playground", "text": "", "prompt": "", "max_tokens": 64, "temperature": 0.8}
    if request.method == "POST" and model is not None:
        action = request.POST.get("action")
        try:
            if action == "tokenize":
                context["text"] = request.POST.get("text", "")[:20_000]
                result = inference_tokenize(model=model.name, prompt=context["text"])
                context["tokens"] = list(zip(result["tokens"], result["token_strs"], strict=True))
                context["token_count"] = result["count"]
            elif action == "complete":
                context["prompt"] = request.POST.get("prompt", "")[:20_000]
                context["max_tokens"] = max(1, min(int(request.POST.get("max_tokens") or 64), 512))
                context["temperature"] = max(0.0, min(float(request.POST.get("temperature") or 0.8), 2.0))
                result = inference_complete(
                    body={
                        "model": model.name,
                        "prompt": context["prompt"],
                        "max_tokens": context["max_tokens"],
                        "temperature": context["temperature"],
                    }
                )
                context["completion"] = result["choices"][0]["text"]
                context["usage"] = result["usage"]
        except ValueError:
            messages.error(request, "Max tokens and temperature must be numbers.")
        except InferenceError as error:
            messages.error(request, str(error))
    context["model"] = model
    return render(request, "chat/playground.html", context)
