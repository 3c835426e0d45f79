"""The trainer on the tiny model: losses against hand computations and transformers/PEFT, determinism,
exact resume, failures, cancel, and adapters that PEFT and the engine load and run identically."""

import copy
import json
import math

import numpy as np
import onnx
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from apps.finetune.decoder import LoraDecoder
from apps.finetune.packing import ChatEncoder, Segment, collate
from apps.finetune.training import (
    TrainingCancelled,
    TrainingError,
    TrainingFailed,
    dpo_loss,
    is_out_of_memory,
    split_examples,
    train_dpo,
    train_sft,
)
from apps.finetune.training_settings import LoraSettings, TrainingSettings
from inference.adapters import AdapterBank
from inference.graph import build_decoder, load_decoder_weights
from inference.session import DecoderSession, Lora
from inference.tokenizer import ChatTokenizer
from tests.finetune.conftest import conversation, preference_pair

SETTINGS = TrainingSettings(
    lora=LoraSettings(rank=4, alpha=8, dropout=0.1),
    learning_rate=1e-2,
    epochs=2,
    batch_size=3,
    max_length=160,
    precision="fp32",
    validation_fraction=0.2,
    checkpoint_every=2,
)
CONVERSATIONS = [conversation(i) for i in range(12)]
PAIRS = [preference_pair(i) for i in range(12)]


def train_points(history: list[dict]) -> list[dict]:
    return [p for p in history if p["kind"] == "train"]


def adapter(path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


def test_the_first_loss_is_the_mean_nll_of_the_assistant_tokens(tiny_chat, tmp_path):
    """Step 1's loss (LoRA B = 0: the base model) by hand: transformers' log-softmax over the whole vocabulary,
    averaged over the answer tokens and their end-of-turn token only."""
    examples = [
        {"messages": [{"role": "user", "content": f"Where is mill {i}?"}, {"role": "assistant", "content": answer}]}
        for i, answer in enumerate(["By the river.", "Past the old bridge, near the water.", "Here."])
    ]
    settings = TrainingSettings(lora=LoraSettings(rank=4, alpha=8), batch_size=3, max_steps=1, precision="fp32")
    result = train_sft(base_model_dir=tiny_chat["hf_dir"], examples=examples, out_dir=tmp_path / "a", settings=settings)
    tokenizer = ChatTokenizer(tiny_chat["hf_dir"])
    nll = []
    for example in examples:
        ids = tokenizer.encode(tokenizer.hf.apply_chat_template(example["messages"], tokenize=False))
        answer = len(tokenizer.encode(example["messages"][1]["content"])) + 1  # the content and <|im_end|>
        targets = range(len(ids) - 1 - answer, len(ids) - 1)  # the text ends with "<|im_end|>\n"
        with torch.no_grad():
            logp = torch.log_softmax(tiny_chat["model"](torch.tensor([ids])).logits[0], -1)
        nll += [-logp[t - 1, ids[t]].item() for t in targets]
    assert train_points(result.history)[0]["loss"] == pytest.approx(np.mean(nll), abs=1e-5)


def test_validation_holds_out_whole_conversations_chosen_by_the_seed():
    train, validation = split_examples(50, fraction=0.1, seed=7)
    assert len(validation) == 5 and sorted(train + validation) == list(range(50))
    assert split_examples(50, fraction=0.1, seed=7) == (train, validation)
    assert split_examples(50, fraction=0.1, seed=8)[1] != validation
    assert split_examples(9, fraction=0.1, seed=7)[1] == []  # too few to hold any out


def test_training_is_deterministic_for_a_seed(tiny_chat, tmp_path):
    runs = [
        train_sft(base_model_dir=tiny_chat["hf_dir"], examples=CONVERSATIONS, out_dir=tmp_path / name, settings=s)
        for name, s in (("a", SETTINGS), ("b", SETTINGS), ("c", TrainingSettings(**{**SETTINGS.__dict__, "seed": 1})))
    ]
    a, b, c = runs
    assert [p["loss"] for p in train_points(a.history)] == [p["loss"] for p in train_points(b.history)]
    assert a.validation["loss"] == b.validation["loss"]
    first, second = adapter(a.adapter_dir), adapter(b.adapter_dir)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first[next(iter(first))], adapter(c.adapter_dir)[next(iter(first))])
    # it learned: the validation loss went down from the base model's
    assert a.validation["loss"] < train_points(a.history)[0]["loss"]


