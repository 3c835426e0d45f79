"""inference.export on a tiny Llama built here (seconds, no Django, no database, no real weights).

The real SmolLM2/MiniLM exports run in the registry bootstrap; these tests pin the pieces that must not
drift: ONNX perplexity equals torch's, the gate refuses a genuinely degraded graph, and a broken GGUF
fails loudly without leaving files behind.
"""

import hashlib

import numpy as np
import pytest

from inference.export import ExportError, VariantRejected, export_chat_model, perplexity, perplexity_gate, sha256_file
from tests.tiny_models import tiny_chat_model, write_noisy_copy


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory) -> dict:
    return tiny_chat_model(tmp_path_factory.mktemp("tiny"))


def test_onnx_perplexity_matches_torch(tiny_decoder):
    onnx_dir = tiny_decoder["onnx_dir"]
    assert (onnx_dir / "tokenizer.json").is_file() and (onnx_dir / "generation_config.json").is_file()
    got = perplexity(onnx_dir=onnx_dir)
    expected = tiny_decoder["torch_ppl"]
    assert expected < 100, f"the tiny model should have fitted the text a little (ppl {expected})"
    assert got == pytest.approx(expected, rel=1e-3)


def test_gate_accepts_within_tolerance_and_refuses_beyond():
    perplexity_gate(reference=20.0, candidate=20.0)
    perplexity_gate(reference=20.0, candidate=20.39)
    perplexity_gate(reference=20.0, candidate=19.0)
    with pytest.raises(VariantRejected) as caught:
        perplexity_gate(reference=20.0, candidate=20.41, variant="int4")
    message = str(caught.value)
    assert "int4" in message and "20.41" in message and "20.00" in message and "2%" in message
    assert isinstance(caught.value, ExportError)


def test_gate_refuses_a_noisy_variant(tiny_decoder):
    onnx_dir, noisy_dir = tiny_decoder["onnx_dir"], tiny_decoder["root"] / "noisy"
    write_noisy_copy(onnx_dir, noisy_dir)
    reference = perplexity(onnx_dir=onnx_dir)
    degraded = perplexity(onnx_dir=noisy_dir)
    with pytest.raises(VariantRejected, match="more than 2% worse"):
        perplexity_gate(reference=reference, candidate=degraded, variant="noisy")


def test_corrupt_gguf_fails_with_reinstall_hint_and_writes_nothing(tmp_path):
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(np.random.default_rng(1).bytes(64))
    out_dir = tmp_path / "out"
    messages = []
    with pytest.raises(ExportError) as caught:
        export_chat_model(gguf_path=gguf, out_dir=out_dir, progress=lambda m, f: messages.append((m, f)))
    assert "reinstall" in str(caught.value).lower() and str(gguf) in str(caught.value)
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert messages, "progress is reported before the slow load starts"


def test_sha256_file_streams_across_chunks(tmp_path):
    data = np.random.default_rng(2).bytes(int(2.5 * 2**20))
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
