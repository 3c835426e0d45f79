"""The OpenAI-compatible HTTP API over the engine: python -m inference.server (127.0.0.1:8001).

    GET  /v1/models              the base model and the loaded adapters
    POST /v1/chat/completions    chat, with SSE streaming, logprobs and n
    POST /v1/completions         raw continuation: the base model as a "document simulator"
    POST /v1/embeddings          all-MiniLM-L6-v2
    POST /v1/adapters            load a PEFT LoRA adapter (safetensors) from a directory
    DELETE /v1/adapters/{id}     unload it
    GET  /health, GET /metrics   liveness, and Prometheus metrics

Errors always have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

import argparse
import asyncio
import base64
import ipaddress
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool

from inference.adapters import AdapterBank, AdapterError, AdaptersBusy
from inference.embeddings import Embedder
from inference.sampler import MAX_TOP_LOGPROBS, SamplingParams, TokenChoice
from inference.scheduler import TTFT_BUCKETS, Engine, Event, GenerationRequest, PromptTooLong, QueueFull
from inference.session import DecoderSession
from inference.tokenizer import ChatTokenizer

log = logging.getLogger("inference.server")

CHAT_MODEL, EMBEDDING_MODEL = "smollm2-135m-instruct", "all-minilm-l6-v2"
MAX_EMBEDDING_INPUTS = 256


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def _error_body(message: str, type: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- request bodies ---------------------------------------------------------------------------------


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"content parts of type {part.get('type')!r} are not supported, only text")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    model: str
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = None
    user: str | None = None
    # Extensions (as in vLLM). Keep only the last N prompt tokens instead of refusing a prompt longer
    # than the context window; generate max_tokens even past end-of-text (benchmarks).
    truncate_prompt_tokens: int | None = Field(None, ge=1)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class CompletionRequest(_Generation):
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: exactly one of `prompt` (raw text) or `messages` (through the chat template)."""

    model: str
    prompt: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class AdapterLoad(BaseModel):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    path: str


# --- the app ----------------------------------------------------------------------------------------


@dataclass
class Runtime:
    engine: Engine
    tokenizer: ChatTokenizer
    adapters: AdapterBank | None
    embedder: Embedder | None
    model_name: str = CHAT_MODEL
    embedding_name: str = EMBEDDING_MODEL
    created: int = 0


