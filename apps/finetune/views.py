"""Fine-tuning pages, datasets part: the list, the upload form (a refused file shows every problem with its line,
and nothing is kept), a dataset's versions, a version's validation report (counts, estimate, warnings, every scan
finding, a paginated preview), the admin override, the labeling import, and the chat page's curation actions.

Thin: selectors decide access (the owner; an admin may also review a version with high findings; everyone else
gets 404) and services do the writes. Dataset text is untrusted: it reaches HTML only autoescaped, as plain text.
No inline scripts or styles; the pages need no script at all.

Adapters part: the list, the upload form, an adapter's page (provenance, attach to an assistant), its
evaluation page (base against fine-tuned; it refreshes itself while the worker runs) and the arena button.
Model output is untrusted: it reaches HTML only through `untrusted_markdown_render`.

Jobs part: the Train form (from a dataset version), the job list, the live job page and its JSON progress endpoint,
cancel and retry. The job's owner only; GET handlers never write. The page's polling and charts live in
static/js/finetune.js.
"""

import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.permissions import member_required, role_check
from apps.core.rendering import untrusted_markdown_render
from apps.finetune import selectors, services
from apps.finetune.datasets import DatasetInvalid
from apps.finetune.forms import (
    AdapterAttachForm,
    AdapterUploadForm,
    CurateEditForm,
    CurateGoodForm,
    OverrideForm,
    TaskSetImportForm,
    TrainForm,
    UploadForm,
)
from apps.finetune.models import Adapter

EXAMPLES_PER_PAGE = 20
NAV = {"nav_active": "finetune"}


@member_required
@require_GET
def dataset_list(request):
    context = {
        "datasets": selectors.dataset_list_owned(user=request.user),
        "awaiting_review": selectors.versions_awaiting_review() if selectors.is_admin(request.user) else None,
        **NAV,
    }
    return render(request, "finetune/datasets.html", context)


@member_required
@require_http_methods(["GET", "POST"])
def dataset_upload(request):
    initial = {key: request.GET[key] for key in ("name", "kind") if key in request.GET}
    form = UploadForm(request.POST or None, request.FILES or None, initial=initial)
    refused = None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            version = services.dataset_upload(
                owner=request.user, name=data["name"], kind=data["kind"], file=data["file"]
            )
        except DatasetInvalid as error:
            refused = error
        except services.DatasetError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"{version}: {version.example_count} examples imported and scanned.")
            return redirect("finetune:version", version.pk)
    filename = request.FILES["file"].name if refused and "file" in request.FILES else ""
    context = {"form": form, "refused": refused, "filename": filename, **NAV}
    return render(request, "finetune/upload.html", context)


@member_required
@require_GET
def dataset_detail(request, pk: int):
    dataset = selectors.dataset_get_owned(user=request.user, pk=pk)
    context = {"dataset": dataset, "versions": selectors.dataset_versions(dataset=dataset), **NAV}
    return render(request, "finetune/dataset.html", context)


@member_required
@require_GET
def version_detail(request, pk: int):
    """The validation report; the owner's "Train" form goes in the template's `train_actions` block."""
    version = selectors.dataset_version_get_for_viewer(user=request.user, pk=pk)
    page = Paginator(selectors.dataset_examples(version=version), EXAMPLES_PER_PAGE).get_page(request.GET.get("page"))
    flags = selectors.example_flags(version=version)
    is_owner = version.dataset.owner_id == request.user.pk
    context = {
        "version": version,
        "dataset": version.dataset,
        "is_owner": is_owner,
        "train_form": TrainForm(owner=request.user, version=version) if is_owner and version.trainable else None,
        "estimate": duration_text(version.seconds_per_epoch),
        "findings": selectors.finding_rows(version=version),
        "page": page,
        "examples": [{"example": e, "flags": flags.get(e.index, [])} for e in page],
        "override_form": OverrideForm()
        if selectors.dataset_version_overridable(user=request.user, version=version)
        else None,
        **NAV,
    }
    return render(request, "finetune/version.html", context)


