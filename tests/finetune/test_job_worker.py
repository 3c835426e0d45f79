"""Fine-tune jobs in real Celery worker processes on the `finetune` queue, with the tiny model:
- a LoRA trained by a worker is loaded hot into a real inference server (the tiny model's own), whose logits
  then match PEFT's with that adapter; once the server forgets it, the inference client loads it again;
- a worker SIGKILLed mid-training leaves a running job that beat's sweep fails as retryable, and the retry,
  on another worker, resumes from the checkpoint and ends with exactly the adapter of an uninterrupted run.
"""

import asyncio
import copy
import os
import signal
import socket
import time
from contextlib import contextmanager

import httpx
import numpy as np
import psutil
import pytest
import torch
from django.conf import settings
from peft import PeftModel
from safetensors.torch import load_file

from apps.core.inference_client import (
    adapter_fields,
    inference_chat,
    inference_chat_async,
    inference_chat_stream,
    inference_chat_stream_async,
)
from apps.finetune.jobs import WORKER_LOST, checkpoint_dir, training_settings_from_dict
from apps.finetune.models import Adapter, FineTuneJob, JobStatus
from apps.finetune.services import finetune_job_create, finetune_job_retry, finetune_jobs_fail_stale
from apps.finetune.training import train_sft
from inference.tokenizer import ChatTokenizer
from tests.conftest import celery_worker
from tests.factories import make_assistant, make_user
from tests.finetune.conftest import conversation, session_worker_off_finetune
from tests.finetune.factories import make_base_model, make_dataset_version

FAST = {"rank": 4, "alpha": 8, "learning_rate": 1e-2, "batch_size": 3, "max_length": 160}
CONVERSATIONS = [conversation(i) for i in range(12)]
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@contextmanager
def finetune_worker(name: str, *, inference_url: str):
    """A real worker on `finetune` only, while the session's worker lets go of the queue. Queue the job inside
    the block: once it ends the session's worker consumes `finetune` again, and a job it took would run with
    the session's FINETUNE_DIR (not this test's) on the real engine."""
    env = {
        "INFERENCE_URL": inference_url,
        "ATELIER_FINETUNE_DIR": str(settings.FINETUNE_DIR),
        "FINETUNE_ADAPTERS_DIR": str(settings.FINETUNE_ADAPTERS_DIR),
        "FINETUNE_TORCH_THREADS": "1",  # the comparison run below uses one thread too: bit-for-bit equal
    }
    with (
        session_worker_off_finetune(),
        celery_worker(f"{name}-{os.getpid()}", queues=("finetune",), env=env) as process,
    ):
        yield process


def wait_for(predicate, *, timeout: float, what: str, process=None):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert process is None or process.poll() is None, f"the worker died before {what}"
        time.sleep(0.02)
    return value


