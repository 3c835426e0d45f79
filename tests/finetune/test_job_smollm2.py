"""A short real SmolLM2 fine-tune, as a job: a few dozen conversations in tests/finetune/data teach the assistant
that its name is Quillbert. The adapter, loaded hot into the real inference server, answers a question it was
not trained on with that name; the base model does not. Then the server forgets the adapter and the next
request, through the inference client, loads it again."""

import json
from pathlib import Path

import httpx
import pytest

from apps.core.inference_client import adapter_fields, inference_chat
from apps.finetune.models import Adapter, JobStatus
from apps.finetune.services import finetune_job_create, finetune_job_run
from apps.registry.catalog import SMOLLM2_FP32
from tests.factories import make_assistant, make_user
from tests.finetune.factories import make_dataset_version

DATA = Path(__file__).parent / "data" / "assistant_name.jsonl"
NAME = "Quillbert"
QUESTION = [{"role": "user", "content": "What is your name?"}]  # not among the training questions


def answer(model: dict) -> str:
    body = {**model, "messages": QUESTION, "max_tokens": 16, "temperature": 0}
    return inference_chat(body=body)["choices"][0]["message"]["content"]


@pytest.mark.slow
@pytest.mark.django_db
def test_a_short_smollm2_finetune_teaches_the_assistant_its_name(real_models, inference_server, settings, tmp_path):
    settings.FINETUNE_DIR, settings.FINETUNE_ADAPTERS_DIR = tmp_path / "finetune", tmp_path / "adapters"
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    assert QUESTION not in [r["messages"][:1] for r in records]
    owner = make_user("ada")
    hf_dir = real_models[(SMOLLM2_FP32.name, SMOLLM2_FP32.variant)] / "hf"
    version = make_dataset_version(owner, records=records, hf_dir=hf_dir, name="name")
    assistant = make_assistant(owner)  # on the served model; the job trains from the fp32 build's weights
    job = finetune_job_create(
        owner=owner, dataset_version=version, method="sft", settings={"learning_rate": 1e-3}, assistant=assistant
    )
    assert finetune_job_run(job_id=job.pk) == JobStatus.SUCCEEDED
    adapter = Adapter.objects.get(job=job)
    assert adapter.base_model == assistant.current_version.base_model
    # trained on the fp32 build's weights (its folder is named by its content hash), served on the q4 build
    assert adapter.config["trained_on"]["variant"] == "fp32" and adapter.base_model_hash.startswith(hf_dir.parent.name)
    assert f"Loaded into the engine as {adapter.engine_id}." in job.log_lines.values_list("message", flat=True)
    tuned = adapter_fields(engine_id=adapter.engine_id, path=adapter.path)
    assert NAME in answer(tuned)
    assert NAME not in answer({"model": assistant.current_version.base_model.name})

    assert httpx.delete(f"{inference_server}/v1/adapters/{adapter.engine_id}").status_code == 200
    assert NAME in answer(tuned)  # loaded again by the client, on the 404
