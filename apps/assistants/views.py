"""The assistant builder: list, create, edit (beside a live preview), avatar, share link, delete, gallery, report.

Every view that takes a slug checks the object permission itself, and answers 404 (never 403) for an
assistant the user may not see, so addresses cannot be probed.
"""

from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.assistants.engine import EngineRequest, PreviewError, preview_request_build
from apps.assistants.forms import AssistantForm, AvatarForm, ReportForm, ShareIssueForm
from apps.assistants.models import Assistant
from apps.assistants.selectors import (
    assistant_list_owned,
    can_chat,
    canary_incident_list,
    gallery_list,
    share_link_valid,
)
from apps.assistants.services import (
    AssistantError,
    assistant_avatar_set,
    assistant_create,
    assistant_delete,
    assistant_report,
    assistant_update,
    share_link_issue,
    share_link_revoke,
)
from apps.core.inference_client import InferenceError, inference_chat_stream_async, stream_deltas_async
from apps.core.sse import sse_event, sse_response

VERSION_HISTORY_SHOWN = 50


def _owned_or_404(request, slug: str) -> Assistant:
    """The signed-in user's own assistant; anyone else's (private or not) is a 404."""
    return get_object_or_404(assistant_list_owned(user=request.user), slug=slug)


def _share_url(request, token: str) -> str:
    return request.build_absolute_uri(reverse("chat:share", args=[token]))


def _errors_text(form) -> str:
    return " ".join(str(error) for errors in form.errors.values() for error in errors)


@login_required
@require_GET
def assistant_list(request):
    context = {"assistants": assistant_list_owned(user=request.user), "nav_active": "assistants"}
    return render(request, "assistants/list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def assistant_create_view(request):
    form = AssistantForm(request.POST or None, owner=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            assistant = assistant_create(
                owner=request.user,
                config=form.config(),
                visibility=form.cleaned_data["visibility"],
                slug=form.cleaned_data["slug"],
            )
        except AssistantError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, "Saved version 1.")
            return redirect("assistants:edit", slug=assistant.slug)
    return render(request, "assistants/form.html", {"form": form, "nav_active": "assistants"})


@login_required
@require_http_methods(["GET", "POST"])
def assistant_edit(request, slug: str):
    assistant = _owned_or_404(request, slug)
    if request.method == "POST":
        form = AssistantForm(request.POST, owner=request.user, assistant=assistant)
        if form.is_valid():
            try:
                version = assistant_update(
                    assistant=assistant,
                    actor=request.user,
                    config=form.config(),
                    visibility=form.cleaned_data["visibility"],
                )
            except AssistantError as error:
                form.add_error(None, str(error))
            else:
                messages.success(request, f"Saved version {version.number}.")
                return redirect("assistants:edit", slug=assistant.slug)
    else:
        form = AssistantForm(initial=AssistantForm.initial_for(assistant), owner=request.user, assistant=assistant)
    context = {
        "assistant": assistant,
        "form": form,
        "avatar_form": AvatarForm(),
        "share_form": ShareIssueForm(),
        "share_url": _share_url(request, assistant.share_token) if assistant.share_token else "",
        "share_active": share_link_valid(assistant=assistant, token=assistant.share_token or ""),
        "versions": assistant.versions.select_related("base_model", "adapter")[:VERSION_HISTORY_SHOWN],
        "chat_url": reverse("chat:start", args=[assistant.slug]),
        "canary_incidents": canary_incident_list(assistant=assistant),
        "nav_active": "assistants",
    }
    return render(request, "assistants/form.html", context)


@login_required
@require_POST
def assistant_avatar(request, slug: str):
    assistant = _owned_or_404(request, slug)
    form = AvatarForm(request.POST, request.FILES)
    if not form.is_valid():
        messages.error(request, _errors_text(form) or "Choose an image to upload.")
    else:
        try:
            assistant_avatar_set(assistant=assistant, upload=form.cleaned_data["avatar"])
        except AssistantError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, "Avatar updated.")
    return redirect("assistants:edit", slug=assistant.slug)


@require_GET
def assistant_avatar_image(request, slug: str):
    """For whoever may see the assistant: its owner, anyone signed in for a listed public one, or the
    holder of a valid share link (`?share=`; anonymously too where the share page allows visitors)."""
    token = request.GET.get("share", "")
    if not request.user.is_authenticated and not (token and settings.ATELIER_ANONYMOUS_SHARING):
        return redirect_to_login(request.get_full_path())
    assistant = get_object_or_404(Assistant, slug=slug)
    visible = can_chat(user=request.user, assistant=assistant) or (
        bool(token) and share_link_valid(assistant=assistant, token=token)
    )
    if not visible or not assistant.avatar:
        raise Http404("No avatar.")
    media_root = Path(settings.MEDIA_ROOT).resolve()
    path = (media_root / assistant.avatar).resolve()
    if not path.is_relative_to(media_root) or not path.is_file():
        raise Http404("No avatar.")
    response = FileResponse(path.open("rb"), content_type="image/png")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    response["Cache-Control"] = "private, max-age=300"
    return response