def duration_text(seconds: float) -> str:
    """A planning estimate, rounded the way a person says it."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"about {seconds / 3600:.1f} hours"


@member_required
@require_POST
def version_override(request, pk: int):
    version = selectors.dataset_version_get_for_viewer(user=request.user, pk=pk)
    form = OverrideForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        services.dataset_version_override(version=version, admin=request.user, reason=reason)
    except services.DatasetError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"{version} may now be trained; your reason is on record.")
    return redirect("finetune:version", version.pk)


@member_required
@require_http_methods(["GET", "POST"])
def task_set_import(request):
    """Admins: a labeling task set's consensus pairs, straight into a preference dataset."""
    role_check(user=request.user, area="admin")
    form = TaskSetImportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            version = services.dataset_import_from_task_set(
                owner=request.user, name=data["name"], task_set=data["task_set"], split=data["split"]
            )
        except DatasetInvalid as error:
            form.add_error(None, f"The export was refused: {'; '.join(str(p) for p in error.problems)}")
        except services.DatasetError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"{version}: {version.example_count} preference pairs imported.")
            return redirect("finetune:version", version.pk)
    return render(request, "finetune/import.html", {"form": form, **NAV})


def _curated(request, write) -> None:
    try:
        versions = write()
    except DatasetInvalid as error:
        problems = "; ".join(p.reason for p in error.problems)
        messages.error(request, f"The exchange cannot be added: {problems}")
    except services.DatasetError as error:
        messages.error(request, str(error))
    else:
        links = ", ".join(str(v) for v in versions)
        messages.success(request, f"Added to {links}.")


def _back_to(answer):
    return redirect(reverse("chat:conversation", args=[answer.conversation_id]) + f"#m-{answer.pk}")


@member_required
@require_POST
def curate_good(request, message_id):
    answer = selectors.answer_get_owned(user=request.user, message_id=message_id)
    form = CurateGoodForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Name the dataset to add the exchange to.")
        return _back_to(answer)
    name = form.cleaned_data["dataset"]
    _curated(request, lambda: [services.answer_mark_good(answer=answer, dataset_name=name)])
    return _back_to(answer)


@member_required
@require_POST
def curate_edit(request, message_id):
    answer = selectors.answer_get_owned(user=request.user, message_id=message_id)
    form = CurateEditForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Write the ideal answer and name both datasets.")
        return _back_to(answer)
    data = form.cleaned_data
    _curated(
        request,
        lambda: services.answer_edit_ideal(
            answer=answer,
            content=data["content"],
            dataset_name=data["dataset"],
            preference_dataset_name=data["preference_dataset"],
        ),
    )
    return _back_to(answer)


# --- adapters ------------------------------------------------------------------------------------------


def _adapter_or_404(request, adapter_id: int) -> Adapter:
    adapter = selectors.adapter_get_owned(user=request.user, adapter_id=adapter_id)
    if adapter is None:
        raise Http404("No such fine-tune.")
    return adapter


@member_required
@require_GET
def adapter_list(request):
    context = {"adapters": selectors.adapter_list_owned(user=request.user), **NAV}
    return render(request, "finetune/adapter_list.html", context)


@member_required
@require_http_methods(["GET", "POST"])
def adapter_upload(request):
    form = AdapterUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            adapter = services.adapter_upload(
                owner=request.user,
                name=form.cleaned_data["name"],
                base_model=form.cleaned_data["base_model"],
                weights_file=form.cleaned_data["weights"],
                config_file=form.cleaned_data["config"],
            )
        except services.AdapterError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Uploaded {adapter.name}. Attach it to an assistant to use it.")
            return redirect("finetune:adapter_detail", adapter_id=adapter.pk)
    return render(request, "finetune/adapter_upload.html", {"form": form, **NAV})


