from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from apps.accounts.forms import SignupForm
from apps.accounts.selectors import api_key_list
from apps.accounts.services import AccountError, api_key_create, api_key_revoke, data_sharing_set, user_create


@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect("dashboard")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_create(
                username=form.cleaned_data["username"],
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password1"],
            )
        except AccountError as error:
            form.add_error("username", str(error))
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome to Atelier, {user.username}.")
            return redirect("dashboard")
    return render(request, "registration/signup.html", {"form": form})


@never_cache  # the page that shows a new key must not be kept by any cache
@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    new_key = None
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "create":
            try:
                api_key, new_key = api_key_create(user=request.user, name=request.POST.get("name", ""))
            except AccountError as error:
                messages.error(request, str(error))
            else:
                messages.success(request, f"Created the key “{api_key.name}”.")
            # Rendered, not redirected: the clear key exists only in this response.
        elif action == "revoke":
            key_id = request.POST.get("key_id", "")
            if not (key_id.isascii() and key_id.isdigit()):
                raise Http404
            api_key = get_object_or_404(api_key_list(user=request.user), pk=int(key_id))  # another's key: 404
            api_key_revoke(api_key=api_key)
            messages.success(request, f"Revoked the key “{api_key.name}”. Programs using it are refused from now on.")
            return redirect("api_keys")
        else:
            return HttpResponseBadRequest("Unknown action.")
    context = {
        "api_keys": api_key_list(user=request.user),
        "new_key": new_key,
        "api_base_url": request.build_absolute_uri(reverse("api:models")).removesuffix("/models"),
    }
    return render(request, "accounts/api_keys.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def account_settings(request):
    if request.method == "POST":
        data_sharing_set(user=request.user, allowed=request.POST.get("data_sharing") == "on")
        messages.success(request, "Settings saved.")
        return redirect("account_settings")
    return render(request, "accounts/settings.html", {})
