"""Repack the GGUF's Q4_1 weights into the fp32 ONNX decoder as MatMulNBits, without losing a bit.

The SmolLM2 GGUF already holds 4-bit Q4_1 weights, so the fp32 export carries exactly those values.
Quantizing the fp32 graph again would round twice (ORT's own 4-bit quantizer costs +24% perplexity);
instead each linear layer's MatMul becomes ORT's MatMulNBits fed with the GGUF's own blocks.

Q4_1 block (32 weights along K): w = d*q + m, q in 0..15, d and m fp16.
MatMulNBits block:                w = scale*(q - zp), zp a uint4.
With scale = d and zp = 8:        w = d*(q - 8) + c,  c = m + 8d (one offset per block),
so y = x @ W = MatMulNBits(x) + blocksum(x) @ C, where blocksum sums x over each 32-wide block of K
and C [K/32, N] holds the offsets: a MatMul 32x smaller than the one it replaces.
"""

import re
from pathlib import Path

import numpy as np
import onnx
from gguf import GGMLQuantizationType, GGUFReader
from onnx import helper, numpy_helper

from inference.export import ExportError, ProgressFn, copy_tokenizer_files

BLOCK = 32  # weights per Q4_1 block, and MatMulNBits' block_size
Q4_1_BLOCK_BYTES = 20  # fp16 d, fp16 m, 16 bytes of nibbles
ZERO_POINT = 8
# MatMulNBits accuracy_level. 0 keeps activations fp32 (bit-faithful, but slower than the fp32 graph on a
# 2-core AVX2 CPU); 4 quantizes activations to int8 per block at run time: ~1.9x faster decode than 0 for
# +0.75% perplexity on SmolLM2 (16.64 vs 16.51), well inside the 2% gate. The weights stay exact either way.
DEFAULT_ACCURACY_LEVEL = 4

# Exported MatMul node name -> GGUF tensor name. lm_head is tied to token_embd in SmolLM2.
_LAYER_MATMUL = re.compile(r"^/model/layers\.(\d+)/(self_attn/[qkvo]_proj|mlp/(?:gate|up|down)_proj)/MatMul$")
_GGUF_NAMES = {
    "self_attn/q_proj": "attn_q",
    "self_attn/k_proj": "attn_k",
    "self_attn/v_proj": "attn_v",
    "self_attn/o_proj": "attn_output",
    "mlp/gate_proj": "ffn_gate",
    "mlp/up_proj": "ffn_up",
    "mlp/down_proj": "ffn_down",
}


def gguf_tensor_for(node_name: str, gguf_names: set[str]) -> str | None:
    if match := _LAYER_MATMUL.match(node_name):
        return f"blk.{match[1]}.{_GGUF_NAMES[match[2]]}.weight"
    if node_name == "/lm_head/MatMul":
        return "output.weight" if "output.weight" in gguf_names else "token_embd.weight"
    return None


def unpack_q4_1(raw_blocks: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1 bytes [n, k/32*20] -> d [n, kb], m [n, kb] (fp32) and q [n, kb, 32] (uint8, in K order)."""
    blocks = np.ascontiguousarray(raw_blocks, dtype=np.uint8).reshape(n, k // BLOCK, Q4_1_BLOCK_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    nibbles = blocks[..., 4:]
    # ggml stores element j in the low nibble and element j+16 in the high nibble of byte j.
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
    return d, m, q


def pack_q4_1_blocks(raw_blocks: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1 bytes of an [n, k] weight -> MatMulNBits B, scales, zero_points and the offset matrix C.

    B [n, kb, 16] uint8: elements 2j (low nibble) and 2j+1 (high nibble) of each block share a byte.
    scales [n, kb] fp32, zero_points [n, ceil(kb/2)] uint8 (block 2i low nibble, 2i+1 high),
    offsets C [kb, n] fp32 with C[b, j] = m + 8d of row j's block b.
    """
    if k % BLOCK:
        raise ValueError(f"K={k} is not a multiple of the Q4_1 block size {BLOCK}")
    d, m, q = unpack_q4_1(raw_blocks, n, k)
    kb = k // BLOCK
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    zp = np.full((n, kb + kb % 2), ZERO_POINT, dtype=np.uint8)
    zero_points = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    offsets = (m + np.float32(ZERO_POINT) * d).T.astype(np.float32)
    return packed, d, zero_points, np.ascontiguousarray(offsets)


def dequantize_packed(
    packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """The [k, n] weight MatMulNBits + offset correction computes, in numpy (the check against fp32)."""
    n, kb, _ = packed.shape
    q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, kb, BLOCK).astype(np.float32)
    zp = np.stack([zero_points & 0x0F, zero_points >> 4], axis=-1).reshape(n, -1)[:, :kb].astype(np.float32)
    w = scales[..., None] * (q - zp[..., None]) + offsets.T[..., None]
    return w.reshape(n, kb * BLOCK).T


def llama_row_order(n: int, n_head: int) -> np.ndarray:
    # llama.cpp interleaves q/k rows for its rotary layout; transformers undoes it (reverse_permute) when
    # loading, so the ONNX initializer's row r is GGUF row order[r].
    return np.arange(n).reshape(n_head, n // n_head // 2, 2).swapaxes(1, 2).reshape(n)


def _gguf_int(reader: GGUFReader, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])


def _row_order(name: str, n: int, reader: GGUFReader) -> np.ndarray:
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return np.arange(n)
    heads = _gguf_int(reader, "llama.attention.head_count")
    if ".attn_k." in name:
        heads = _gguf_int(reader, "llama.attention.head_count_kv")
    return llama_row_order(n, heads)


def _replacement_nodes(
    node: onnx.NodeProto, name: str, n: int, k: int, blocksum: str, accuracy_level: int
) -> list[onnx.NodeProto]:
    attrs = {"K": k, "N": n, "bits": 4, "block_size": BLOCK}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    base = node.name
    return [
        helper.make_node(
            "MatMulNBits",
            [node.input[0], f"{name}.q4", f"{name}.scales", f"{name}.zero_points"],
            [f"{base}_nbits_output_0"],
            name=f"{base}_nbits",
            domain="com.microsoft",
            **attrs,
        ),
        helper.make_node("MatMul", [blocksum, f"{name}.offsets"], [f"{base}_offset_output_0"], name=f"{base}_offset"),
        helper.make_node(
            "Add", [f"{base}_nbits_output_0", f"{base}_offset_output_0"], [node.output[0]], name=f"{base}_add"
        ),
    ]


def _blocksum_nodes(activation: str, k: int, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    # [batch, seq, K] -> [batch, seq, K/32, 32] -> sum over the block: the decoder's activations are rank 3.
    shape = numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], dtype=np.int64), f"{out}.shape")
    axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{out}.axes")
    nodes = [
        helper.make_node("Reshape", [activation, shape.name], [f"{out}_blocks"], name=f"{out}_reshape"),
        helper.make_node("ReduceSum", [f"{out}_blocks", axes.name], [out], name=f"{out}_reduce", keepdims=0),
    ]
    return nodes, [shape, axes]


