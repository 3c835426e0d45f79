"""Atelier's OpenAI-compatible inference server: python -m inference.server (127.0.0.1:8001).

    GET    /v1/models              the base model, the embedding model and the loaded adapters
    POST   /v1/chat/completions    chat, with SSE streaming, logprobs and n
    POST   /v1/completions         raw continuation: the base model as a "document simulator"
    POST   /v1/embeddings          all-MiniLM-L6-v2
    POST   /tokenize               count tokens of text, of a chat through its template, or of several
                                   chats at once (`conversations`: the web app's prompt budget)
    POST   /v1/adapters            load a PEFT LoRA adapter (safetensors) from a directory
    DELETE /v1/adapters/{id}       unload it
    GET    /health, GET /metrics   liveness, and Prometheus metrics

Errors always have OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The code reads top to bottom in three files: this one starts the server (finds the built model by its
manifest, reads the environment and the command line), routes.py holds the routes, wire.py OpenAI's
request and response formats. None of them imports the code that builds models (onnx, gguf, export).
"""

import argparse
import ipaddress
import json
import logging
import os
from pathlib import Path

from inference.adapters import AdapterBank
from inference.embeddings import Embedder
from inference.routes import CHAT_MODEL, EMBEDDING_MODEL, Runtime, create_app
from inference.scheduler import Engine
from inference.session import DecoderSession
from inference.tokenizer import ChatTokenizer

log = logging.getLogger("inference.server")


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