def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tiny_chat, tmp_path):
    whole = train_sft(
        base_model_dir=tiny_chat["hf_dir"], examples=CONVERSATIONS, out_dir=tmp_path / "whole", settings=SETTINGS
    )
    checkpoints = tmp_path / "checkpoints"
    steps_seen = []

    def on_metrics(point):
        if point["kind"] == "train":
            steps_seen.append(point["step"])

    with pytest.raises(TrainingCancelled):  # stopped after step 5; the last checkpoint is step 4's
        train_sft(
            base_model_dir=tiny_chat["hf_dir"],
            examples=CONVERSATIONS,
            out_dir=tmp_path / "resumed",
            settings=SETTINGS,
            checkpoint_dir=checkpoints,
            on_metrics=on_metrics,
            should_cancel=lambda: len(steps_seen) >= 5,
        )
    state = json.loads((checkpoints / "checkpoint" / "state.json").read_text())
    assert state["step"] == 4 and not (tmp_path / "resumed").exists()
    resumed = train_sft(
        base_model_dir=tiny_chat["hf_dir"],
        examples=CONVERSATIONS,
        out_dir=tmp_path / "resumed",
        settings=SETTINGS,
        checkpoint_dir=checkpoints,
    )
    assert train_points(resumed.history)[0]["step"] == 5
    expected = {p["step"]: p["loss"] for p in train_points(whole.history)}
    assert {p["step"]: p["loss"] for p in train_points(resumed.history)} == {s: expected[s] for s in range(5, 9)}
    assert resumed.validation["loss"] == whole.validation["loss"]
    want, got = adapter(whole.adapter_dir), adapter(resumed.adapter_dir)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not (checkpoints / "checkpoint").exists()  # a finished run leaves no checkpoint behind


def test_a_checkpoint_of_another_run_is_refused(tiny_chat, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(TrainingCancelled):
        train_sft(
            base_model_dir=tiny_chat["hf_dir"],
            examples=CONVERSATIONS,
            out_dir=tmp_path / "a",
            settings=SETTINGS,
            checkpoint_dir=checkpoints,
            should_cancel=lambda: (checkpoints / "checkpoint").exists(),
        )
    with pytest.raises(TrainingError, match="belongs to another run"):
        train_sft(
            base_model_dir=tiny_chat["hf_dir"],
            examples=CONVERSATIONS[:-1],
            out_dir=tmp_path / "a",
            settings=SETTINGS,
            checkpoint_dir=checkpoints,
        )


def test_a_nan_loss_fails_the_run_with_the_reason(tiny_chat, tmp_path):
    # A damaged base model: one NaN in a weight matrix.
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_chat["hf_dir"].iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TrainingFailed, match=r"loss became nan at step 1"):
        train_sft(base_model_dir=broken, examples=CONVERSATIONS, out_dir=tmp_path / "out", settings=SETTINGS)
    assert not (tmp_path / "out").exists()


def test_running_out_of_memory_is_recognised():
    try:
        torch.empty(1 << 60, dtype=torch.uint8)  # a real allocation failure, a million terabytes
    except RuntimeError as error:
        assert is_out_of_memory(error)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_cancel_stops_between_steps(tiny_chat, tmp_path):
    points = []
    with pytest.raises(TrainingCancelled, match="at step 2"):
        train_sft(
            base_model_dir=tiny_chat["hf_dir"],
            examples=CONVERSATIONS,
            out_dir=tmp_path / "out",
            settings=SETTINGS,
            on_metrics=points.append,
            should_cancel=lambda: len(train_points(points)) == 2,
        )
    assert [p["step"] for p in train_points(points)] == [1, 2]
    assert not (tmp_path / "out").exists()


def test_every_train_point_carries_the_job_pages_metrics(tiny_chat, tmp_path):
    points = []
    result = train_sft(
        base_model_dir=tiny_chat["hf_dir"],
        examples=CONVERSATIONS,
        out_dir=tmp_path / "out",
        settings=SETTINGS,
        on_metrics=points.append,
    )
    assert points == result.history
    train = train_points(points)
    assert [p["step"] for p in train] == list(range(1, 9)) and train[-1]["epoch"] == 2.0
    keys = {"step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens", "tokens_per_second"}
    assert all(keys | {"elapsed_s", "eta_s"} <= set(p) for p in train)
    assert train[-1]["eta_s"] == 0 and all(p["tokens_per_second"] > 0 for p in train)
    validations = [p for p in points if p["kind"] == "validation"]
    assert [p["step"] for p in validations] == [4, 8]  # once per epoch
    assert json.loads(json.dumps(points)) == points  # storable as JSON as it is
    assert set(result.timings) == {"data", "forward", "backward", "optimizer", "validation"}


