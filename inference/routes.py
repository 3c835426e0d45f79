"""The HTTP routes over the engine, one function each, and `create_app` that assembles them.

Every route reads the Runtime (engine, tokenizer, adapters, embedder) from the app's state; refusals
raise wire.APIError, which one handler turns into OpenAI's error envelope, as it does for invalid
bodies, unknown routes and wrong methods. The API key, when set, guards every route but /health.
"""

import asyncio
import base64
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from inference import wire
from inference.adapters import AdapterBank, AdapterError, AdaptersBusy
from inference.embeddings import Embedder
from inference.sampler import SamplingParams
from inference.scheduler import TTFT_BUCKETS, Engine, GenerationRequest, PromptTooLong, QueueFull
from inference.tokenizer import ChatTokenizer
from inference.wire import APIError

CHAT_MODEL, EMBEDDING_MODEL = "smollm2-135m-instruct", "all-minilm-l6-v2"
MAX_EMBEDDING_INPUTS = 256


@dataclass
class Runtime:
    engine: Engine
    tokenizer: ChatTokenizer
    adapters: AdapterBank | None
    embedder: Embedder | None
    model_name: str = CHAT_MODEL
    embedding_name: str = EMBEDDING_MODEL
    created: int = 0


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


CurrentRuntime = Annotated[Runtime, Depends(runtime_of)]


router = APIRouter()


@router.get("/health")
async def health(runtime: CurrentRuntime):
    snapshot = runtime.engine.snapshot()
    return {
        "status": "ok",
        "model": runtime.model_name,
        "device": runtime.engine.decoder.device,
        "active_sequences": snapshot["active_sequences"],
        "queue_depth": snapshot["queue_depth"],
    }


