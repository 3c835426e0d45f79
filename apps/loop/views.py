"""The learning loop's pages, for the assistant's owner only: "Improve this assistant" (the filters, the
pairs' count and scan findings, one confirmation) and the loop's history. Anyone else gets a 404, as on the
builder's pages, so addresses cannot be probed.
"""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from apps.assistants.models import Assistant
from apps.assistants.selectors import assistant_list_owned
from apps.loop.forms import PairFilterForm
from apps.loop.selectors import MIN_PAIRS, SOURCES, loop_gather, loop_history, loop_training_settings
from apps.loop.services import LoopError, loop_improve_start

PAIRS_SHOWN = 20


def _owned_or_404(request, slug: str) -> Assistant:
    return get_object_or_404(assistant_list_owned(user=request.user), slug=slug)


@login_required
@require_http_methods(["GET", "POST"])
def improve(request, slug: str):
    """GET: the filters and what they gather (read only). POST: the confirmation that builds and queues."""
    assistant = _owned_or_404(request, slug)
    data = request.POST if request.method == "POST" else (request.GET or {"sources": list(SOURCES)})
    form = PairFilterForm(data, assistant=assistant)
    gathering = None
    if request.method == "POST" and form.is_valid():
        try:
            run = loop_improve_start(assistant=assistant, actor=request.user, filters=form.filters())
        except LoopError as error:
            messages.error(request, str(error))
            gathering = error.gathering  # the pairs it refused, if that was why: shown, not gathered again
        else:
            messages.success(
                request,
                f"Training on {len(run.provenance)} pairs. When the job succeeds, a draft version appears "
                "on the loop page and in My arena.",
            )
            return redirect("finetune:job", run.job_id)
    if gathering is None and form.is_valid():
        gathering = loop_gather(assistant=assistant, filters=form.filters())
    context = {
        "assistant": assistant,
        "form": form,
        "gathering": gathering,
        "pairs_shown": gathering.pairs[:PAIRS_SHOWN] if gathering else [],
        "settings": loop_training_settings(pairs=len(gathering.pairs)) if gathering else None,
        "min_pairs": MIN_PAIRS,
        "parent": assistant.current_version,
        "nav_active": "assistants",
    }
    return render(request, "loop/improve.html", context)


@login_required
@require_GET
def history(request, slug: str):
    assistant = _owned_or_404(request, slug)
    context = {"assistant": assistant, "history": loop_history(assistant=assistant), "nav_active": "assistants"}
    return render(request, "loop/history.html", context)
