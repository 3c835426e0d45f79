"""The API's one error type, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from django.http import JsonResponse


class ApiError(Exception):
    """A domain error of the API. `message` is written for the developer calling it."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code=None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def api_error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(error.body(), status=error.status)
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="atelier"'
    return response


def model_not_found() -> ApiError:
    """One answer for "no such assistant" and "not yours to use", so slugs cannot be probed."""
    return ApiError(
        404,
        "The model does not exist or you do not have access to it. GET /api/v1/models lists the ones you can use.",
        param="model",
        code="model_not_found",
    )