def create_app(runtime: Runtime, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="Atelier inference", docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    runtime.created = runtime.created or int(time.time())

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                body = _error_body(
                    "a valid API key is required (Authorization: Bearer ...)",
                    "authentication_error",
                    code="invalid_api_key",
                )
                return JSONResponse(body, status_code=401)
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(_: Request, error: APIError):
        return JSONResponse(_error_body(error.message, error.type, error.param, error.code), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid request body"))
        return JSONResponse(_error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(404)
    async def not_found(request: Request, _):
        return JSONResponse(
            _error_body(f"no route {request.method} {request.url.path}", "invalid_request_error", code="not_found"),
            status_code=404,
        )

    @app.exception_handler(405)
    async def not_allowed(request: Request, _):
        return JSONResponse(
            _error_body(f"{request.method} is not allowed on {request.url.path}", "invalid_request_error"),
            status_code=405,
        )

    @app.get("/health")
    async def health():
        snapshot = runtime.engine.snapshot()
        return {
            "status": "ok",
            "model": runtime.model_name,
            "device": runtime.engine.decoder.device,
            "active_sequences": snapshot["active_sequences"],
            "queue_depth": snapshot["queue_depth"],
        }

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(_prometheus(runtime.engine.snapshot()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        entry = {"object": "model", "created": runtime.created, "owned_by": "atelier"}
        data = [{"id": runtime.model_name, **entry, "context_length": runtime.engine.capacity}]
        if runtime.embedder:
            data.append({"id": runtime.embedding_name, **entry})
        for adapter_id in runtime.adapters.loaded if runtime.adapters else []:
            data.append({"id": adapter_id, **entry, "parent": runtime.model_name})
        return {"object": "list", "data": data}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        _adapter_for(runtime, body.model)  # an unknown model is a 404 here too (adapters share the tokenizer)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "send exactly one of 'prompt' or 'messages'")
        if body.messages is not None:
            messages = _template_messages(body.messages)
            tokens = runtime.tokenizer.chat_prompt(messages, add_generation_prompt=body.add_generation_prompt)
        else:
            tokens = runtime.tokenizer.encode(body.prompt)
        result = {"count": len(tokens), "max_model_len": runtime.engine.capacity, "tokens": tokens}
        if body.return_token_strs:
            result["token_strs"] = [runtime.tokenizer.token_text(t) for t in tokens]
        return result

    @app.post("/v1/adapters", status_code=201)
    async def adapter_load(body: AdapterLoad):
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

    @app.delete("/v1/adapters/{adapter_id}")
    async def adapter_unload(adapter_id: str):
        if runtime.adapters is None:
            raise APIError(404, f"adapter {adapter_id!r} is not loaded", code="adapter_not_found")
        try:
            await run_in_threadpool(runtime.adapters.unload, adapter_id)  # may rebuild every bank
        except KeyError:
            raise APIError(404, f"adapter {adapter_id!r} is not loaded", code="adapter_not_found") from None
        except AdaptersBusy as error:
            raise APIError(409, str(error), type="conflict") from error
        return {"id": adapter_id, "object": "adapter", "deleted": True}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
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
        vectors = await run_in_threadpool(runtime.embedder.embed, texts)

        def encode(vector):  # base64 is little-endian float32, as OpenAI sends it (the client's default)
            if body.encoding_format == "base64":
                return base64.b64encode(vector.astype("<f4").tobytes()).decode()
            return vector.tolist()

        tokens = runtime.embedder.count_tokens(texts)
        return {
            "object": "list",
            "model": runtime.embedding_name,
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        adapter = _adapter_for(runtime, body.model)
        prompt = runtime.tokenizer.chat_prompt(_template_messages(body.messages))
        top = body.top_logprobs or 0
        if top and not body.logprobs:
            raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
        max_tokens = body.max_completion_tokens or body.max_tokens
        generation = _generation(
            runtime, body, prompt, max_tokens=max_tokens, adapter=adapter, logprobs=body.logprobs, top=top
        )
        return await _respond(runtime, request, body, generation, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        adapter = _adapter_for(runtime, body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "send one prompt per request", param="prompt")
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo")
        prompt = runtime.tokenizer.encode(prompts[0])
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        want = body.logprobs is not None
        generation = _generation(
            runtime, body, prompt, max_tokens=body.max_tokens, adapter=adapter, logprobs=want, top=body.logprobs or 0
        )
        return await _respond(runtime, request, body, generation, chat=False)

    return app


def _template_messages(messages: list[Message]) -> list[dict]:
    """OpenAI messages as the chat template takes them ("developer" is the newer name for "system")."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


def _adapter_for(runtime: Runtime, model: str) -> str | None:
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


def _generation(
    runtime: Runtime, body: _Generation, prompt: list[int], *, max_tokens, adapter, logprobs, top
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


async def _respond(runtime: Runtime, request: Request, body: _Generation, generation: GenerationRequest, *, chat: bool):
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
    shape = _Shape(runtime.tokenizer, completion_id, body.model, chat)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(runtime, handle, shape, body.n, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _collect(runtime, request, handle, shape, body.n)


class _Shape:
    """OpenAI's response shapes for chat and text completions."""

    def __init__(self, tokenizer: ChatTokenizer, completion_id: str, model: str, chat: bool) -> None:
        self.tokenizer, self.id, self.model, self.chat = tokenizer, completion_id, model, chat
        self.created = int(time.time())

    def envelope(self, *, chunk: bool) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + (".chunk" if chunk and self.chat else ""),
            "created": self.created,
            "model": self.model,
        }

    def logprob_entry(self, choice: TokenChoice) -> dict:
        text = self.tokenizer.token_text
        return {
            "token": text(choice.token),
            "logprob": choice.logprob,
            "bytes": self.tokenizer.token_bytes(choice.token),
            "top_logprobs": [
                {"token": text(t), "logprob": lp, "bytes": self.tokenizer.token_bytes(t)} for t, lp in choice.top
            ],
        }

    def logprobs(self, tokens: list[TokenChoice], offset: int = 0) -> dict | None:
        if not tokens or tokens[0].logprob is None:
            return None
        if self.chat:
            return {"content": [self.logprob_entry(t) for t in tokens]}
        text = self.tokenizer.token_text
        offsets, position = [], offset
        for t in tokens:
            offsets.append(position)
            position += len(text(t.token))
        return {
            "tokens": [text(t.token) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{text(tok): lp for tok, lp in t.top} for t in tokens],
            "text_offset": offsets,
        }


async def _events(handle) -> AsyncIterator[Event]:
    while True:
        event: Event = await handle.queue.get()
        if event.kind == "error":
            raise APIError(500, event.error or "inference failed", type="server_error")
        yield event
        if event.kind == "done":
            return


async def _collect(runtime: Runtime, request: Request, handle, shape: _Shape, n: int):
    texts, tokens, reasons = [""] * n, [[] for _ in range(n)], [None] * n
    usage = None

    async def consume():
        nonlocal usage
        async for event in _events(handle):
            if event.kind == "token":
                texts[event.index] += event.text
                tokens[event.index].append(event.token)
            elif event.kind == "finish":
                reasons[event.index] = event.finish_reason
            elif event.kind == "done":
                usage = event.usage

    async def watch_disconnect():
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    consumer, watcher = asyncio.ensure_future(consume()), asyncio.ensure_future(watch_disconnect())
    try:
        await asyncio.wait([consumer, watcher], return_when=asyncio.FIRST_COMPLETED)
        if not consumer.done():  # the client left: free its rows now
            runtime.engine.cancel(handle)
            consumer.cancel()
            return JSONResponse(_error_body("client disconnected", "invalid_request_error"), status_code=499)
        consumer.result()
    finally:
        watcher.cancel()
    choices = []
    for i in range(n):
        if shape.chat:
            choice = {"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": reasons[i]}
        else:
            choice = {"index": i, "text": texts[i], "finish_reason": reasons[i]}
        choice["logprobs"] = shape.logprobs(tokens[i])
        choices.append(choice)
    return {**shape.envelope(chunk=False), "choices": choices, "usage": usage}


async def _stream(runtime: Runtime, handle, shape: _Shape, n: int, include_usage: bool) -> AsyncIterator[str]:
    def sse(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    offsets = [0] * n
    try:
        if shape.chat:
            for i in range(n):
                yield sse(
                    {
                        **shape.envelope(chunk=True),
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
        async for event in _events(handle):
            if event.kind == "token":
                logprobs = shape.logprobs([event.token], offsets[event.index])
                if not event.text and logprobs is None:
                    continue
                offsets[event.index] += len(event.text)
                if shape.chat:
                    choice = {
                        "index": event.index,
                        "delta": {"content": event.text},
                        "logprobs": logprobs,
                        "finish_reason": None,
                    }
                else:
                    choice = {"index": event.index, "text": event.text, "logprobs": logprobs, "finish_reason": None}
                yield sse({**shape.envelope(chunk=True), "choices": [choice]})
            elif event.kind == "finish":
                delta = {"delta": {}} if shape.chat else {"text": ""}
                yield sse(
                    {
                        **shape.envelope(chunk=True),
                        "choices": [
                            {"index": event.index, **delta, "logprobs": None, "finish_reason": event.finish_reason}
                        ],
                    }
                )
            elif event.kind == "done" and include_usage:
                yield sse({**shape.envelope(chunk=True), "choices": [], "usage": event.usage})
        yield "data: [DONE]\n\n"
    except APIError as error:
        yield sse(_error_body(error.message, error.type))
    finally:
        runtime.engine.cancel(handle)  # a no-op when finished; frees the rows when the client left


def _prometheus(s: dict) -> str:
    lines = []

    def metric(name: str, kind: str, help_text: str, value) -> None:
        lines.extend([f"# HELP atelier_{name} {help_text}", f"# TYPE atelier_{name} {kind}", f"atelier_{name} {value}"])

    metric("queue_depth", "gauge", "Requests waiting for a KV row.", s["queue_depth"])
    metric("active_sequences", "gauge", "Sequences being generated.", s["active_sequences"])
    metric("kv_rows_in_use", "gauge", "KV cache rows (sequence slots) in use.", s["kv_rows_in_use"])
    metric("kv_rows_total", "gauge", "KV cache rows (sequence slots) in all.", s["kv_rows_total"])
    metric(
        "decode_tokens_per_second",
        "gauge",
        "Generated tokens per second over the last 10 s.",
        f"{s['decode_tokens_per_second']:.2f}",
    )
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


# --- start-up ---------------------------------------------------------------------------------------


def resolve_model_dir(models_root: Path, name: str, variant: str) -> Path:
    """The newest built artifact of name/variant in the registry's directory (its manifest says which)."""
    candidates = []
    for manifest_path in (models_root / name).glob("*/manifest.json"):
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("variant") == variant:
            candidates.append((manifest.get("created_at", ""), manifest_path.parent / "onnx"))
    if not candidates:
        raise SystemExit(
            f"no {name} {variant} model under {models_root}; build it first: python manage.py bootstrap_models"
        )
    return max(candidates)[1]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def build_runtime(*, model_dir: Path, embedding_dir: Path | None, device: str | None = None) -> Runtime:
    decoder = DecoderSession(
        model_dir,
        max_rows=_env_int("INFERENCE_MAX_SEQS", 16),
        capacity=_env_int("INFERENCE_CONTEXT", 2048),
        device=device,
        threads=_env_int("INFERENCE_THREADS", 0) or None,
    )
    tokenizer = ChatTokenizer(model_dir)
    adapters = None
    if decoder.lora is not None:
        adapters = AdapterBank(
            decoder.config, slots=_env_int("INFERENCE_LORA_SLOTS", 8), max_rank=_env_int("INFERENCE_LORA_MAX_RANK", 16)
        )
    engine = Engine(
        decoder,
        tokenizer,
        adapters=adapters,
        max_queue=_env_int("INFERENCE_MAX_QUEUE", 64),
        prefill_chunk=_env_int("INFERENCE_PREFILL_CHUNK", 256),
    )
    embedder = Embedder(embedding_dir) if embedding_dir else None
    return Runtime(engine=engine, tokenizer=tokenizer, adapters=adapters, embedder=embedder)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Atelier's OpenAI-compatible inference server")
    parser.add_argument("--host", default=os.environ.get("INFERENCE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=_env_int("INFERENCE_PORT", 8001))
    parser.add_argument("--models-root", type=Path, default=Path(os.environ.get("ATELIER_MODELS_DIR", "var/models")))
    parser.add_argument("--model-dir", type=Path, help="the decoder's onnx directory (default: newest q4 build)")
    parser.add_argument("--embedding-dir", type=Path, help="the embedding model's onnx directory")
    args = parser.parse_args(argv)

    api_key = os.environ.get("INFERENCE_API_KEY") or None
    if not api_key and not _is_loopback(args.host):
        raise SystemExit(f"refusing to listen on {args.host} without INFERENCE_API_KEY: anyone could use the model")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_dir = args.model_dir or resolve_model_dir(args.models_root, CHAT_MODEL, "q4")
    embedding_dir = args.embedding_dir or resolve_model_dir(args.models_root, EMBEDDING_MODEL, "fp32")
    runtime = build_runtime(model_dir=model_dir, embedding_dir=embedding_dir)
    log.info(
        "serving %s from %s on %s (%d rows x %d tokens)",
        CHAT_MODEL,
        model_dir,
        runtime.engine.decoder.device,
        runtime.engine.decoder.max_rows,
        runtime.engine.capacity,
    )
    app = create_app(runtime, api_key=api_key)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        runtime.engine.shutdown()


if __name__ == "__main__":
    main()
