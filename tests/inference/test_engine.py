"""The engine's decoder graph, LoRA banks and scheduler on a tiny trained Llama (seconds, no Django).

References are independent of the code under test: the torch model itself, a PEFT adapter merged into
it by PEFT, and plain numpy for the dequantized weights.
"""

import asyncio
import dataclasses
import json
import threading

import numpy as np
import onnx
import pytest
import torch
from peft import LoraConfig, get_peft_model

from inference.adapters import AdapterBank, AdapterError, AdaptersBusy
from inference.graph import build_decoder, export_engine_decoder, load_decoder_weights
from inference.quantize import LinearWeights
from inference.sampler import SamplingParams
from inference.scheduler import Engine, GenerationRequest, PromptTooLong, QueueFull
from inference.session import DecoderSession
from inference.tokenizer import ChatTokenizer
from tests.tiny_models import tiny_checkpoint

PROMPT = [5, 17, 42, 99, 3, 250, 7, 8, 61, 120, 33]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    checkpoint = tiny_checkpoint(root)
    dense = load_decoder_weights(hf_dir=checkpoint["hf_dir"], quantize=False)
    for name, model in (("dense", build_decoder(dense)), ("dense_lora", build_decoder(dense, lora=True))):
        (root / name).mkdir()
        onnx.save(model, root / name / "model.onnx")
    (root / "dense_lora" / "model.onnx").rename(root / "dense_lora" / "model_lora.onnx")
    onnx.save(build_decoder(dense), root / "dense_lora" / "model.onnx")
    export_engine_decoder(hf_dir=checkpoint["hf_dir"], gguf_path=None, out_dir=root / "q4", progress=lambda *_: None)
    return {**checkpoint, "root": root}


def torch_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_prefill_matches_torch_at_every_position(tiny):
    session = DecoderSession(tiny["root"] / "dense", max_rows=2, capacity=64)
    got = session.forward(
        np.array([PROMPT]), start=1, lengths=np.array([len(PROMPT)]), logits_index=np.arange(len(PROMPT))
    )
    np.testing.assert_allclose(got[0], torch_logits(tiny["model"], PROMPT), atol=2e-4)


def test_chunked_prefill_and_batched_decode_at_different_lengths_match_torch(tiny):
    session = DecoderSession(tiny["root"] / "dense", max_rows=3, capacity=64)
    short, long = PROMPT[:4], PROMPT
    # Row 0: the long prompt in two chunks; row 2: the short one; row 1 stays empty.
    session.forward(np.array([long[:6]]), start=0, lengths=np.array([6]), logits_index=np.array([5]))
    session.forward(np.array([long[6:]]), start=0, lengths=np.array([len(long)]), logits_index=np.array([4]))
    session.forward(np.array([short]), start=2, lengths=np.array([4]), logits_index=np.array([3]))
    step = session.forward(
        np.array([[11], [0], [12]]),
        start=0,
        lengths=np.array([len(long) + 1, 1, 5]),
        logits_index=np.array([0]),
    )
    np.testing.assert_allclose(step[0, 0], torch_logits(tiny["model"], [*long, 11])[-1], atol=2e-4)
    np.testing.assert_allclose(step[2, 0], torch_logits(tiny["model"], [*short, 12])[-1], atol=2e-4)


def test_steps_on_the_same_rows_with_other_shapes_reuse_the_binding_correctly(tiny):
    # forward() keeps one IOBinding per row range; every step's logits must still be that step's own,
    # whatever the number of tokens and of logits positions asked for.
    session = DecoderSession(tiny["root"] / "dense", max_rows=2, capacity=64)
    ids = [*PROMPT, 11, 12]
    n = len(PROMPT)
    first = session.forward(np.array([PROMPT]), start=1, lengths=np.array([n]), logits_index=np.arange(n))
    step = session.forward(np.array([[11]]), start=1, lengths=np.array([n + 1]), logits_index=np.array([0]))
    last = session.forward(np.array([[12]]), start=1, lengths=np.array([n + 2]), logits_index=np.array([0]))
    again = session.forward(np.array([PROMPT[:3]]), start=1, lengths=np.array([3]), logits_index=np.arange(3))
    expected = torch_logits(tiny["model"], ids)
    assert first.shape[1] == n and step.shape[1] == 1 and again.shape[1] == 3
    np.testing.assert_allclose(first[0], expected[:n], atol=2e-4)
    np.testing.assert_allclose(step[0, 0], expected[n], atol=2e-4)
    np.testing.assert_allclose(last[0, 0], expected[n + 1], atol=2e-4)
    np.testing.assert_allclose(again[0], expected[:3], atol=2e-4)
    np.testing.assert_allclose(first[0], expected[:n], atol=2e-4)  # an earlier result is not overwritten


