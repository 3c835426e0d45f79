"""Site-wide pages: the dashboard, the status page and health probe, the areas still to come, and the /out
interstitial for links from untrusted text."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from apps.accounts.permissions import role_check
from apps.core.links import RefusedLink, destination_inspect
from apps.core.selectors import system_health
from apps.registry.selectors import base_model_list

# Areas whose issues have not landed yet: the navigation shows them, the page says so honestly.
AREAS: dict[str, tuple[str, str, str]] = {}


@login_required
def dashboard(request):
    return render(request, "core/dashboard.html", {"models": base_model_list(), "nav_active": "dashboard"})


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


@login_required
def area(request, slug: str):
    if slug not in AREAS:
        raise Http404("No such area.")
    title, role, blurb = AREAS[slug]
    role_check(user=request.user, area=role)
    return render(request, "core/area.html", {"area_title": title, "area_blurb": blurb, "nav_active": slug})


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