@login_required
@require_POST
def share_issue(request, slug: str):
    assistant = _owned_or_404(request, slug)
    form = ShareIssueForm(request.POST)
    if not form.is_valid():
        messages.error(request, _errors_text(form))
        return redirect("assistants:edit", slug=assistant.slug)
    try:
        share_link_issue(assistant=assistant, expires_at=form.expiry())
    except AssistantError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, "Issued a new share link. The previous link no longer works.")
    return redirect("assistants:edit", slug=assistant.slug)


@login_required
@require_POST
def share_revoke(request, slug: str):
    assistant = _owned_or_404(request, slug)
    share_link_revoke(assistant=assistant)
    messages.success(request, "Share link revoked. Nobody can open the assistant through it any more.")
    return redirect("assistants:edit", slug=assistant.slug)


@login_required
@require_http_methods(["GET", "POST"])
def assistant_delete_view(request, slug: str):
    assistant = _owned_or_404(request, slug)
    if request.method == "POST":
        name = assistant.name
        try:
            assistant_delete(assistant=assistant)
        except AssistantError as error:
            messages.error(request, str(error))
            return redirect("assistants:edit", slug=assistant.slug)
        messages.success(request, f"Deleted {name}.")
        return redirect("assistants:list")
    return render(request, "assistants/delete.html", {"assistant": assistant, "nav_active": "assistants"})


@login_required
@require_GET
def gallery(request):
    query = request.GET.get("q", "").strip()[:200]
    context = {
        "assistants": gallery_list(query=query),
        "query": query,
        "nav_active": "gallery",
    }
    return render(request, "assistants/gallery.html", context)


@login_required
@require_POST
def assistant_report_view(request, slug: str):
    assistant = get_object_or_404(gallery_list(), slug=slug)
    form = ReportForm(request.POST)
    if not form.is_valid():
        messages.error(request, _errors_text(form) or "Say what is wrong with this assistant.")
    else:
        try:
            assistant_report(assistant=assistant, reporter=request.user, reason=form.cleaned_data["reason"])
        except AssistantError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"Thank you. An admin will review {assistant.name}.")
    return redirect("assistants:gallery")


# Live preview: the edit form's current (unsaved) values, streamed from the inference server as SSE.


def _preview_request(*, request, user, slug: str) -> EngineRequest:
    """Sync: it reads the database and counts tokens."""
    assistant = get_object_or_404(assistant_list_owned(user=user), slug=slug)
    form = AssistantForm(request.POST, owner=user, assistant=assistant)
    if not form.is_valid():
        raise PreviewError("Fix the form first: " + _errors_text(form))
    return preview_request_build(
        config=form.config(), conversation=request.POST.get("conversation", ""), user_name=user.get_username()
    )


def _preview_error(error: InferenceError, model: str) -> str:
    if error.code == "context_length_exceeded":
        return (
            "The preview no longer fits in the model's context window. Clear the preview conversation "
            "(or shorten the instructions) and try again."
        )
    if error.code == "model_not_found":
        return f"The inference server has no model or fine-tune called {model!r} loaded right now."
    return str(error)


async def _preview_events(body: dict):
    try:
        chunks = await inference_chat_stream_async(body=body)
    except InferenceError as error:
        yield sse_event({"message": _preview_error(error, body["model"])}, event="error")
        return
    finish_reason = ""
    try:
        async for delta in stream_deltas_async(chunks):
            if delta.text:
                yield sse_event({"text": delta.text})
            finish_reason = delta.finish_reason or finish_reason
    except InferenceError as error:
        yield sse_event({"message": _preview_error(error, body["model"])}, event="error")
        return
    finally:
        await chunks.aclose()  # a closed preview tab closes the engine request, which cancels it
    yield sse_event({"finish_reason": finish_reason}, event="done")


@login_required
@require_POST
@never_cache
async def assistant_preview(request, slug: str):
    """Owner only. The conversation is not saved anywhere."""
    user = await request.auser()
    try:
        engine_request = await sync_to_async(_preview_request)(request=request, user=user, slug=slug)
    except PreviewError as error:
        return JsonResponse({"error": str(error)}, status=400)
    except InferenceError as error:  # the engine could not count the preview's tokens
        return JsonResponse({"error": str(error)}, status=503)
    return sse_response(_preview_events(engine_request.body))
