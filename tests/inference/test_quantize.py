"""inference.quantize on a tiny GGUF and a tiny ONNX graph written here (seconds, no Django, no real weights).

The reference is independent of the code under test: gguf's own Q4_1 dequantizer, transformers' q/k row
un-permutation written out again, and a plain numpy matmul.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize
from onnx import TensorProto, helper, numpy_helper

from inference.export import ExportError
from inference.quantize import pack_q4_1_blocks, repack_q4_1

K, HEADS, HEAD_DIM, N_UP = 64, 2, 8, 24
N_Q = HEADS * HEAD_DIM


def _unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # What transformers' GGUF loader does to llama q/k weights (llama.cpp stores their rows interleaved).
    dim = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, dim, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)


def _write_gguf(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    writer = GGUFWriter(path, "llama")
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    weights = {}
    for name, n in (("blk.0.attn_q.weight", N_Q), ("blk.0.ffn_up.weight", N_UP)):
        # A non-zero mean makes the per-block minimum (Q4_1's m) matter.
        blocks = quantize(rng.normal(0.3, 1.0, (n, K)).astype(np.float32), GGMLQuantizationType.Q4_1)
        writer.add_tensor(name, blocks, raw_dtype=GGMLQuantizationType.Q4_1)
        weights[name] = dequantize(blocks, GGMLQuantizationType.Q4_1)  # [n, K], exactly representable
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def _write_fp32_graph(onnx_dir: Path, q_weight: np.ndarray, up_weight: np.ndarray) -> None:
    # Two MatMuls sharing one [batch, seq, K] input and named like optimum's Llama export.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])
    outputs = [
        helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", "seq", N_Q]),
        helper.make_tensor_value_info("up", TensorProto.FLOAT, ["batch", "seq", N_UP]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_q"], ["q"], name="/model/layers.0/self_attn/q_proj/MatMul"),
        helper.make_node("MatMul", ["x", "w_up"], ["up"], name="/model/layers.0/mlp/up_proj/MatMul"),
    ]
    inits = [numpy_helper.from_array(q_weight.T.copy(), "w_q"), numpy_helper.from_array(up_weight.T.copy(), "w_up")]
    graph = helper.make_graph(nodes, "tiny", [x], outputs, inits)
    onnx_dir.mkdir(parents=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), onnx_dir / "model.onnx")
    (onnx_dir / "tokenizer.json").write_text("{}")


def _run(model_dir: Path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["q", "up"], {"x": x})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("q4_1")
    rng = np.random.default_rng(0)
    gguf_weights = _write_gguf(root / "tiny.gguf", rng)
    q_weight = _unpermute(gguf_weights["blk.0.attn_q.weight"], HEADS)
    up_weight = gguf_weights["blk.0.ffn_up.weight"]
    _write_fp32_graph(root / "fp32", q_weight, up_weight)
    x = rng.normal(size=(1, 5, K)).astype(np.float32)
    return {"root": root, "x": x, "expected": [x @ q_weight.T, x @ up_weight.T]}


def _repack(tiny: dict, out: str, accuracy_level: int) -> tuple[dict, Path]:
    out_dir = tiny["root"] / out
    meta = repack_q4_1(
        gguf_path=tiny["root"] / "tiny.gguf",
        fp32_onnx_dir=tiny["root"] / "fp32",
        out_dir=out_dir,
        progress=lambda message, fraction: None,
        accuracy_level=accuracy_level,
    )
    return meta, out_dir


def test_repacked_graph_computes_the_fp32_matmuls(tiny):
    meta, out_dir = _repack(tiny, "exact", accuracy_level=0)
    assert meta["dtype"] == "q4_1-matmulnbits" and meta["quantization"]["replaced_matmuls"] == 2
    assert (out_dir / "tokenizer.json").is_file()
    model = onnx.load(out_dir / "model.onnx")
    assert sum(node.op_type == "MatMulNBits" for node in model.graph.node) == 2
    assert not any(node.op_type == "MatMul" and node.input[1].startswith("w_") for node in model.graph.node)
    assert {init.name for init in model.graph.initializer}.isdisjoint({"w_q", "w_up"})
    fp32 = _run(tiny["root"] / "fp32", tiny["x"])
    for got, want, reference in zip(_run(out_dir, tiny["x"]), fp32, tiny["expected"], strict=True):
        np.testing.assert_allclose(got, reference, atol=1e-4)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_int8_activations_stay_close(tiny):
    _, out_dir = _repack(tiny, "int8", accuracy_level=4)
    for got, reference in zip(_run(out_dir, tiny["x"]), tiny["expected"], strict=True):
        assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()


def test_the_offset_correction_is_what_makes_it_exact(tiny):
    # Drop the per-block offsets (as if zp=8 alone reproduced Q4_1's minimum): the reference must notice.
    _, out_dir = _repack(tiny, "no_offsets", accuracy_level=0)
    model = onnx.load(out_dir / "model.onnx")
    for init in model.graph.initializer:
        if init.name.endswith(".offsets"):
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(model, out_dir / "model.onnx")
    for got, reference in zip(_run(out_dir, tiny["x"]), tiny["expected"], strict=True):
        assert np.abs(got - reference).max() > 1.0


def test_pack_layout_matches_matmulnbits_conventions():
    # Block with q = 0..15, 15..0 (ggml order: byte j holds element j low, element j+16 high), d=0.5, m=-1.
    q = np.concatenate([np.arange(16), np.arange(16)[::-1]]).astype(np.uint8)
    header = np.concatenate([np.array([0.5], np.float16).view(np.uint8), np.array([-1.0], np.float16).view(np.uint8)])
    raw = np.concatenate([header, q[:16] | (q[16:] << 4)])[None, :]
    packed, scales, zero_points, offsets = pack_q4_1_blocks(raw, n=1, k=32)
    assert packed.shape == (1, 1, 16) and packed[0, 0, 0] == (0 | 1 << 4) and packed[0, 0, 8] == (15 | 14 << 4)
    assert scales.tolist() == [[0.5]] and zero_points[0, 0] & 15 == 8  # block 0 in the low nibble
    np.testing.assert_array_equal(offsets, [[-1.0 + 8 * 0.5]])
    decoded = scales[0, 0] * (np.stack([packed & 15, packed >> 4], -1).reshape(32) - 8.0) + offsets[0, 0]
    np.testing.assert_array_equal(decoded, 0.5 * q - 1.0)


def test_a_gguf_from_another_model_is_refused(tiny, tmp_path):
    _write_gguf(tmp_path / "other.gguf", np.random.default_rng(1))
    with pytest.raises(ExportError, match="does not reproduce"):
        repack_q4_1(
            gguf_path=tmp_path / "other.gguf",
            fp32_onnx_dir=tiny["root"] / "fp32",
            out_dir=tmp_path / "out",
            progress=lambda message, fraction: None,
        )
    assert not (tmp_path / "out" / "model.onnx").exists()