def tiny_engine(hf_dir, root):
    dense = load_decoder_weights(hf_dir=hf_dir, quantize=False)
    root.mkdir()
    onnx.save(build_decoder(dense), root / "model.onnx")
    onnx.save(build_decoder(dense, lora=True), root / "model_lora.onnx")
    return DecoderSession(root, max_rows=1, capacity=64)


def test_the_adapter_runs_the_same_in_peft_and_in_the_engine(tiny_chat, tmp_path):
    result = train_sft(
        base_model_dir=tiny_chat["hf_dir"], examples=CONVERSATIONS, out_dir=tmp_path / "adapter", settings=SETTINGS
    )
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    ids = ChatTokenizer(tiny_chat["hf_dir"]).chat_prompt([{"role": "user", "content": "Tell me about place 3."}])
    peft = PeftModel.from_pretrained(copy.deepcopy(tiny_chat["model"]), result.adapter_dir).eval()
    with torch.no_grad():
        want = peft(torch.tensor([ids])).logits[0]
        base = peft.get_base_model()
        with peft.disable_adapter():
            base_logits = base(torch.tensor([ids])).logits[0]
    assert (want - base_logits).abs().max() > 0.05  # the adapter really changes the model
    # the trainer's own decoder, with the saved weights, agrees with PEFT
    decoder = LoraDecoder(hf_dir=tiny_chat["hf_dir"], lora=SETTINGS.lora).eval()
    decoder.load_adapter_weights(result.adapter_dir)
    n = len(ids)
    with torch.no_grad():
        positions = np.arange(n)
        whole = Segment(
            ids=np.array(ids),
            positions=positions,
            branches=np.zeros(n, dtype=np.int8),
            sources=positions,
            targets=np.array(ids),
            sequences=np.zeros(n, dtype=np.int64),
        )
        ours = decoder.logits(decoder(collate([(whole,)], pad_id=0)))
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=0)
    # and the engine serves it as PEFT runs it
    session = tiny_engine(tiny_chat["hf_dir"], tmp_path / "engine")
    bank = AdapterBank(session.config, slots=1, max_rank=16)
    bank.load("tuned", result.adapter_dir)
    lora = Lora(index=np.array([bank.acquire("tuned")]), banks=bank.banks)
    got = session.forward(np.array([ids]), start=0, lengths=np.array([n]), logits_index=np.arange(n), lora=lora)
    np.testing.assert_allclose(got[0], want.numpy(), atol=5e-4)


def test_dpo_loss_is_the_sigmoid_formula():
    policy = torch.tensor([[-10.0, -12.0], [-20.0, -15.0], [-7.5, -7.5]])
    reference = torch.tensor([[-11.0, -11.0], [-19.0, -16.0], [-7.0, -8.0]])
    loss, stats = dpo_loss(policy, reference, beta=0.5)
    # by hand: margins beta * ((pc - rc) - (pr - rr)) = 0.5 * (2, -2, -1) = (1, -1, -0.5)
    margins = [1.0, -1.0, -0.5]
    assert loss.item() == pytest.approx(np.mean([math.log(1 + math.exp(-m)) for m in margins]), abs=1e-6)
    assert stats["rewards_chosen"].tolist() == pytest.approx([0.5, -0.5, -0.25])
    assert stats["rewards_rejected"].tolist() == pytest.approx([-0.5, 0.5, 0.25])
    assert stats["reward_margin"].tolist() == pytest.approx(margins)
    assert stats["reward_accuracy"].tolist() == [1.0, 0.0, 0.0]