def test_the_span_copy_graph_is_what_onnx_builds():
    # session.py carries it serialized so that serving never imports onnx; it must stay this graph.
    from onnx import TensorProto, helper

    from inference.session import SPAN_COPY_GRAPH

    vector = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n"]) for name in ("source", "target")]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["source"], ["target"])], "row_copy", [vector[0]], [vector[1]]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert model.SerializeToString() == SPAN_COPY_GRAPH


def test_copy_rows_copies_a_prefix_on_the_caches_device_and_decodes_the_same(tiny):
    session = DecoderSession(tiny["root"] / "dense", max_rows=3, capacity=64)
    n = len(PROMPT)
    session.forward(np.array([PROMPT]), start=0, lengths=np.array([n]), logits_index=np.array([n - 1]))
    session.forward(np.array([[9, 9, 9]]), start=2, lengths=np.array([3]), logits_index=np.array([2]))  # not a prefix
    before = [layer[2, :, n:].copy() for layer in session.cache]
    session.copy_rows(source=0, target=2, length=n)
    for layer, beyond in zip(session.cache, before, strict=True):
        np.testing.assert_array_equal(layer[2, :, :n], layer[0, :, :n])
        np.testing.assert_array_equal(layer[2, :, n:], beyond)  # only the prefix moved
    step = session.forward(
        np.array([[11], [0], [11]]), start=0, lengths=np.array([n + 1, 1, n + 1]), logits_index=np.array([0])
    )
    np.testing.assert_allclose(step[2, 0], step[0, 0], atol=1e-6)
    np.testing.assert_allclose(step[0, 0], torch_logits(tiny["model"], [*PROMPT, 11])[-1], atol=2e-4)
    with pytest.raises(IndexError):
        session.copy_rows(source=0, target=3, length=n)


def test_quantized_graph_computes_exactly_its_dequantized_weights(tiny):
    # The q4 graph (MatMulNBits + offset correction, int8 activations) against a dense graph holding the
    # very weights the blocks decode to: only activation rounding may differ.
    quantized = load_decoder_weights(hf_dir=tiny["hf_dir"])

    def densify(w: LinearWeights) -> LinearWeights:
        return LinearWeights(w.k, w.n, "dense", dense=np.ascontiguousarray(w.dequantized()))

    dense = dataclasses.replace(
        quantized,
        lm_head=densify(quantized.lm_head),
        linears=[{g: densify(w) for g, w in layer.items()} for layer in quantized.linears],
    )
    root = tiny["root"]
    (root / "dequantized").mkdir(exist_ok=True)
    onnx.save(build_decoder(dense), root / "dequantized" / "model.onnx")
    reference = DecoderSession(root / "dequantized", max_rows=1, capacity=64)
    served = DecoderSession(root / "q4", max_rows=1, capacity=64)
    args = {"start": 0, "lengths": np.array([len(PROMPT)]), "logits_index": np.arange(len(PROMPT))}
    want, got = reference.forward(np.array([PROMPT]), **args), served.forward(np.array([PROMPT]), **args)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9
    # ...and the packing itself is exact: dequantizing it gives gguf's own Q4_1 reconstruction.
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize
    from safetensors.numpy import load_file

    q_weight = load_file(tiny["hf_dir"] / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    expected = dequantize(quantize(q_weight, GGMLQuantizationType.Q4_1), GGMLQuantizationType.Q4_1)
    packed = quantized.linears[0]["qkv"].dequantized()[:, : q_weight.shape[0]]
    np.testing.assert_allclose(packed, expected.T, atol=1e-6)


@pytest.fixture(scope="module")
def peft_adapter(tiny, tmp_path_factory):
    """A real PEFT LoRA on every projection, with non-zero B, saved as safetensors; and PEFT's merge."""
    torch.manual_seed(1)
    base = tiny["model"]
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,  # random A and B: the default B = 0 would make any bug invisible
    )
    import copy

    peft_model = get_peft_model(copy.deepcopy(base), config)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path, safe_serialization=True)
    merged = peft_model.merge_and_unload().eval()
    return {"path": path, "merged": merged}


