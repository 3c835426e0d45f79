"""Site-wide pages: the dashboard, the status page and health probe, and the /out interstitial for links
from untrusted text. The dashboard lists the user's draft versions awaiting review: the learning loop's
notification that a fine-tune finished (a query, so it clears itself when the draft is published)."""

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.core.links import RefusedLink, destination_inspect
from apps.core.selectors import system_health
from apps.loop.selectors import loop_drafts_for_owner
from apps.registry.selectors import base_model_list

DRAFTS_SHOWN = 5


@login_required
def dashboard(request):
    context = {
        "models": base_model_list(),
        "drafts": loop_drafts_for_owner(owner=request.user)[:DRAFTS_SHOWN],
        "nav_active": "dashboard",
    }
    return render(request, "core/dashboard.html", context)


@login_required
@never_cache
def status(request):
    context = {"checks": system_health(), "models": base_model_list(), "nav_active": "status"}
    return render(request, "core/status.html", context)


@require_GET
@never_cache
def healthz(request):
    """Machine-readable health: 200 when every part is ok, 503 otherwise, with each part's detail."""
    checks = system_health()
    healthy = all(check.ok for check in checks)
    return JsonResponse({check.name: check.detail for check in checks}, status=200 if healthy else 503)


@require_GET
def outbound(request):
    """The interstitial every link from untrusted text to another host passes through: it shows the real
    destination and asks for one click. It never redirects, so a crafted `u` cannot make it an open redirect;
    the page is open to anyone (snapshots are public) and sends no referrer (the site-wide Referrer-Policy,
    and rel on the link)."""
    raw = request.GET.get("u", "")
    try:
        destination, refusal = destination_inspect(raw, base_scheme=request.scheme), ""
    except RefusedLink as error:
        destination, refusal = None, str(error)
    context = {"destination": destination, "refusal": refusal, "raw": raw[:2000]}
    return render(request, "core/outbound.html", context, status=400 if refusal else 200)
