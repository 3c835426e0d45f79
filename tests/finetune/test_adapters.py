"""Adapters on the Django side: the version's foreign key and the engine body, attaching (a new version),
the safetensors-only upload, the owner-only pages and API (IDOR), and the arena button."""

import hashlib
import io
import json
import random

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse
from transformers import LlamaConfig, LlamaForCausalLM

from apps.accounts.services import api_key_create
from apps.arena.models import Battle, Mode
from apps.assistants.engine import engine_settings
from apps.assistants.models import AssistantVersion
from apps.assistants.services import AssistantConfig, AssistantError, assistant_update
from apps.finetune.models import Adapter, AdapterSource
from apps.finetune.services import AdapterError, adapter_arena_enter, adapter_attach
from apps.finetune.training import train_sft
from apps.finetune.training_settings import LoraSettings, TrainingSettings
from tests.factories import make_assistant, make_user, signed_in
from tests.finetune.adapter_records import peft_adapter, tiny_base_model, trained_adapter, upload
from tests.finetune.conftest import conversation
from tests.html_tree import html_parse

TRAINING = TrainingSettings(
    lora=LoraSettings(rank=4, alpha=8),
    learning_rate=1e-2,
    epochs=1,
    batch_size=4,
    max_length=160,
    precision="fp32",
    validation_fraction=0.2,
)
CONVERSATIONS = [conversation(i) for i in range(12)]


@pytest.fixture(scope="module")
def tiny_lora(tiny_chat, tmp_path_factory):
    """A LoRA trained by the trainer on the tiny model (seconds)."""
    out = tmp_path_factory.mktemp("lora") / "adapter"
    return train_sft(base_model_dir=tiny_chat["hf_dir"], examples=CONVERSATIONS, out_dir=out, settings=TRAINING)


@pytest.fixture
def base(tiny_chat, settings, tmp_path):
    settings.FINETUNE_ADAPTERS_DIR = tmp_path / "adapters"
    settings.FINETUNE_ADAPTERS_DIR.mkdir()
    return tiny_base_model(tiny_chat)


@pytest.fixture
def ada():
    return make_user("ada")


@pytest.fixture
def bob():
    return make_user("bob")


@pytest.fixture
def ada_adapter(ada, base, tiny_lora):
    return trained_adapter(
        owner=ada, base_model=base, adapter_dir=tiny_lora.adapter_dir, examples=CONVERSATIONS, training=TRAINING
    )


# --- the foreign key ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_applies_on_rows_and_drops_the_free_strings(stub_chat_model):
    executor = MigrationExecutor(connection)
    before, after = ("assistants", "0002_knowledge_retrieval_settings"), ("assistants", "0003_adapter_foreign_key")
    executor.migrate([before])
    old = executor.loader.project_state([before]).apps
    owner = make_user("old")  # accounts is not rolled back: today's model
    assistant = old.get_model("assistants", "Assistant").objects.create(owner_id=owner.pk, slug="old-one")
    old.get_model("assistants", "AssistantVersion").objects.create(
        assistant=assistant, number=1, name="Old", base_model_id=stub_chat_model.pk, adapter="someone-elses-lora"
    )
    executor = MigrationExecutor(connection)
    executor.migrate([after])
    new = executor.loader.project_state([after]).apps
    version = new.get_model("assistants", "AssistantVersion").objects.get(assistant__slug="old-one")
    assert version.adapter_id is None
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # the rest of the suite runs on the latest schema


@pytest.mark.django_db
def test_the_engine_body_names_the_adapters_engine_id_else_the_base_model(ada, base, ada_adapter):
    assistant = make_assistant(ada, base_model=base)
    assert engine_settings(version=assistant.current_version)["model"] == base.name
    version = adapter_attach(assistant=assistant, adapter=ada_adapter, actor=ada)
    version = AssistantVersion.objects.get(pk=version.pk)
    assert engine_settings(version=version)["model"] == ada_adapter.engine_id
    # What reloading a lost adapter needs is reachable from the version.
    assert (version.adapter.engine_id, version.adapter.path) == (ada_adapter.engine_id, ada_adapter.path)
    config = AssistantConfig(name="Unsaved", base_model=base, adapter=ada_adapter)  # the builder's preview
    assert engine_settings(version=config)["model"] == ada_adapter.engine_id


