"""A tiny Llama with a real tokenizer, trained for a few steps on the perplexity text (seconds, offline).

Tests use it where the real SmolLM2 would cost minutes: the export, the perplexity gate, the registry.
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from inference.export import PERPLEXITY_TEXT, export_onnx_decoder


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    # Byte-level BPE trained on the perplexity text itself: a real tokenizer.json, built offline in ms.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([PERPLEXITY_TEXT], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def torch_perplexity(model: LlamaForCausalLM, ids: list[int]) -> float:
    with torch.no_grad():
        return torch.exp(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss).item()


def tiny_chat_model(root: Path) -> dict:
    """Train and export the tiny model under root; returns its onnx_dir, hf_dir and torch perplexity."""
    tiny = tiny_checkpoint(root)
    onnx_dir = root / "onnx"
    export_onnx_decoder(hf_dir=tiny["hf_dir"], out_dir=onnx_dir)
    return {**tiny, "onnx_dir": onnx_dir}


def tiny_checkpoint(root: Path, *, tokenizer: PreTrainedTokenizerFast | None = None) -> dict:
    """Train the tiny model and save it (HF format) under root/hf; returns hf_dir, model and torch perplexity.
    `tokenizer` replaces tiny_tokenizer() (one with chat special tokens and a template, say)."""
    tokenizer = tokenizer or tiny_tokenizer()
    ids = tokenizer(PERPLEXITY_TEXT)["input_ids"][:512]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    # A few steps of fitting the text, so logits are peaked like a real model's (a random init is
    # near-uniform, which would hide numerical drift and leave the noise test nothing to degrade).
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    hf_dir = root / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return {"root": root, "hf_dir": hf_dir, "model": model, "torch_ppl": torch_perplexity(model, ids)}


def write_noisy_copy(onnx_dir: Path, noisy_dir: Path, *, scale: float = 0.5) -> None:
    """A genuinely degraded variant: every weight matrix with Gaussian noise of scale x its std added."""
    noisy_dir.mkdir(parents=True, exist_ok=True)
    (noisy_dir / "tokenizer.json").write_bytes((onnx_dir / "tokenizer.json").read_bytes())
    graph = onnx.load(onnx_dir / "model.onnx")
    rng = np.random.default_rng(0)
    for init in graph.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.ndim == 2:
            noise = rng.normal(0, scale * weights.std(), weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(weights + noise, init.name))
    onnx.save(graph, noisy_dir / "model.onnx")
