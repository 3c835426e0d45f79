"""Fine-tuning pages. Each area keeps its own section, below.

Jobs: the Train form (from a dataset version), the job list, the live job page and its JSON progress
endpoint, cancel and retry. Thin: selectors decide access (the job's owner; everyone else gets 404) and
services do the writes. GET handlers never write. No inline scripts: the page's polling and its charts
live in static/js/finetune.js.
"""

from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.permissions import role_check
from apps.finetune import selectors, services
from apps.finetune.forms import TrainForm

NAV = {"nav_active": "finetunes"}


def member_required(view):
    """Signed in, with a role that opens the fine-tuning area (every area view checks its role)."""

    @login_required
    @wraps(view)
    def checked(request, *args, **kwargs):
        role_check(user=request.user, area="member")
        return view(request, *args, **kwargs)

    return checked


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
    return render(request, "finetune/job_create.html", {"version": version, "train_form": form, **NAV})


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


# --- end jobs --------------------------------------------------------------------------------------------
