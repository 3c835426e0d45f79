"""The per-user, OpenAI-compatible API. Authenticated by bearer key only (see auth.py); thin views."""

from functools import wraps

from asgiref.sync import sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.api.auth import api_key_required
from apps.api.errors import ApiError, api_error_response, model_not_found
from apps.api.selectors import api_model_get, api_model_list
from apps.api.services import (
    chat_completion_create,
    chat_completion_stream,
    completion_payload_build,
    completion_request_parse,
)
from apps.core.sse import sse_response

# How many of the oldest turns were left out to fit the context window (0 when all fit), as chat drops them.
TURNS_DROPPED_HEADER = "X-Atelier-Turns-Dropped"


def _allow(*methods: str):
    """Like require_http_methods, but refusing in OpenAI's error shape."""

    def decorator(view):
        @wraps(view)
        async def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                response = api_error_response(ApiError(405, f"{request.method} is not allowed on {request.path}"))
                response["Allow"] = ", ".join(methods)
                return response
            return await view(request, *args, **kwargs)

        return wrapper

    return decorator


def _model(assistant) -> dict:
    return {
        "id": assistant.slug,
        "object": "model",
        "created": int(assistant.created_at.timestamp()),
        "owned_by": assistant.owner.get_username(),
    }


@_allow("GET")
@api_key_required
async def model_list(request):
    assistants = [assistant async for assistant in api_model_list(user=request.user)]
    return JsonResponse({"object": "list", "data": [_model(a) for a in assistants]})


@_allow("GET")
@api_key_required
async def model_detail(request, model: str):
    assistant = await api_model_get(user=request.user, slug=model)
    if assistant is None:
        return api_error_response(model_not_found())
    return JsonResponse(_model(assistant))


@_allow("POST")
@api_key_required
async def chat_completions(request):
    try:
        try:
            raw = request.body
        except RequestDataTooBig:
            raise ApiError(413, "The request body is too large.") from None
        body = completion_request_parse(raw=raw)
        assistant = await api_model_get(user=request.user, slug=body["model"])
        if assistant is None:
            raise model_not_found()
        engine_request = await sync_to_async(completion_payload_build)(
            assistant=assistant, body=body, user=request.user
        )
        payload = engine_request.body
        if payload["stream"]:
            response = sse_response(
                await chat_completion_stream(payload=payload, slug=assistant.slug, sources=engine_request.sources)
            )
        else:
            response = JsonResponse(
                await chat_completion_create(payload=payload, slug=assistant.slug, sources=engine_request.sources)
            )
    except ApiError as error:
        return api_error_response(error)
    response[TURNS_DROPPED_HEADER] = str(engine_request.turns_dropped)
    return response


@csrf_exempt
async def not_found(request, rest: str = ""):
    return api_error_response(ApiError(404, f"No route {request.method} {request.path}.", code="not_found"))
