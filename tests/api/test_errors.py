"""The engine and the web API refuse in one envelope. They stay two classes (one per side of the HTTP
boundary: the engine must not import Django), so this test pins their shared contract."""

import json

import pytest

from apps.api.errors import ApiError, api_error_response
from inference.wire import APIError


@pytest.mark.parametrize(
    "args",
    [
        (400, "temperature must be in [0, 2]", {"param": "temperature"}),
        (404, "no such model", {"param": "model", "code": "model_not_found"}),
        (429, "busy", {"type": "rate_limit_error", "code": "queue_full"}),
        (500, "boom", {"type": "server_error"}),
    ],
)
def test_both_error_types_speak_openais_envelope(args):
    status, message, options = args
    engine, web = APIError(status, message, **options), ApiError(status, message, **options)
    assert engine.body() == web.body()
    assert set(web.body()["error"]) == {"message", "type", "param", "code"}
    assert (engine.status, engine.type, engine.param, engine.code) == (web.status, web.type, web.param, web.code)
    response = api_error_response(web)
    assert response.status_code == status and json.loads(response.content) == engine.body()
