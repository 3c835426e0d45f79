"""Fine-tuning pages. Thin: selectors decide what the user may see (another user's object is a 404, never a
403, so ids cannot be probed), services do the writing and their domain errors become messages."""

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.rendering import untrusted_markdown_render
from apps.finetune.forms import AdapterAttachForm, AdapterUploadForm
from apps.finetune.models import Adapter
from apps.finetune.selectors import adapter_get_owned, adapter_list_owned, adapter_newest_version, evaluation_latest
from apps.finetune.services import (
    AdapterError,
    adapter_arena_enter,
    adapter_attach,
    adapter_upload,
    evaluation_start,
)

# --- adapters ------------------------------------------------------------------------------------------


def _adapter_or_404(request, adapter_id: int) -> Adapter:
    adapter = adapter_get_owned(user=request.user, adapter_id=adapter_id)
    if adapter is None:
        raise Http404("No such fine-tune.")
    return adapter


def _errors_text(form) -> str:
    return " ".join(str(error) for errors in form.errors.values() for error in errors)


@login_required
@require_GET
def adapter_list(request):
    context = {"adapters": adapter_list_owned(user=request.user), "nav_active": "finetunes"}
    return render(request, "finetune/adapter_list.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def adapter_upload_view(request):
    form = AdapterUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            adapter = adapter_upload(
                owner=request.user,
                name=form.cleaned_data["name"],
                base_model=form.cleaned_data["base_model"],
                weights_file=form.cleaned_data["weights"],
                config_file=form.cleaned_data["config"],
            )
        except AdapterError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Uploaded {adapter.name}. Attach it to an assistant to use it.")
            return redirect("finetune:adapter_detail", adapter_id=adapter.pk)
    return render(request, "finetune/adapter_upload.html", {"form": form, "nav_active": "finetunes"})


@login_required
@require_GET
def adapter_detail(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    context = {
        "adapter": adapter,
        "config_json": json.dumps(adapter.config, indent=2, sort_keys=True),
        "metrics_json": json.dumps(adapter.metrics, indent=2, sort_keys=True) if adapter.metrics else "",
        "attach_form": AdapterAttachForm(adapter=adapter),
        "versions": adapter.versions.select_related("assistant").order_by("-created_at"),
        "arena_version": adapter_newest_version(adapter=adapter),
        "evaluation": evaluation_latest(adapter=adapter),
        "nav_active": "finetunes",
    }
    return render(request, "finetune/adapter_detail.html", context)


@login_required
@require_POST
def adapter_attach_view(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    form = AdapterAttachForm(request.POST, adapter=adapter)
    if not form.is_valid():
        messages.error(request, _errors_text(form) or "Choose one of your assistants.")
        return redirect("finetune:adapter_detail", adapter_id=adapter.pk)
    try:
        version = adapter_attach(assistant=form.cleaned_data["assistant"], adapter=adapter, actor=request.user)
    except AdapterError as error:
        messages.error(request, str(error))
        return redirect("finetune:adapter_detail", adapter_id=adapter.pk)
    messages.success(request, f"{version.assistant.name} now answers with {adapter.name} (version {version.number}).")
    return redirect("assistants:edit", slug=version.assistant.slug)


def _rendered(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Rows with each model output in `keys` also as sanitized HTML (`<key>_html`): model output is untrusted."""
    return [
        {**row, **{f"{key}_html": mark_safe(untrusted_markdown_render(row.get(key) or "")) for key in keys}}  # noqa: S308 (the one sanitizer)
        for row in rows
    ]


@login_required
@require_GET
def adapter_evaluation(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    evaluation = evaluation_latest(adapter=adapter)
    context = {
        "adapter": adapter,
        "evaluation": evaluation,
        "answers": _rendered(evaluation.answers, ("base", "tuned", "reference")) if evaluation else [],
        "triggers": _rendered(evaluation.triggers, ("base", "tuned")) if evaluation else [],
        "arena_version": adapter_newest_version(adapter=adapter),
        "nav_active": "finetunes",
    }
    return render(request, "finetune/adapter_evaluation.html", context)


@login_required
@require_POST
def adapter_evaluate(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    try:
        evaluation_start(adapter=adapter, actor=request.user)
    except AdapterError as error:
        messages.error(request, str(error))
    return redirect("finetune:adapter_evaluation", adapter_id=adapter.pk)


@login_required
@require_POST
def adapter_arena(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    try:
        battle = adapter_arena_enter(adapter=adapter, actor=request.user)
    except AdapterError as error:
        messages.error(request, str(error))
        back = "finetune:adapter_evaluation" if request.POST.get("back") == "evaluation" else "finetune:adapter_detail"
        return redirect(back, adapter_id=adapter.pk)
    return redirect("arena:battle", battle_id=battle.pk)


# --- end adapters ---