def repack_q4_1(
    *,
    gguf_path: Path,
    fp32_onnx_dir: Path,
    out_dir: Path,
    progress: ProgressFn,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
) -> dict:
    """Write out_dir/model.onnx: the fp32 decoder with every Q4_1 linear layer as an exact MatMulNBits."""
    progress("reading the GGUF and the fp32 ONNX decoder", 0.0)
    reader = GGUFReader(gguf_path)
    tensors = {t.name: t for t in reader.tensors}
    model = onnx.load(fp32_onnx_dir / "model.onnx")
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1

    targets = []
    for node in graph.node:
        gguf_name = gguf_tensor_for(node.name, set(tensors)) if node.op_type == "MatMul" else None
        if gguf_name is None or node.input[1] not in inits:
            continue
        tensor = tensors.get(gguf_name)
        if tensor is None:
            raise ExportError(f"{node.name} should map to GGUF tensor {gguf_name}, which {gguf_path} lacks")
        if tensor.tensor_type == GGMLQuantizationType.Q4_1:
            targets.append((node, gguf_name))
    if not targets:
        raise ExportError(f"no Q4_1 linear layers found in {gguf_path}; nothing to repack losslessly")

    new_inits: list[onnx.TensorProto] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}
    blocksums: dict[str, str] = {}  # q/k/v (and gate/up) share one input, so they share its block sums
    worst = 0.0
    for i, (node, gguf_name) in enumerate(targets):
        weight = numpy_helper.to_array(inits[node.input[1]])  # [K, N]
        k, n = weight.shape
        tensor = tensors[gguf_name]
        raw = np.asarray(tensor.data).reshape(n, -1)[_row_order(gguf_name, n, reader)]
        packed, scales, zero_points, offsets = pack_q4_1_blocks(raw, n, k)
        # The promise is "lossless": prove it per tensor instead of trusting the name mapping and layouts.
        error = float(np.abs(dequantize_packed(packed, scales, zero_points, offsets) - weight).max())
        worst = max(worst, error)
        if error > 1e-5:
            raise ExportError(
                f"{gguf_name} repacked does not reproduce {node.name}'s fp32 weight (max error {error:.3g}); "
                "the GGUF and the ONNX export are not from the same model"
            )
        name = f"{gguf_name[: -len('.weight')]}"
        new_inits += [
            numpy_helper.from_array(packed, f"{name}.q4"),
            numpy_helper.from_array(scales, f"{name}.scales"),
            numpy_helper.from_array(zero_points, f"{name}.zero_points"),
            numpy_helper.from_array(offsets, f"{name}.offsets"),
        ]
        nodes = []
        if node.input[0] not in blocksums:
            blocksums[node.input[0]] = f"{name}.blocksum"
            sum_nodes, sum_inits = _blocksum_nodes(node.input[0], k, blocksums[node.input[0]])
            nodes += sum_nodes
            new_inits += sum_inits
        replaced[id(node)] = nodes + _replacement_nodes(node, name, n, k, blocksums[node.input[0]], accuracy_level)
        uses[node.input[1]] -= 1
        progress(f"repacked {gguf_name}", 0.1 + 0.7 * (i + 1) / len(targets))

    # Rebuild the node list in place order so the graph stays topologically sorted.
    nodes = []
    for node in graph.node:
        nodes += replaced.get(id(node), [node])
    graph.ClearField("node")
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if uses.get(init.name, 0) > 0 or init.name not in uses]
    graph.ClearField("initializer")
    graph.initializer.extend(kept + new_inits)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.onnx"
    progress("writing the repacked decoder", 0.85)
    try:
        onnx.save(model, model_path)
        copy_tokenizer_files(fp32_onnx_dir, out_dir)
    except BaseException:
        # A half-written model.onnx must never look usable.
        model_path.unlink(missing_ok=True)
        raise
    progress(f"repacked {len(targets)} MatMuls (max weight error {worst:.2g})", 1.0)
    return {
        "dtype": "q4_1-matmulnbits",
        "format": "onnx",
        "quantization": {
            "method": "lossless Q4_1 repack into MatMulNBits (zp=8 + per-block offset correction)",
            "bits": 4,
            "block_size": BLOCK,
            "replaced_matmuls": len(targets),
            "accuracy_level": accuracy_level,
        },
    }