def test_banked_lora_rows_match_peft_merged_and_base_in_one_batch(tiny, peft_adapter):
    session = DecoderSession(tiny["root"] / "dense_lora", max_rows=2, capacity=64)
    bank = AdapterBank(session.config, slots=2, max_rank=8)
    bank.load("tuned", peft_adapter["path"])
    slot = bank.acquire("tuned")
    from inference.session import Lora

    lora = Lora(index=np.array([slot, 0]), banks=bank.banks)
    ids = np.array([PROMPT, PROMPT])
    got = session.forward(
        ids, start=0, lengths=np.array([len(PROMPT)] * 2), logits_index=np.arange(len(PROMPT)), lora=lora
    )
    merged = torch_logits(peft_adapter["merged"], PROMPT)
    base = torch_logits(tiny["model"], PROMPT)
    assert np.abs(merged - base).max() > 0.05  # the adapter really changes the model
    np.testing.assert_allclose(got[0], merged, atol=5e-4)
    np.testing.assert_allclose(got[1], base, atol=5e-4)


@pytest.fixture(scope="module")
def qv_adapter(tiny, tmp_path_factory):
    """A narrower PEFT LoRA: rank 2 on q_proj and v_proj only (the common recipe)."""
    import copy

    torch.manual_seed(2)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(tiny["model"]), config)
    path = tmp_path_factory.mktemp("qv_adapter")
    peft_model.save_pretrained(path, safe_serialization=True)
    return {"path": path, "merged": peft_model.merge_and_unload().eval()}


@pytest.fixture(scope="module")
def down_adapter(tiny, tmp_path_factory):
    """Rank 4 on down_proj only: its rank must not widen the other groups' bands."""
    import copy

    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(tiny["model"]), config)
    path = tmp_path_factory.mktemp("down_adapter")
    peft_model.save_pretrained(path, safe_serialization=True)
    return {"path": path, "merged": peft_model.merge_and_unload().eval()}


def test_banks_are_sized_to_the_loaded_adapters_and_rows_still_match_peft(tiny, peft_adapter, qv_adapter):
    from inference.session import Lora

    session = DecoderSession(tiny["root"] / "dense_lora", max_rows=3, capacity=64)
    bank = AdapterBank(session.config, slots=2, max_rank=8)
    assert {name: array.shape[-1] for name, array in bank.banks.items() if name.endswith(".A")} == {
        "lora.qkv.A": 0, "lora.o.A": 0, "lora.gate_up.A": 0, "lora.down.A": 0
    }  # fmt: skip
    bank.load("qv", qv_adapter["path"])
    assert bank.layout == {"qkv": (2, ("q_proj", "v_proj")), "o": (0, ()), "gate_up": (0, ()), "down": (0, ())}
    qv_banks = bank.banks
    qv_snapshot = {name: array.copy() for name, array in qv_banks.items()}

    def forward(index):
        ids = np.array([PROMPT] * len(index))
        lora = Lora(index=np.array(index), banks=bank.banks)
        lengths = np.array([len(PROMPT)] * len(index))
        return session.forward(ids, start=0, lengths=lengths, logits_index=np.arange(len(PROMPT)), lora=lora)

    got = forward([bank.acquire("qv"), 0])
    np.testing.assert_allclose(got[0], torch_logits(qv_adapter["merged"], PROMPT), atol=5e-4)
    np.testing.assert_allclose(got[1], torch_logits(tiny["model"], PROMPT), atol=5e-4)

    bank.load("all", peft_adapter["path"])  # wider: new banks, and the qv adapter rewritten into them
    assert bank.banks is not qv_banks and bank.layout["qkv"] == (4, ("q_proj", "k_proj", "v_proj"))
    got = forward([bank.acquire("all"), bank.acquire("qv"), 0])
    np.testing.assert_allclose(got[0], torch_logits(peft_adapter["merged"], PROMPT), atol=5e-4)
    np.testing.assert_allclose(got[1], torch_logits(qv_adapter["merged"], PROMPT), atol=5e-4)
    np.testing.assert_allclose(got[2], torch_logits(tiny["model"], PROMPT), atol=5e-4)
    for name, array in qv_banks.items():  # a step still running on the old banks saw them unchanged
        np.testing.assert_array_equal(array, qv_snapshot[name])
    got = forward([bank.acquire("qv"), 0])  # the first step's rows again, now on the swapped banks
    np.testing.assert_allclose(got[0], torch_logits(qv_adapter["merged"], PROMPT), atol=5e-4)


