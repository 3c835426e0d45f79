"""A tiny Llama with a ChatML tokenizer (<|im_start|> and <|im_end|> as special tokens, SmolLM2's template):
trained in seconds, so the trainer's tests never need the real model; and a real inference server serving it."""

import os
import sys
from contextlib import contextmanager

import onnx
import pytest
from django.conf import settings

from inference.export import copy_tokenizer_files
from inference.graph import build_decoder, load_decoder_weights
from tests.conftest import free_port, service_process, wait_for_http
from tests.tiny_models import tiny_checkpoint, tiny_tokenizer

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@contextmanager
def session_worker_off_finetune():
    """The session's Celery worker (when an earlier test started one) lets go of the `finetune` queue inside
    the block. A job queued meanwhile is for this test's own runner (a thread, or a worker of its own with
    this test's FINETUNE_DIR); the session's worker would take it first and train it somewhere else."""
    from config.celery import app

    session = [f"test-{os.getpid()}@{os.uname().nodename}"]
    paused = bool(app.control.ping(timeout=0.5, destination=session))
    if paused:
        app.control.cancel_consumer("finetune", destination=session, reply=True)
    try:
        yield
    finally:
        if paused:
            app.control.add_consumer("finetune", destination=session, reply=True)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny_chat"), tokenizer=tokenizer)


@pytest.fixture(scope="session")
def tiny_inference_server(tiny_chat, tmp_path_factory):
    """`python -m inference.server` serving the tiny model (with LoRA banks) under the chat model's name."""
    engine_dir = tmp_path_factory.mktemp("tiny_engine")
    dense = load_decoder_weights(hf_dir=tiny_chat["hf_dir"], quantize=False)
    onnx.save(build_decoder(dense), engine_dir / "model.onnx")
    onnx.save(build_decoder(dense, lora=True), engine_dir / "model_lora.onnx")
    copy_tokenizer_files(tiny_chat["hf_dir"], engine_dir)
    port = free_port()
    argv = [sys.executable, "-m", "inference.server", "--port", str(port), "--model-dir", str(engine_dir)]
    argv += ["--models-root", str(settings.MODELS_DIR)]  # the embedding model it also serves
    env = {**os.environ, "INFERENCE_MAX_SEQS": "2", "INFERENCE_CONTEXT": "512", "INFERENCE_API_KEY": ""}
    with service_process("inference-tiny-server", argv, env) as process:
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(
            f"{base_url}/health", process, timeout=120, what=f"The tiny inference server ({process.log_path})"
        )
        yield base_url


def conversation(i: int) -> dict:
    """A small two-turn conversation whose length varies with i (so packing has something to do)."""
    words = " ".join(["the river runs past the old mill"] * (1, 8, 2, 5)[i % 4])
    return {
        "messages": [
            {"role": "user", "content": f"Tell me about place {i}."},
            {"role": "assistant", "content": f"Place {i}: {words}."},
            {"role": "user", "content": "And then?"},
            {"role": "assistant", "content": f"Then {words[: 10 + 3 * i]} again."},
        ]
    }


def preference_pair(i: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"Describe place {i}."}],
        "chosen": [{"role": "assistant", "content": f"Place {i} has a river and an old mill."}],
        "rejected": [{"role": "assistant", "content": "No." if i % 2 else "I do not know anything about it at all."}],
    }