def test_dpo_validation_matches_peft_policy_against_the_reference(tiny_chat, tmp_path):
    """The run's last validation point against an independent computation: PEFT with the trained adapter
    and with its adapter disabled (the reference), each completion scored alone, then the DPO formula."""
    settings = TrainingSettings(
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0), learning_rate=1e-2, batch_size=3, precision="fp32"
    )
    points = []
    result = train_dpo(
        base_model_dir=tiny_chat["hf_dir"],
        examples=PAIRS,
        out_dir=tmp_path / "dpo",
        settings=settings,
        on_metrics=points.append,
    )
    first = train_points(points)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6) and first["reward_margin"] == 0
    encoder = ChatEncoder(ChatTokenizer(tiny_chat["hf_dir"]))
    _, validation = split_examples(len(PAIRS), fraction=settings.validation_fraction, seed=settings.seed)
    peft = PeftModel.from_pretrained(copy.deepcopy(tiny_chat["model"]), result.adapter_dir).eval()

    def completion_logprob(segment) -> float:
        prompt = len(segment.ids) - len(segment.targets)
        with torch.no_grad():
            logp = torch.log_softmax(peft(torch.from_numpy(segment.ids)[None]).logits[0], -1)
        return sum(logp[t - 1, segment.ids[t]].item() for t in range(prompt, len(segment.ids)))

    policy, reference = [], []
    for index in validation:
        sequences = encoder.dpo_segments(PAIRS[index], max_length=settings.max_length, where="", share_prompt=False)
        policy.append([completion_logprob(s) for s in sequences])
        with peft.disable_adapter():
            reference.append([completion_logprob(s) for s in sequences])
    loss, stats = dpo_loss(torch.tensor(policy), torch.tensor(reference), beta=settings.beta)
    assert result.validation["loss"] == pytest.approx(loss.item(), abs=1e-4)
    for name, values in stats.items():
        assert result.validation[name] == pytest.approx(values.mean().item(), abs=1e-4)
    assert result.validation["reward_margin"] > 0  # it learned to prefer the chosen answers


def test_dpo_from_an_sft_adapter_starts_at_it_and_replaces_it(tiny_chat, tmp_path):
    sft = train_sft(
        base_model_dir=tiny_chat["hf_dir"], examples=CONVERSATIONS, out_dir=tmp_path / "sft", settings=SETTINGS
    )
    points = []
    settings = TrainingSettings(lora=LoraSettings(dropout=0.0), batch_size=4, max_steps=2, precision="fp32")
    dpo = train_dpo(
        base_model_dir=tiny_chat["hf_dir"],
        examples=PAIRS,
        out_dir=tmp_path / "dpo",
        settings=settings,
        reference_adapter_dir=sft.adapter_dir,
        on_metrics=points.append,
    )
    first = train_points(points)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards_chosen"] == pytest.approx(0, abs=1e-6)
    config = json.loads((dpo.adapter_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)  # the SFT adapter's shape, not settings.lora's
    start, end = adapter(sft.adapter_dir), adapter(dpo.adapter_dir)
    assert start.keys() == end.keys() and any(not torch.equal(start[k], end[k]) for k in start)


def test_bf16_training_tracks_fp32(tiny_chat, tmp_path):
    losses = {}
    for precision in ("fp32", "bf16"):
        settings = TrainingSettings(**{**SETTINGS.__dict__, "precision": precision, "max_steps": 3})
        result = train_sft(
            base_model_dir=tiny_chat["hf_dir"], examples=CONVERSATIONS, out_dir=tmp_path / precision, settings=settings
        )
        assert result.precision == precision
        losses[precision] = [p["loss"] for p in train_points(result.history)]
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.02)


def test_a_resumed_dpo_run_keeps_its_reference_and_ends_where_an_uninterrupted_one_does(tiny_chat, tmp_path):
    settings = TrainingSettings(
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
        learning_rate=1e-2,
        batch_size=3,
        precision="fp32",
        checkpoint_every=2,
    )
    run = {"base_model_dir": tiny_chat["hf_dir"], "examples": PAIRS, "settings": settings}
    whole = train_dpo(out_dir=tmp_path / "whole", **run)
    points = []
    with pytest.raises(TrainingCancelled):
        train_dpo(
            out_dir=tmp_path / "resumed",
            checkpoint_dir=tmp_path / "checkpoints",
            on_metrics=points.append,
            should_cancel=lambda: len(train_points(points)) == 3,
            **run,
        )
    resumed = train_dpo(out_dir=tmp_path / "resumed", checkpoint_dir=tmp_path / "checkpoints", **run)
    # the reference log-probs came from the checkpoint: no second reference pass
    assert [p["message"] for p in resumed.history if p["kind"] == "status"][1:] == [
        "resumed from the checkpoint at step 2"
    ]
    assert [p["loss"] for p in train_points(resumed.history)] == [p["loss"] for p in train_points(whole.history)][2:]
    want, got = adapter(whole.adapter_dir), adapter(resumed.adapter_dir)
    assert all(torch.equal(want[k], got[k]) for k in want)