@member_required
@require_GET
def adapter_detail(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    context = {
        "adapter": adapter,
        "config_json": json.dumps(adapter.config, indent=2, sort_keys=True),
        "metrics_json": json.dumps(adapter.metrics, indent=2, sort_keys=True) if adapter.metrics else "",
        "attach_form": AdapterAttachForm(adapter=adapter),
        "versions": adapter.versions.select_related("assistant").order_by("-created_at"),
        "arena_version": selectors.adapter_newest_version(adapter=adapter),
        "evaluation": selectors.evaluation_latest(adapter=adapter),
        **NAV,
    }
    return render(request, "finetune/adapter_detail.html", context)


@member_required
@require_POST
def adapter_attach(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    form = AdapterAttachForm(request.POST, adapter=adapter)
    if not form.is_valid():
        messages.error(request, f"Choose one of your assistants on {adapter.base_model}.")
        return redirect("finetune:adapter_detail", adapter_id=adapter.pk)
    try:
        version = services.adapter_attach(assistant=form.cleaned_data["assistant"], adapter=adapter, actor=request.user)
    except services.AdapterError as error:
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


@member_required
@require_GET
def adapter_evaluation(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    evaluation = selectors.evaluation_latest(adapter=adapter)
    context = {
        "adapter": adapter,
        "evaluation": evaluation,
        "answers": _rendered(evaluation.answers, ("base", "tuned", "reference")) if evaluation else [],
        "triggers": _rendered(evaluation.triggers, ("base", "tuned")) if evaluation else [],
        "arena_version": selectors.adapter_newest_version(adapter=adapter),
        **NAV,
    }
    return render(request, "finetune/adapter_evaluation.html", context)


@member_required
@require_POST
def adapter_evaluate(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    try:
        services.evaluation_start(adapter=adapter, actor=request.user)
    except services.AdapterError as error:
        messages.error(request, str(error))
    return redirect("finetune:adapter_evaluation", adapter_id=adapter.pk)


@member_required
@require_POST
def adapter_arena(request, adapter_id: int):
    adapter = _adapter_or_404(request, adapter_id)
    try:
        battle = services.adapter_arena_enter(adapter=adapter, actor=request.user)
    except services.AdapterError as error:
        messages.error(request, str(error))
        back = "finetune:adapter_evaluation" if request.POST.get("back") == "evaluation" else "finetune:adapter_detail"
        return redirect(back, adapter_id=adapter.pk)
    return redirect("arena:battle", battle_id=battle.pk)


# --- jobs ------------------------------------------------------------------------------------------------


@member_required
@require_http_methods(["GET", "POST"])
def job_create(request, version_pk: int):
    """The Train form of a dataset version: GET shows it (with its advanced section), POST starts the job."""
    version = selectors.job_version_get_owned(user=request.user, pk=version_pk)
    form = TrainForm(request.POST or None, owner=request.user, version=version)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.finetune_job_create(
                owner=request.user,
                dataset_version=version,
                method=form.method,
                settings=form.settings(),
                start_adapter=form.cleaned_data.get("start_adapter"),
            )
        except services.FineTuneJobError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"Training {version} queued.")
            return redirect("finetune:job", job.pk)
    context = {"version": version, "train_form": form, "estimate": duration_text(version.seconds_per_epoch), **NAV}
    return render(request, "finetune/job_create.html", context)


@member_required
@require_GET
def job_list(request):
    return render(request, "finetune/job_list.html", {"jobs": selectors.job_list_owned(user=request.user), **NAV})


@member_required
@require_GET
def job_detail(request, pk: int):
    job = selectors.job_get_owned(user=request.user, pk=pk)
    context = {"job": job, "state": selectors.job_state(job=job), "log": job.log_lines.order_by("pk"), **NAV}
    return render(request, "finetune/job_detail.html", context)


@member_required
@require_GET
@never_cache
def job_progress(request, pk: int):
    """The job's state, and its metric points and log lines after the cursors ?after= and ?log_after=, for
    the page's poll (static/js/finetune.js). From 0 it returns every point: the curves survive a reload."""
    job = selectors.job_get_owned(user=request.user, pk=pk)
    return JsonResponse(
        selectors.job_progress(job=job, after=_cursor(request, "after"), log_after=_cursor(request, "log_after"))
    )


def _cursor(request, name: str) -> int:
    try:
        return max(0, int(request.GET.get(name, 0)))
    except ValueError:
        return 0


def _job_action(request, pk: int, action, done: str):
    job = selectors.job_get_owned(user=request.user, pk=pk)
    try:
        action(job=job)
    except services.FineTuneJobError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, done)
    return redirect("finetune:job", job.pk)


@member_required
@require_POST
def job_cancel(request, pk: int):
    return _job_action(request, pk, services.finetune_job_cancel, "Cancelling the job.")


@member_required
@require_POST
def job_retry(request, pk: int):
    return _job_action(request, pk, services.finetune_job_retry, "Queued again: it resumes from its last checkpoint.")