# --- attaching -----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_attaching_makes_the_next_version_a_copy_with_the_adapter(ada, base, ada_adapter):
    assistant = make_assistant(ada, base_model=base, instructions="Be brief.", temperature=0.3)
    first = assistant.current_version
    version = adapter_attach(assistant=assistant, adapter=ada_adapter, actor=ada)
    assistant.refresh_from_db()
    assert assistant.current_version_id == version.pk
    assert (version.number, version.adapter_id) == (first.number + 1, ada_adapter.pk)
    assert (version.instructions, version.temperature, version.base_model_id) == ("Be brief.", 0.3, base.pk)
    assert AssistantVersion.objects.get(pk=first.pk).adapter_id is None  # the old version is untouched
    with pytest.raises(AdapterError, match="already uses"):
        adapter_attach(assistant=assistant, adapter=ada_adapter, actor=ada)


@pytest.mark.django_db
def test_only_the_owner_attaches_to_their_own_assistant_on_the_same_base_model(
    ada, bob, base, ada_adapter, stub_chat_model
):
    bobs = make_assistant(bob, base_model=base)
    with pytest.raises(AdapterError):
        adapter_attach(assistant=bobs, adapter=ada_adapter, actor=bob)  # not his adapter
    with pytest.raises(AdapterError):
        adapter_attach(assistant=bobs, adapter=ada_adapter, actor=ada)  # not her assistant
    other_model = make_assistant(ada, base_model=stub_chat_model)
    with pytest.raises(AdapterError, match="was made for"):
        adapter_attach(assistant=other_model, adapter=ada_adapter, actor=ada)
    assert AssistantVersion.objects.filter(adapter=ada_adapter).count() == 0
    # The assistants' own services refuse another user's adapter too (the API and the builder call them).
    with pytest.raises(AssistantError, match="your own fine-tunes"):
        assistant_update(
            assistant=bobs,
            actor=bob,
            config=AssistantConfig(name="Bob's", base_model=base, adapter=ada_adapter),
            visibility=bobs.visibility,
        )


@pytest.mark.django_db
def test_the_adapter_page_attaches_and_the_builder_offers_only_own_adapters(ada, bob, base, ada_adapter):
    assistant = make_assistant(ada, base_model=base)
    client = signed_in(ada)
    response = client.post(reverse("finetune:adapter_attach", args=[ada_adapter.pk]), {"assistant": assistant.pk})
    assert response.status_code == 302 and response.url == reverse("assistants:edit", args=[assistant.slug])
    assistant.refresh_from_db()
    assert assistant.current_version.adapter_id == ada_adapter.pk
    page = html_parse(client.get(reverse("assistants:edit", args=[assistant.slug])).content.decode())
    select = next(e for e in page.find_all("select") if e.attrs.get("name") == "adapter")
    choices = {o.attrs["value"]: o.attrs for o in select.find_all("option")}
    assert set(choices) == {"", str(ada_adapter.pk)} and "selected" in choices[str(ada_adapter.pk)]

    # Bob's builder: Ada's adapter id posted is not one of his choices, and nothing is saved.
    bobs = make_assistant(bob, base_model=base)
    form = {"name": "Bob's", "base_model": base.pk, "adapter": ada_adapter.pk, "temperature": "0.7", "top_p": "0.9",
            "max_tokens": "64", "repetition_penalty": "1.1", "visibility": "private"}  # fmt: skip
    response = signed_in(bob).post(reverse("assistants:edit", args=[bobs.slug]), form)
    assert response.status_code == 200
    bobs.refresh_from_db()
    assert bobs.current_version.number == 1 and bobs.current_version.adapter_id is None
    # Ada's adapter page: Bob's assistant is not one of her choices; the page says what to choose.
    attach = reverse("finetune:adapter_attach", args=[ada_adapter.pk])
    response = client.post(attach, {"assistant": bobs.pk}, follow=True)
    assert [str(m) for m in response.context["messages"]] == [f"Choose one of your assistants on {base}."]
    assert bobs.versions.count() == 1


# --- uploads ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_real_peft_safetensors_adapter_is_accepted_stored_and_hashed(ada, base, tiny_chat, tmp_path, settings):
    files = peft_adapter(tiny_chat["model"], tmp_path / "peft")
    adapter = upload(ada, base, **files)
    adapter.refresh_from_db()
    stored = settings.FINETUNE_ADAPTERS_DIR / adapter.engine_id
    assert adapter.source == AdapterSource.UPLOADED and adapter.path == str(stored)
    assert (stored / "adapter_model.safetensors").read_bytes() == files["weights"]
    assert adapter.sha256 == hashlib.sha256(files["weights"]).hexdigest()
    assert adapter.config["r"] == 4 and adapter.base_model_hash == base.content_hash
    assert not any((settings.FINETUNE_ADAPTERS_DIR / ".staging").iterdir())  # renamed out of staging
    second = upload(ada, base, **files, name="Imported again")
    assert second.engine_id != adapter.engine_id