def test_one_modules_rank_does_not_widen_other_groups(tiny, qv_adapter, down_adapter):
    from inference.session import Lora

    session = DecoderSession(tiny["root"] / "dense_lora", max_rows=3, capacity=64)
    bank = AdapterBank(session.config, slots=3, max_rank=8)
    bank.load("qv", qv_adapter["path"])
    bank.load("down", down_adapter["path"])
    assert bank.layout == {
        "qkv": (2, ("q_proj", "v_proj")), "o": (0, ()), "gate_up": (0, ()), "down": (4, ("down_proj",))
    }  # fmt: skip
    lora = Lora(index=np.array([bank.acquire("qv"), bank.acquire("down"), 0]), banks=bank.banks)
    ids, lengths = np.array([PROMPT] * 3), np.array([len(PROMPT)] * 3)
    got = session.forward(ids, start=0, lengths=lengths, logits_index=np.arange(len(PROMPT)), lora=lora)
    np.testing.assert_allclose(got[0], torch_logits(qv_adapter["merged"], PROMPT), atol=5e-4)
    np.testing.assert_allclose(got[1], torch_logits(down_adapter["merged"], PROMPT), atol=5e-4)
    np.testing.assert_allclose(got[2], torch_logits(tiny["model"], PROMPT), atol=5e-4)