@router.get("/metrics")
async def metrics(runtime: CurrentRuntime):
    return PlainTextResponse(prometheus(runtime.engine.snapshot()), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(runtime: CurrentRuntime):
    entry = {"object": "model", "created": runtime.created, "owned_by": "atelier"}
    data = [{"id": runtime.model_name, **entry, "context_length": runtime.engine.capacity}]
    if runtime.embedder:
        data.append({"id": runtime.embedding_name, **entry})
    for adapter_id in runtime.adapters.loaded if runtime.adapters else []:
        data.append({"id": adapter_id, **entry, "parent": runtime.model_name})
    return {"object": "list", "data": data}


@router.post("/tokenize")
async def tokenize(body: wire.TokenizeRequest, runtime: CurrentRuntime):
    adapter_for(runtime, body.model)  # an unknown model is a 404 here too (adapters share the tokenizer)
    if sum(x is not None for x in (body.prompt, body.messages, body.conversations)) != 1:
        raise APIError(400, "send exactly one of 'prompt', 'messages' or 'conversations'")
    result = {"max_model_len": runtime.engine.capacity}
    if body.conversations is not None:
        chat = runtime.tokenizer.chat_prompt
        counts = [
            len(chat(wire.template_messages(m), add_generation_prompt=body.add_generation_prompt))
            for m in body.conversations
        ]
        return {**result, "counts": counts}
    if body.messages is not None:
        messages = wire.template_messages(body.messages)
        tokens = runtime.tokenizer.chat_prompt(messages, add_generation_prompt=body.add_generation_prompt)
    else:
        tokens = runtime.tokenizer.encode(body.prompt)
    result.update(count=len(tokens), tokens=tokens)
    if body.return_token_strs:
        result["token_strs"] = [runtime.tokenizer.token_text(t) for t in tokens]
    return result


@router.post("/v1/adapters", status_code=201)
async def adapter_load(body: wire.AdapterLoad, runtime: CurrentRuntime):
    if runtime.adapters is None:
        raise APIError(400, "this server was started without LoRA support")
    if body.id in (runtime.model_name, runtime.embedding_name):
        raise APIError(400, f"{body.id!r} is a base model's name", param="id")
    try:
        await run_in_threadpool(runtime.adapters.load, body.id, Path(body.path))
    except AdapterError as error:
        raise APIError(400, str(error), param="path") from error
    except AdaptersBusy as error:
        raise APIError(409, str(error), type="conflict") from error
    return {"id": body.id, "object": "adapter", "parent": runtime.model_name}


@router.delete("/v1/adapters/{adapter_id}")
async def adapter_unload(adapter_id: str, runtime: CurrentRuntime):
    if runtime.adapters is None:
        raise APIError(404, f"adapter {adapter_id!r} is not loaded", code="adapter_not_found")
    try:
        await run_in_threadpool(runtime.adapters.unload, adapter_id)  # may rebuild every bank
    except KeyError:
        raise APIError(404, f"adapter {adapter_id!r} is not loaded", code="adapter_not_found") from None
    except AdaptersBusy as error:
        raise APIError(409, str(error), type="conflict") from error
    return {"id": adapter_id, "object": "adapter", "deleted": True}


@router.post("/v1/embeddings")
async def embeddings(body: wire.EmbeddingRequest, runtime: CurrentRuntime):
    if runtime.embedder is None or body.model != runtime.embedding_name:
        raise APIError(
            404,
            f"the embedding model is {runtime.embedding_name!r}, not {body.model!r}",
            param="model",
            code="model_not_found",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
        raise APIError(400, f"input must hold 1 to {MAX_EMBEDDING_INPUTS} strings", param="input")
    if any(not t for t in texts):
        raise APIError(400, "input strings must not be empty", param="input")
    vectors, tokens = await run_in_threadpool(runtime.embedder.embed, texts)

    def encode(vector):  # base64 is little-endian float32, as OpenAI sends it (the client's default)
        if body.encoding_format == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return vector.tolist()

    return {
        "object": "list",
        "model": runtime.embedding_name,
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.post("/v1/chat/completions")
async def chat_completions(body: wire.ChatRequest, request: Request, runtime: CurrentRuntime):
    adapter = adapter_for(runtime, body.model)
    prompt = runtime.tokenizer.chat_prompt(wire.template_messages(body.messages))
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    generation = generation_request(
        runtime, body, prompt, max_tokens=max_tokens, adapter=adapter, logprobs=body.logprobs, top=top
    )
    return await respond(runtime, request, body, generation, chat=True)


@router.post("/v1/completions")
async def completions(body: wire.CompletionRequest, request: Request, runtime: CurrentRuntime):
    adapter = adapter_for(runtime, body.model)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise APIError(400, "send one prompt per request", param="prompt")
    if body.echo:
        raise APIError(400, "echo is not supported", param="echo")
    prompt = runtime.tokenizer.encode(prompts[0])
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    want = body.logprobs is not None
    generation = generation_request(
        runtime, body, prompt, max_tokens=body.max_tokens, adapter=adapter, logprobs=want, top=body.logprobs or 0
    )
    return await respond(runtime, request, body, generation, chat=False)


# --- what the generation routes share -----------------------------------------------------------------


def adapter_for(runtime: Runtime, model: str) -> str | None:
    """None for the base model, the adapter id for a loaded adapter; anything else is a 404."""
    if model == runtime.model_name:
        return None
    if runtime.adapters and model in runtime.adapters.loaded:
        return model
    raise APIError(
        404,
        f"model {model!r} does not exist; GET /v1/models lists what this server has",
        param="model",
        code="model_not_found",
    )


def generation_request(
    runtime: Runtime, body: wire.GenerationBody, prompt: list[int], *, max_tokens, adapter, logprobs, top
) -> GenerationRequest:
    capacity = runtime.engine.capacity
    if body.truncate_prompt_tokens:
        prompt = prompt[-min(body.truncate_prompt_tokens, capacity - 1) :]
    if len(prompt) + 1 > capacity:
        raise APIError(
            400,
            f"This model's maximum context length is {capacity} tokens, but the prompt is {len(prompt)} tokens. "
            "Shorten it, or set truncate_prompt_tokens to keep only its end.",
            param="messages" if hasattr(body, "messages") else "prompt",
            code="context_length_exceeded",
        )
    room = capacity - len(prompt)
    params = SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        logprobs=logprobs,
        top_logprobs=top,
    )
    return GenerationRequest(
        prompt=prompt,
        params=params,
        max_tokens=min(max_tokens or room, room),
        n=body.n,
        stop=tuple(body.stop or ()),
        ignore_eos=body.ignore_eos,
        adapter=adapter,
    )


async def respond(
    runtime: Runtime, request: Request, body: wire.GenerationBody, generation: GenerationRequest, *, chat: bool
):
    """Submit to the engine, then stream or collect. A client that leaves frees its rows at once."""
    try:
        handle = runtime.engine.submit(generation, asyncio.get_running_loop())
    except QueueFull as error:
        raise APIError(429, str(error), type="rate_limit_error", code="queue_full") from error
    except PromptTooLong as error:
        raise APIError(400, str(error), code="context_length_exceeded") from error
    except KeyError:
        raise APIError(
            404, f"adapter {generation.adapter!r} was unloaded", param="model", code="model_not_found"
        ) from None
    except ValueError as error:
        raise APIError(400, str(error), param="n") from error
    completion_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    shape = wire.Shape(runtime.tokenizer, completion_id, body.model, chat)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def chunks():
            try:
                async for chunk in wire.stream(handle, shape, body.n, include_usage):
                    yield chunk
            finally:
                runtime.engine.cancel(handle)  # a no-op when finished; frees the rows when the client left

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(chunks(), media_type="text/event-stream", headers=headers)

    async def watch_disconnect():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    collector = asyncio.ensure_future(wire.collect(handle, shape, body.n))
    watcher = asyncio.ensure_future(watch_disconnect())
    try:
        await asyncio.wait([collector, watcher], return_when=asyncio.FIRST_COMPLETED)
        if not collector.done():  # the client left: free its rows now
            runtime.engine.cancel(handle)
            collector.cancel()
            return JSONResponse(wire.error_body("client disconnected"), status_code=499)
        return collector.result()
    finally:
        watcher.cancel()


def prometheus(s: dict) -> str:
    lines = []

    def metric(name: str, kind: str, help_text: str, value) -> None:
        lines.extend([f"# HELP atelier_{name} {help_text}", f"# TYPE atelier_{name} {kind}", f"atelier_{name} {value}"])

    metric("queue_depth", "gauge", "Requests waiting for a KV row.", s["queue_depth"])
    metric("active_sequences", "gauge", "Sequences being generated.", s["active_sequences"])
    metric("kv_rows_in_use", "gauge", "KV cache rows (sequence slots) in use.", s["kv_rows_in_use"])
    metric("kv_rows_total", "gauge", "KV cache rows (sequence slots) in all.", s["kv_rows_total"])
    rate = f"{s['decode_tokens_per_second']:.2f}"
    metric("decode_tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.", rate)
    metric("requests_total", "counter", "Generation requests accepted.", s["requests_total"])
    metric(
        "requests_rejected_total", "counter", "Requests refused with 429 (queue full).", s["requests_rejected_total"]
    )
    metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", s["prompt_tokens_total"])
    metric("generation_tokens_total", "counter", "Tokens generated.", s["generation_tokens_total"])
    lines += [
        "# HELP atelier_time_to_first_token_seconds Time from request to its first token.",
        "# TYPE atelier_time_to_first_token_seconds histogram",
    ]
    for bound, count in zip(TTFT_BUCKETS, s["ttft_buckets"], strict=True):
        lines.append(f'atelier_time_to_first_token_seconds_bucket{{le="{bound}"}} {count}')
    lines.append(f'atelier_time_to_first_token_seconds_bucket{{le="+Inf"}} {s["ttft_seconds_count"]}')
    lines.append(f"atelier_time_to_first_token_seconds_sum {s['ttft_seconds_sum']:.6f}")
    lines.append(f"atelier_time_to_first_token_seconds_count {s['ttft_seconds_count']}")
    return "\n".join(lines) + "\n"


# --- the app ------------------------------------------------------------------------------------------


def create_app(runtime: Runtime, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="Atelier inference", docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    runtime.created = runtime.created or int(time.time())

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                message = "a valid API key is required (Authorization: Bearer ...)"
                body = wire.error_body(message, "authentication_error", code="invalid_api_key")
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _not_allowed)
    app.include_router(router)
    return app


async def _api_error(_: Request, error: APIError):
    return JSONResponse(error.body(), status_code=error.status)


async def _invalid_body(_: Request, error: RequestValidationError):
    first = error.errors()[0] if error.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request body"))
    return JSONResponse(wire.error_body(message, param=param), status_code=400)


async def _not_found(request: Request, _):
    body = wire.error_body(f"no route {request.method} {request.url.path}", code="not_found")
    return JSONResponse(body, status_code=404)


async def _not_allowed(request: Request, _):
    return JSONResponse(wire.error_body(f"{request.method} is not allowed on {request.url.path}"), status_code=405)