@pytest.fixture
def tiny_job(tiny_chat, settings, tmp_path):
    settings.FINETUNE_DIR, settings.FINETUNE_ADAPTERS_DIR = tmp_path / "finetune", tmp_path / "adapters"
    owner = make_user("ada")
    base = make_base_model(tiny_chat["root"])
    version = make_dataset_version(owner, records=CONVERSATIONS, hf_dir=tiny_chat["hf_dir"])
    assistant = make_assistant(owner, base_model=base)

    def create(**chosen) -> FineTuneJob:
        return finetune_job_create(
            owner=owner, dataset_version=version, method="sft", settings={**FAST, **chosen}, assistant=assistant
        )

    return create


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_lora_trained_by_a_real_worker_is_served_hot_like_peft(tiny_chat, tiny_inference_server, tiny_job, settings):
    server = tiny_inference_server
    with finetune_worker("finetune", inference_url=server) as worker:
        job = tiny_job(epochs=2)
        wait_for(
            lambda: FineTuneJob.objects.filter(pk=job.pk, status__in=ENDED).exists(),
            timeout=180,
            what="the job",
            process=worker,
        )
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.message
    adapter = Adapter.objects.get(job=job)
    assert f"Loaded into the engine as {adapter.engine_id}." in job.log_lines.values_list("message", flat=True)
    served_models = [m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]]
    assert adapter.engine_id in served_models  # loaded hot: the server never restarted

    tokenizer = ChatTokenizer(tiny_chat["hf_dir"])
    messages = [{"role": "user", "content": "Tell me about place 3."}]
    prompt = tokenizer.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer.chat_prompt(messages)])
    peft = PeftModel.from_pretrained(copy.deepcopy(tiny_chat["model"]), adapter.path).eval()
    with torch.no_grad():
        want = torch.log_softmax(peft(ids).logits[0, -1], -1)
        with peft.disable_adapter():
            base = torch.log_softmax(peft(ids).logits[0, -1], -1)

    def top(model: str) -> np.ndarray:
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5}
        answer = httpx.post(f"{server}/v1/completions", json=body, timeout=60).json()
        return np.array(sorted(answer["choices"][0]["logprobs"]["top_logprobs"][0].values(), reverse=True))

    served = top(adapter.engine_id)
    np.testing.assert_allclose(served, want.topk(5).values.numpy(), atol=1e-3)
    assert np.abs(want.topk(5).values.numpy() - base.topk(5).values.numpy()).max() > 0.05  # a real change
    np.testing.assert_allclose(top("smollm2-135m-instruct"), base.topk(5).values.numpy(), atol=1e-3)

    # The engine forgets it (a restart, or an eviction): the client loads it again and answers.
    assert httpx.delete(f"{server}/v1/adapters/{adapter.engine_id}").status_code == 200
    settings.INFERENCE_URL = server
    body = {**adapter_fields(engine_id=adapter.engine_id, path=adapter.path), "messages": messages, "max_tokens": 2}

    def loaded() -> bool:
        return adapter.engine_id in [m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]]

    assert inference_chat(body=body)["choices"][0]["message"]["content"] is not None and loaded()
    # the same for a stream (chat, the arena) and for the async calls (the API)
    for call in (
        lambda: list(inference_chat_stream(body=body)),
        lambda: asyncio.run(inference_chat_async(body=body))["choices"],
        lambda: asyncio.run(_drain(inference_chat_stream_async(body=body))),
    ):
        assert httpx.delete(f"{server}/v1/adapters/{adapter.engine_id}").status_code == 200 and not loaded()
        assert call() and loaded()


async def _drain(stream) -> list[dict]:
    return [chunk async for chunk in await stream]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_leaves_a_job_that_beat_fails_and_a_retry_resumes_exactly(tiny_chat, tiny_job, settings):
    no_engine = "http://127.0.0.1:9"
    with finetune_worker("doomed", inference_url=no_engine) as worker:
        job = tiny_job(epochs=10)  # 40 steps, a checkpoint every 10
        every = job.settings["checkpoint_every"]
        wait_for(
            lambda: FineTuneJob.objects.filter(pk=job.pk, step__gt=every).exists(),
            timeout=180,
            what="a step past the first checkpoint",
            process=worker,
        )
        for process in [*psutil.Process(worker.pid).children(recursive=True), worker]:
            process.send_signal(signal.SIGKILL)
        worker.wait(10)
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and every < job.step < job.total_steps
    assert (checkpoint_dir(job) / "checkpoint" / "state.json").is_file()

    time.sleep(1.5)
    settings.FINETUNE_STALE_SECONDS = 1
    # The killed worker's database session may still hold the job's row lock for a moment (Postgres notices
    # the dead client on its own time), and the sweep skips locked rows: beat's next sweeps get it.
    failed = []
    wait_for(lambda: failed.append(finetune_jobs_fail_stale()) or sum(failed) > 0, timeout=30, what="the sweep")
    assert sum(failed) == 1
    job.refresh_from_db()
    assert (job.status, job.message) == (JobStatus.FAILED, WORKER_LOST)

    with finetune_worker("survivor", inference_url=no_engine) as worker:
        finetune_job_retry(job=job)
        wait_for(
            lambda: FineTuneJob.objects.filter(pk=job.pk, status__in=ENDED).exists(),
            timeout=180,
            what="the retried job",
            process=worker,
        )
        survivor = {f"{socket.gethostname()}:{p.pid}" for p in psutil.Process(worker.pid).children(recursive=True)}
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2, job.message
    assert job.worker in survivor  # the retry ran on the survivor, with this test's FINETUNE_DIR
    resumed = [m for m in job.log_lines.values_list("message", flat=True) if m.startswith("resumed from")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1]) >= every
    assert job.metric_points.filter(kind="train").count() == job.total_steps  # no step lost, none twice

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        whole = train_sft(
            base_model_dir=tiny_chat["hf_dir"],
            examples=CONVERSATIONS,
            out_dir=settings.FINETUNE_DIR / "uninterrupted",
            settings=training_settings_from_dict(job.settings),
        )
    finally:
        torch.set_num_threads(threads)
    want = load_file(whole.adapter_dir / "adapter_model.safetensors")
    got = load_file(f"{Adapter.objects.get(job=job).path}/adapter_model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
