"""Token authentication for the API: `Authorization: Bearer <key>`, and nothing else.

Sessions are deliberately ignored: a browser's cookie must never authorise an API call (that would open
the API to cross-site requests), which is also why the API views can be exempt from CSRF checks.
"""

from functools import wraps

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.services import api_key_authenticate
from apps.api.errors import ApiError, api_error_response


def _bearer_token(request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def api_key_required(view):
    """Authenticate an (async) API view by its bearer key; sets `request.user` to the key's owner."""
    if not iscoroutinefunction(view):
        raise TypeError(f"{view.__qualname__} must be an async view")

    @wraps(view)
    async def wrapper(request, *args, **kwargs):
        token = _bearer_token(request)
        user = await sync_to_async(api_key_authenticate)(raw_key=token) if token else None
        if user is None:
            message = (
                "Incorrect API key provided." if token else "Missing API key: send it as 'Authorization: Bearer <key>'."
            )
            return api_error_response(ApiError(401, message, code="invalid_api_key"))
        request.user = user  # replaces the session's lazy user: only the key counts here
        return await view(request, *args, **kwargs)

    return csrf_exempt(wrapper)