def test_adapters_are_safetensors_only_and_validated(tiny, peft_adapter, tmp_path):
    config = DecoderSession(tiny["root"] / "dense_lora", max_rows=1, capacity=8).config
    bank = AdapterBank(config, slots=1, max_rank=8)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    (pickled / "adapter_config.json").write_text(json.dumps({"r": 4}))
    with pytest.raises(AdapterError, match="only as safetensors"):
        bank.load("x", pickled)
    with pytest.raises(AdapterError, match=r"rank 4 is outside 1\.\.2"):
        AdapterBank(config, slots=1, max_rank=2).load("x", peft_adapter["path"])
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (corrupt / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(AdapterError, match="not a readable safetensors"):
        bank.load("x", corrupt)
    assert bank.loaded == []


def test_adapters_evict_least_recently_used_but_never_one_in_use(tiny, peft_adapter):
    config = DecoderSession(tiny["root"] / "dense_lora", max_rows=1, capacity=8).config
    bank = AdapterBank(config, slots=2, max_rank=8)
    bank.load("a", peft_adapter["path"])
    bank.load("b", peft_adapter["path"])
    bank.acquire("a")  # in use, and now the most recent
    bank.load("c", peft_adapter["path"])  # evicts b
    assert sorted(bank.loaded) == ["a", "c"]
    bank.acquire("c")
    with pytest.raises(AdaptersBusy):
        bank.load("d", peft_adapter["path"])
    with pytest.raises(AdaptersBusy):
        bank.unload("a")
    bank.release("a")
    bank.unload("a")
    assert bank.loaded == ["c"]
    assert not bank.banks["lora.qkv.A"][1::3].any() or not bank.banks["lora.qkv.A"][2::3].any()


# --- the scheduler --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_parts(tiny):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny["hf_dir"] / name, tiny["root"] / "q4" / name)
    return {"dir": tiny["root"] / "q4", "tokenizer": ChatTokenizer(tiny["root"] / "q4")}


def make_engine(parts, **kwargs) -> Engine:
    options = {"max_rows": kwargs.pop("max_rows", 4), "capacity": kwargs.pop("capacity", 256)}
    return Engine(DecoderSession(parts["dir"], **options), parts["tokenizer"], **kwargs)


class GatedSession:
    """The real session, except that each forward pass waits for the test's permission.

    Scheduling tests then interleave deterministically instead of racing a model that runs 150 steps
    in a few milliseconds.
    """

    def __init__(self, session: DecoderSession):
        self._session = session
        self.steps = threading.Semaphore(0)

    def __getattr__(self, name):
        return getattr(self._session, name)

    def forward(self, *args, **kwargs):
        self.steps.acquire()
        return self._session.forward(*args, **kwargs)


async def run_request(
    engine: Engine,
    request: GenerationRequest,
    order: list | None = None,
    first_token: asyncio.Event | None = None,
) -> dict:
    handle = engine.submit(request, asyncio.get_running_loop())
    tokens, text, reasons = {}, {}, {}
    while True:
        event = await handle.queue.get()
        if event.kind == "token":
            if first_token is not None:
                first_token.set()
            tokens.setdefault(event.index, []).append(event.token.token)
            text[event.index] = text.get(event.index, "") + event.text
        elif event.kind == "finish":
            reasons[event.index] = event.finish_reason
        elif event.kind == "done":
            if order is not None:
                order.append(request.max_tokens)
            return {"tokens": tokens, "text": text, "reasons": reasons, "usage": event.usage}
        else:
            raise AssertionError(event.error)


def greedy(max_tokens: int, **kwargs) -> GenerationRequest:
    params = SamplingParams(temperature=0.0, **kwargs.pop("params", {}))
    return GenerationRequest(PROMPT, params, max_tokens=max_tokens, ignore_eos=True, **kwargs)


def test_a_short_request_overtakes_a_long_one_and_batching_does_not_change_tokens(engine_parts):
    session = GatedSession(DecoderSession(engine_parts["dir"], max_rows=4, capacity=256))
    engine = Engine(session, engine_parts["tokenizer"])

    async def scenario():
        session.steps.release(100)
        alone = await run_request(engine, greedy(12))
        session.steps = threading.Semaphore(1)  # the long request's prefill only
        order: list[int] = []
        started = asyncio.Event()
        long = asyncio.ensure_future(run_request(engine, greedy(150), order, started))
        await started.wait()  # the engine now waits before the long request's first decode step
        short = asyncio.ensure_future(run_request(engine, greedy(12), order))
        await asyncio.sleep(0)  # submitted
        session.steps.release(10_000)
        return alone, await short, await long, order

    try:
        alone, short, long, order = asyncio.run(scenario())
    finally:
        session.steps.release(10_000)
        engine.shutdown()
    assert order == [12, 150]  # the short one joined the running batch and left first
    assert short["tokens"] == alone["tokens"]
    assert long["tokens"][0][:12] == alone["tokens"][0]
    assert short["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 12, "total_tokens": len(PROMPT) + 12}


def test_seeded_sampling_repeats_and_n_choices_share_one_prefill(engine_parts):
    engine = make_engine(engine_parts)
    sampled = SamplingParams(temperature=1.0, seed=7)

    async def scenario():
        request = GenerationRequest(PROMPT, sampled, max_tokens=20, n=3, ignore_eos=True)
        return await run_request(engine, request), await run_request(engine, request)

    try:
        first, second = asyncio.run(scenario())
    finally:
        engine.shutdown()
    assert first["tokens"] == second["tokens"]
    assert len({tuple(t) for t in first["tokens"].values()}) > 1  # three streams, not one copied
    assert first["usage"]["completion_tokens"] == 60


def test_a_failure_in_one_request_fails_it_alone_while_the_others_stream_on(engine_parts, monkeypatch):
    # Sampling is per row: break it for one request (marked by its seed), mid-answer, in prefill and in decode.
    from inference import scheduler

    class FlakySampler(scheduler.Sampler):
        FAIL_AT_TOKEN = {666: 4, 777: 1}  # seed -> the token whose sampling fails (1: in the prefill step)

        def choose(self, logits):
            self.tokens = getattr(self, "tokens", 0) + 1
            if self.tokens >= self.FAIL_AT_TOKEN.get(self.params.seed, float("inf")):
                raise RuntimeError("injected failure")
            return super().choose(logits)

    monkeypatch.setattr(scheduler, "Sampler", FlakySampler)
    engine = make_engine(engine_parts)

    async def outcome(request):
        try:
            return await run_request(engine, request)
        except AssertionError as error:  # run_request turns an error event into an AssertionError
            return str(error)

    async def scenario():
        alone = await run_request(engine, greedy(20))
        in_decode = greedy(20, params={"seed": 666})
        in_prefill = GenerationRequest(
            PROMPT, SamplingParams(temperature=0.0, seed=777), max_tokens=20, n=2, ignore_eos=True
        )
        results = await asyncio.gather(
            outcome(greedy(20)), outcome(in_decode), outcome(in_prefill), outcome(greedy(20))
        )
        return alone, results, engine.snapshot()

    try:
        alone, (first, failed_in_decode, failed_in_prefill, last), snapshot = asyncio.run(scenario())
    finally:
        engine.shutdown()
    assert "injected failure" in failed_in_decode and "injected failure" in failed_in_prefill
    assert first["tokens"] == alone["tokens"] and last["tokens"] == alone["tokens"]
    assert snapshot["kv_rows_in_use"] == 0  # the failed requests' rows were freed


def test_stop_sequences_end_the_text_before_them(engine_parts):
    engine = make_engine(engine_parts)
    try:
        plain = asyncio.run(run_request(engine, greedy(30)))["text"][0]
        stop = plain[10:13]
        stopped = asyncio.run(run_request(engine, greedy(30, stop=(stop,))))
    finally:
        engine.shutdown()
    assert stopped["text"][0] == plain[: plain.index(stop)]
    assert stopped["reasons"][0] == "stop"


def test_cancel_frees_the_rows_and_a_full_queue_refuses(engine_parts):
    session = GatedSession(DecoderSession(engine_parts["dir"], max_rows=1, capacity=256))
    engine = Engine(session, engine_parts["tokenizer"], max_queue=1)

    async def scenario():
        loop = asyncio.get_running_loop()
        session.steps.release(1)  # the prefill, then the engine waits inside the first decode step
        running = engine.submit(greedy(200), loop)
        assert (await running.queue.get()).kind == "token"
        waiting = engine.submit(greedy(5), loop)
        with pytest.raises(QueueFull, match="at capacity"):
            engine.submit(greedy(5), loop)
        engine.cancel(running)
        session.steps.release(10_000)
        while (event := await running.queue.get()).kind != "done":
            assert event.kind != "error"
        while (event := await waiting.queue.get()).kind != "done":
            pass
        return engine.snapshot()

    try:
        snapshot = asyncio.run(scenario())
    finally:
        session.steps.release(10_000)
        engine.shutdown()
    assert snapshot["kv_rows_in_use"] == 0 and snapshot["queue_depth"] == 0
    assert snapshot["requests_rejected_total"] == 1


def test_a_prompt_longer_than_the_context_is_refused(engine_parts):
    engine = make_engine(engine_parts, capacity=16)
    try:
        with pytest.raises(PromptTooLong, match="context window is 16 tokens"):
            engine.submit(GenerationRequest(list(range(16)), SamplingParams(), max_tokens=1), None)
    finally:
        engine.shutdown()


# --- the HTTP layer, in-process -------------------------------------------------------------------


def test_api_key_queue_full_and_loopback_rules(engine_parts):
    from starlette.testclient import TestClient

    from inference.routes import Runtime, create_app
    from inference.server import main

    engine = make_engine(engine_parts, max_rows=1, max_queue=1)
    runtime = Runtime(engine=engine, tokenizer=engine_parts["tokenizer"], adapters=None, embedder=None)
    body = {"model": "smollm2-135m-instruct", "prompt": "the", "max_tokens": 2}
    try:
        with TestClient(create_app(runtime, api_key="s3cret")) as http:
            refused = http.post("/v1/completions", json=body)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            wrong = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
            assert http.get("/health").status_code == 200  # liveness needs no key

        engine.max_queue = 0  # full, deterministically (the scheduler test fills a real queue)
        with TestClient(create_app(runtime)) as http:
            full = http.post("/v1/completions", json=body)
            assert full.status_code == 429
            assert (
                full.json()["error"]["type"] == "rate_limit_error" and "at capacity" in full.json()["error"]["message"]
            )
    finally:
        engine.shutdown()
    with pytest.raises(SystemExit, match="without INFERENCE_API_KEY"):
        main(["--host", "0.0.0.0"])  # noqa: S104 (that refusal is the test)


def test_logprob_bytes_are_each_tokens_own_bytes(engine_parts):
    # OpenAI's `bytes` exists for tokens that hold part of a character: decoding such a token alone gives
    # U+FFFD, and only its raw bytes, joined with its neighbours', rebuild the text.
    tokenizer = engine_parts["tokenizer"]
    text = "naïve café 🙂 東京"
    pieces = [bytes(tokenizer.token_bytes(t)) for t in tokenizer.encode(text)]
    assert b"".join(pieces) == text.encode("utf-8")
    assert any(b"\xef\xbf\xbd" not in p and "\ufffd" in p.decode("utf-8", errors="replace") for p in pieces)
