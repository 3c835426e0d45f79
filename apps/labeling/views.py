"""Views of the labeling panel. Every view checks the role on the server: the labeler area (labelers and
admins) for the queue and the ranking screen, the admin area for task sets, quality and exports. A labeler only
ever reaches a task through their own claim, so no page shows them another labeler's ranking."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.permissions import role_check
from apps.core.rendering import untrusted_markdown_render
from apps.labeling.forms import GuidelineForm, TaskSetForm, order_parse
from apps.labeling.models import Task, TaskSet
from apps.labeling.selectors import (
    EXPORT_FORMATS,
    SPLITS,
    TAU_THRESHOLD,
    claim_get,
    export_jsonl,
    labeler_queue_count,
    labeler_rankings,
    quality_chart_data,
    quality_report,
    task_set_list,
)
from apps.labeling.services import (
    LabelingError,
    PresentedOrderUnchanged,
    guideline_publish,
    labeler_exclude,
    labeler_include,
    prompts_from_chats,
    prompts_from_jsonl,
    prompts_from_typed,
    ranking_submit,
    task_claim_next,
    task_gold_set,
    task_set_cancel,
    task_set_create,
    task_set_resume,
)
from apps.labeling.tasks import candidates_generate_task


def _labeler(request) -> None:
    role_check(user=request.user, area="labeler")


def _admin(request) -> None:
    role_check(user=request.user, area="admin")


@login_required
@require_GET
def home(request):
    _labeler(request)
    now = timezone.now()
    sets = [
        (task_set, labeler_queue_count(task_set=task_set, labeler=request.user, now=now))
        for task_set in task_set_list()
    ]
    context = {"sets": sets, "nav_active": "labeling", "ranked": len(labeler_rankings(labeler=request.user))}
    return render(request, "labeling/home.html", context)


@login_required
@require_POST
def task_next(request, set_id: int):
    _labeler(request)
    task_set = get_object_or_404(TaskSet, pk=set_id, status__in=[TaskSet.Status.READY, TaskSet.Status.GENERATING])
    claim = task_claim_next(task_set=task_set, labeler=request.user)
    if claim is None:
        messages.info(request, f"Nothing left for you to rank in “{task_set.name}” right now.")
        return redirect("labeling:home")
    return redirect("labeling:task", task_id=claim.task_id)


def _task_context(request, claim, *, warn_presented: bool = False) -> dict:
    task = claim.task
    candidates = {c.index: c for c in task.candidates.all()}
    guideline = task.task_set.guidelines.order_by("-version").first()
    shown = [(position + 1, candidates[index]) for position, index in enumerate(claim.presented_order)]
    return {
        "claim": claim,
        "task": task,
        "prompt_html": untrusted_markdown_render(task.prompt),
        "candidates": [(number, c.index, untrusted_markdown_render(c.text)) for number, c in shown],
        "guideline": guideline,
        "guideline_html": untrusted_markdown_render(guideline.text) if guideline else "",
        "warn_presented": warn_presented,
        "nav_active": "labeling",
    }


@login_required
@require_http_methods(["GET", "POST"])
def task_rank(request, task_id):
    _labeler(request)
    claim = claim_get(labeler=request.user, task_id=task_id)
    if claim is None:
        raise Http404("You hold no claim on this task.")
    if request.method == "GET":
        return render(request, "labeling/task.html", _task_context(request, claim))
    not_rankable = request.POST.get("action") == "not_rankable"
    order = None if not_rankable else order_parse(request.POST.getlist("order"))
    if not not_rankable and order is None:
        return HttpResponseBadRequest("The ranking must be a list of candidate numbers.")
    try:
        ranking_submit(
            task=claim.task,
            labeler=request.user,
            order=order,
            not_rankable_reason=request.POST.get("reason", "") if not_rankable else "",
            confirm_presented=request.POST.get("confirm_presented") == "1",
        )
    except PresentedOrderUnchanged as error:
        messages.warning(request, str(error))
        return render(request, "labeling/task.html", _task_context(request, claim, warn_presented=True))
    except LabelingError as error:
        messages.error(request, str(error))
        return redirect("labeling:home")
    messages.success(request, "Ranking saved.")
    if request.POST.get("then") == "next":
        return task_next(request, claim.task.task_set_id)
    return redirect("labeling:home")


# --- admin -----------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def task_set_new(request):
    _admin(request)
    form = TaskSetForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            prompts = prompts_from_typed(text=data.get("prompts_text") or "", author_id=request.user.pk)
            if data.get("prompts_file"):
                prompts += prompts_from_jsonl(data=data["prompts_file"].read())
            if data.get("sample_chats"):
                prompts += prompts_from_chats(count=data["sample_chats"])
            with transaction.atomic():
                task_set = task_set_create(
                    name=data["name"],
                    created_by=request.user,
                    prompts=prompts,
                    versions=list(data["versions"]),
                    candidates_per_task=data["candidates_per_task"],
                    rankings_per_task=data["rankings_per_task"],
                    sampling={"temperature": data.get("temperature"), "top_p": data.get("top_p")},
                    guideline_text=data["guidelines"],
                )
                transaction.on_commit(lambda: candidates_generate_task.delay(task_set.pk))
        except LabelingError as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Created “{task_set.name}” with {len(prompts)} prompts; generating candidates.")
            return redirect("labeling:set_admin", set_id=task_set.pk)
    return render(request, "labeling/set_new.html", {"form": form, "nav_active": "labeling"})


@login_required
@require_GET
def task_set_admin(request, set_id: int):
    _admin(request)
    task_set = get_object_or_404(TaskSet, pk=set_id)
    try:
        threshold = float(request.GET.get("tau_threshold", TAU_THRESHOLD))
    except ValueError:
        threshold = TAU_THRESHOLD
    report = quality_report(task_set=task_set, tau_threshold=threshold)
    guideline = task_set.guidelines.order_by("-version").first()
    context = {
        "task_set": task_set,
        "report": report,
        "chart_data": quality_chart_data(report=report),
        "guideline": guideline,
        "guideline_html": untrusted_markdown_render(guideline.text) if guideline else "",
        "guideline_form": GuidelineForm(initial={"text": guideline.text if guideline else ""}),
        "tasks": task_set.tasks.prefetch_related("candidates").order_by("created_at", "id")[:200],
        "formats": EXPORT_FORMATS,
        "splits": SPLITS,
        "nav_active": "labeling",
    }
    return render(request, "labeling/set_admin.html", context)


@login_required
@require_GET
def task_set_progress(request, set_id: int):
    _admin(request)
    task_set = get_object_or_404(TaskSet, pk=set_id)
    return render(request, "labeling/_progress.html", {"task_set": task_set})


@login_required
@require_POST
def task_set_cancel_view(request, set_id: int):
    _admin(request)
    task_set_cancel(task_set=get_object_or_404(TaskSet, pk=set_id))
    messages.info(request, "Cancelling: the job stops after the prompt it is on.")
    return redirect("labeling:set_admin", set_id=set_id)


@login_required
@require_POST
def task_set_resume_view(request, set_id: int):
    _admin(request)
    with transaction.atomic():
        if task_set_resume(task_set=get_object_or_404(TaskSet, pk=set_id)):
            transaction.on_commit(lambda: candidates_generate_task.delay(set_id))
            messages.info(request, "Generating the remaining candidates.")
    return redirect("labeling:set_admin", set_id=set_id)


@login_required
@require_POST
def guideline_publish_view(request, set_id: int):
    _admin(request)
    task_set = get_object_or_404(TaskSet, pk=set_id)
    form = GuidelineForm(request.POST)
    if form.is_valid():
        try:
            guideline = guideline_publish(task_set=task_set, text=form.cleaned_data["text"], created_by=request.user)
        except LabelingError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, f"Published guidelines version {guideline.version}.")
    return redirect("labeling:set_admin", set_id=set_id)


@login_required
@require_POST
def labeler_exclusion_view(request, set_id: int):
    _admin(request)
    task_set = get_object_or_404(TaskSet, pk=set_id)
    labeler = get_object_or_404(get_user_model(), pk=request.POST.get("labeler", "0") or 0)
    if request.POST.get("action") == "include":
        labeler_include(task_set=task_set, labeler=labeler)
        messages.success(request, f"{labeler.username}'s rankings count again.")
    else:
        labeler_exclude(task_set=task_set, labeler=labeler, excluded_by=request.user)
        messages.success(request, f"Excluded {labeler.username}: their rankings no longer count.")
    return redirect("labeling:set_admin", set_id=set_id)


@login_required
@require_POST
def task_gold_view(request, set_id: int, task_id):
    _admin(request)
    task = get_object_or_404(Task, pk=task_id, task_set_id=set_id)
    text = request.POST.get("gold_order", "").strip()
    try:
        numbers = [int(part) - 1 for part in text.replace(" ", "").split(",")] if text else None
    except ValueError:
        messages.error(request, "Write the gold order as candidate numbers, best first, e.g. 2,1,3.")
        return redirect("labeling:set_admin", set_id=set_id)
    try:
        task_gold_set(task=task, order=numbers)
    except LabelingError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, "Gold order saved." if numbers else "No longer a gold task.")
    return redirect("labeling:set_admin", set_id=set_id)


@login_required
@require_GET
def task_set_export(request, set_id: int):
    _admin(request)
    task_set = get_object_or_404(TaskSet, pk=set_id)
    export_format, split = request.GET.get("format", "trl"), request.GET.get("split", "all")
    if export_format not in EXPORT_FORMATS or split not in SPLITS:
        return HttpResponseBadRequest("Unknown format or split.")
    body = export_jsonl(task_set=task_set, export_format=export_format, split=split)
    response = HttpResponse(body, content_type="application/jsonl; charset=utf-8")
    filename = f"labeling-{task_set.pk}-{export_format}-{split}.jsonl"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@login_required
@require_GET
def my_rankings(request):
    _labeler(request)
    context = {"rankings": labeler_rankings(labeler=request.user), "nav_active": "labeling"}
    return render(request, "labeling/my_rankings.html", context)