def _refused(owner, base, settings, *, weights: bytes, config: bytes) -> str:
    with pytest.raises(AdapterError) as refused:
        upload(owner, base, weights=weights, config=config)
    assert not Adapter.objects.exists()
    assert [p.name for p in settings.FINETUNE_ADAPTERS_DIR.iterdir() if p.name != ".staging"] == []
    return str(refused.value)


@pytest.mark.django_db
def test_pickles_and_zips_are_refused_even_named_safetensors(ada, base, tiny_chat, tmp_path, settings):
    files = peft_adapter(tiny_chat["model"], tmp_path / "peft")
    state = {k: v for k, v in tiny_chat["model"].state_dict().items() if "layers.0" in k}
    pickled, zipped = io.BytesIO(), io.BytesIO()
    torch.save(state, pickled, _use_new_zipfile_serialization=False)
    torch.save(state, zipped)
    assert "pickle" in _refused(ada, base, settings, weights=pickled.getvalue(), config=files["config"])
    assert "zip" in _refused(ada, base, settings, weights=zipped.getvalue(), config=files["config"])
    message = _refused(ada, base, settings, weights=files["weights"] + b"\0" * 16, config=files["config"])
    assert "trailing or missing bytes" in message  # a payload appended after the tensors


@pytest.mark.django_db
def test_an_adapter_for_another_model_shape_is_refused(ada, base, tmp_path, settings):
    narrow = LlamaForCausalLM(
        LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    files = peft_adapter(narrow, tmp_path / "narrow")
    assert "different base model" in _refused(ada, base, settings, **files)


@pytest.mark.django_db
def test_an_upload_over_the_size_limit_is_refused(ada, base, tiny_chat, tmp_path, settings):
    settings.FINETUNE_ADAPTER_MAX_MB = 0
    files = peft_adapter(tiny_chat["model"], tmp_path / "peft")
    assert "limit" in _refused(ada, base, settings, **files)


# --- permissions (IDOR) ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_another_user_cannot_see_or_reach_an_adapter_by_id(ada, bob, base, ada_adapter):
    make_assistant(bob, base_model=base)
    bob_client = signed_in(bob)
    pk = ada_adapter.pk
    for name in ("finetune:adapter_detail", "finetune:adapter_evaluation"):
        assert bob_client.get(reverse(name, args=[pk])).status_code == 404
    for name in ("finetune:adapter_attach", "finetune:adapter_evaluate", "finetune:adapter_arena"):
        assert bob_client.post(reverse(name, args=[pk]), {"assistant": 1}).status_code == 404
    listing = bob_client.get(reverse("finetune:adapter_list")).content.decode()
    assert ada_adapter.name not in listing and ada_adapter.engine_id not in listing
    assert not ada_adapter.evaluations.exists() and not AssistantVersion.objects.filter(adapter=ada_adapter).exists()
    # Nor name it in his builder's live preview: refused before anything reaches the engine.
    bobs = make_assistant(bob, base_model=base, name="Bob's")
    form = {"name": "Bob's", "base_model": base.pk, "adapter": pk, "temperature": "0.7", "top_p": "0.9",
            "max_tokens": "64", "repetition_penalty": "1.1", "visibility": "private",
            "conversation": json.dumps([{"role": "user", "content": "hi"}])}  # fmt: skip
    response = bob_client.post(reverse("assistants:preview", args=[bobs.slug]), form)
    assert response.status_code == 400 and "not one of the available choices" in response.json()["error"]
    # The owner reaches every page, and queues an evaluation.
    ada_client = signed_in(ada)
    for name in ("finetune:adapter_detail", "finetune:adapter_evaluation"):
        assert ada_client.get(reverse(name, args=[pk])).status_code == 200
    response = ada_client.post(reverse("finetune:adapter_evaluate", args=[pk]))
    assert response.url == reverse("finetune:adapter_evaluation", args=[pk])
    assert ada_adapter.evaluations.get().status == "queued"


@pytest.mark.django_db
def test_the_api_never_serves_another_users_adapter_by_its_engine_id(ada, bob, base, ada_adapter):
    assistant = make_assistant(ada, base_model=base)
    adapter_attach(assistant=assistant, adapter=ada_adapter, actor=ada)
    _, key = api_key_create(user=bob, name="laptop")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    client = Client()
    for model in (ada_adapter.engine_id, assistant.slug):  # the engine's id, and her private assistant
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        response = client.post(
            reverse("api:chat_completions"), json.dumps(body), content_type="application/json", **headers
        )
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
        assert client.get(reverse("api:model", args=[model]), **headers).status_code == 404
    listed = [m["id"] for m in client.get(reverse("api:models"), **headers).json()["data"]]
    assert ada_adapter.engine_id not in listed and assistant.slug not in listed


# --- the arena ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_enter_into_my_arena_battles_the_new_version_against_the_one_before(ada, base, ada_adapter):
    assistant = make_assistant(ada, base_model=base)
    first = assistant.current_version
    client = signed_in(ada)
    page = client.get(reverse("finetune:adapter_detail", args=[ada_adapter.pk])).content.decode()
    assert reverse("finetune:adapter_arena", args=[ada_adapter.pk]) not in page  # not attached yet: no button
    new = adapter_attach(assistant=assistant, adapter=ada_adapter, actor=ada)
    page = client.get(reverse("finetune:adapter_detail", args=[ada_adapter.pk])).content.decode()
    assert reverse("finetune:adapter_arena", args=[ada_adapter.pk]) in page

    response = client.post(reverse("finetune:adapter_arena", args=[ada_adapter.pk]))
    battle = Battle.objects.get(user=ada)
    assert response.status_code == 302 and response.url == reverse("arena:battle", args=[battle.pk])
    assert battle.mode == Mode.PERSONAL and battle.named
    assert {battle.version_a_id, battle.version_b_id} == {new.pk, first.pk}
    # The prompt is one the fine-tune was trained on.
    assert battle.turns.get().prompt in {m["content"] for c in CONVERSATIONS for m in c["messages"]}
    # Both orders happen: the vote stays blind.
    sides = {
        adapter_arena_enter(adapter=ada_adapter, actor=ada, rng=random.Random(seed)).version_a_id for seed in range(8)
    }
    assert sides == {new.pk, first.pk}


@pytest.mark.django_db
def test_the_arena_needs_an_attached_adapter_with_a_previous_version(ada, base, ada_adapter):
    with pytest.raises(AdapterError, match="Attach"):
        adapter_arena_enter(adapter=ada_adapter, actor=ada)


@pytest.mark.django_db
def test_the_upload_page_stores_an_adapter_and_its_page_shows_the_provenance(
    ada, base, ada_adapter, tiny_chat, tmp_path
):
    client = signed_in(ada)
    files = peft_adapter(tiny_chat["model"], tmp_path / "peft")
    form = {
        "name": "From my laptop",
        "base_model": base.pk,
        "weights": SimpleUploadedFile("adapter_model.safetensors", files["weights"]),
        "config": SimpleUploadedFile("adapter_config.json", files["config"]),
    }
    response = client.post(reverse("finetune:adapter_upload"), form)
    uploaded = Adapter.objects.get(name="From my laptop")
    assert response.status_code == 302 and response.url == reverse("finetune:adapter_detail", args=[uploaded.pk])

    renamed = {
        **form,
        "name": "Sneaky",
        "weights": SimpleUploadedFile("adapter_model.safetensors", b"\x80\x02}q\x00."),  # a pickled {}
        "config": SimpleUploadedFile("adapter_config.json", files["config"]),
    }
    response = client.post(reverse("finetune:adapter_upload"), renamed)
    assert response.status_code == 200 and not Adapter.objects.filter(name="Sneaky").exists()
    assert "pickle" in response.content.decode()

    page = html_parse(client.get(reverse("finetune:adapter_detail", args=[ada_adapter.pk])).content.decode())
    fields = {e.attrs["data-field"]: e.text.strip() for e in page.iter() if "data-field" in e.attrs}
    assert fields["base_model_hash"] == base.content_hash and fields["sha256"] == ada_adapter.sha256
    assert str(ada_adapter.dataset_version) in fields["dataset_version"] and str(ada_adapter.job.pk) in fields["job"]
    assert json.loads(fields["config"]) == ada_adapter.config
