"""Atelier's own decoder graph: a Llama written op by op with ONNX Runtime's fused kernels.

optimum's export runs ~40 small ops per layer and copies the whole KV cache every token; decode on a
2-core CPU is then dominated by per-op overhead. This graph is what the engine serves instead:

    Gather(embed) -> per layer:
        SimplifiedLayerNorm -> fused QKV MatMulNBits -> GroupQueryAttention (rotary inside, KV cache
        updated in place in a preallocated buffer) -> o_proj -> SkipSimplifiedLayerNorm (residual add)
        -> fused gate|up MatMulNBits -> SiLU*up -> down_proj -> SkipSimplifiedLayerNorm
    -> Gather(the positions whose logits are wanted) -> lm_head (8-bit MatMulNBits, Q8_0 exact)

Weights stay exactly the GGUF's: Q4_1 linears become MatMulNBits plus a per-block offset correction
(see quantize.py), the Q8_0 embedding doubles as the tied lm_head as 8-bit MatMulNBits.

Inputs (B rows, S new tokens per row; every row in one Run has the same S):
    input_ids [B, S] int64
    seqlens_k [B] int32             each row's total length after this step, minus one
    total_sequence_length [] int32  the longest row's total length
    logits_index [P] int64          which of the S positions to compute logits for (the last one while
                                    generating, all of them for perplexity): lm_head is 20% of the FLOPs
    past_key.{i}, past_value.{i}    [B, kv_heads, capacity, head_dim], bound to the same buffers as
                                    present_key.{i}/present_value.{i}: GQA writes the new keys in place
With LoRA (build_decoder(lora=True)), also:
    lora_index [B] int64            each row's adapter slot (0 = no adapter: an all-zero slot)
    lora.{group}.A [L*slots, K, R], lora.{group}.B [L*slots, R, N] for group in qkv, o, gate_up, down:
                                    banks of every loaded adapter, indexed layer*slots + slot, so one batch
                                    serves a different adapter on every row.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.config import LORA_GROUP_MODULES, LORA_GROUPS, DecoderConfig
from inference.export import ExportError, ProgressFn, copy_tokenizer_files
from inference.quantize import BLOCK, DEFAULT_ACCURACY_LEVEL, LinearWeights


@dataclass
class DecoderWeights:
    config: DecoderConfig
    embed: np.ndarray  # [V, H] fp32, for the input Gather
    lm_head: LinearWeights
    final_norm: np.ndarray
    attn_norms: list[np.ndarray] = field(default_factory=list)
    mlp_norms: list[np.ndarray] = field(default_factory=list)
    linears: list[dict[str, LinearWeights]] = field(default_factory=list)  # per layer, by LORA_GROUPS name


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        self._count += 1
        name = f"{op_type}_{self._count}"
        outputs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def linear(self, x: str, weights: LinearWeights, name: str, accuracy_level: int) -> str:
        k, n = weights.k, weights.n
        if weights.kind == "dense":
            return self.op("MatMul", [x, self.const(f"{name}.weight", weights.dense)])[0]
        attrs = {"K": k, "N": n, "bits": weights.bits, "block_size": BLOCK, "accuracy_level": accuracy_level}
        packed = self.const(f"{name}.packed", weights.packed)
        scales = self.const(f"{name}.scales", weights.scales)
        # Without explicit zero points MatMulNBits assumes 8 (4 bits) or 128 (8 bits), as packed.
        y = self.op("MatMulNBits", [x, packed, scales], domain="com.microsoft", **attrs)[0]
        if weights.offsets is None:
            return y
        shape = self.const(f"{name}.blocks_shape", np.array([0, 0, k // BLOCK, BLOCK], dtype=np.int64))
        blocks = self.op("Reshape", [x, shape])[0]
        sums = self.op("ReduceSum", [blocks, self.const(f"{name}.last_axis", np.array([-1], np.int64))], keepdims=0)
        correction = self.op("MatMul", [sums[0], self.const(f"{name}.offsets", weights.offsets)])[0]
        return self.op("Add", [y, correction])[0]


def _rotary_cache(config: DecoderConfig) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim))
    angles = np.outer(np.arange(config.max_positions, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def build_decoder(
    weights: DecoderWeights, *, lora: bool = False, accuracy_level: int = DEFAULT_ACCURACY_LEVEL
) -> onnx.ModelProto:
    config = weights.config
    b = _Builder()
    kv_shape = ["batch", config.num_kv_heads, "capacity", config.head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        helper.make_tensor_value_info("logits_index", TensorProto.INT64, ["positions"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "positions", config.vocab_size])]
    for i in range(config.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}.{i}", TensorProto.FLOAT, kv_shape))
    if lora:
        inputs.append(helper.make_tensor_value_info("lora_index", TensorProto.INT64, ["batch"]))
        for group in LORA_GROUPS:
            k, n = config.group_shape(group)
            rank = f"rank_{group}"
            inputs.append(helper.make_tensor_value_info(f"lora.{group}.A", TensorProto.FLOAT, ["banks", k, rank]))
            inputs.append(helper.make_tensor_value_info(f"lora.{group}.B", TensorProto.FLOAT, ["banks", rank, n]))
        slots = b.op(
            "Div",
            [
                b.op("Shape", ["lora.qkv.A"], start=0, end=1)[0],
                b.const("num_layers", np.array([config.num_layers], np.int64)),
            ],
        )[0]

    cos, sin = _rotary_cache(config)
    b.const("cos_cache", cos)
    b.const("sin_cache", sin)
    hidden = b.op("Gather", [b.const("embed", weights.embed), "input_ids"])[0]
    x = b.op(
        "SimplifiedLayerNormalization",
        [hidden, b.const("norm.0.attn", weights.attn_norms[0])],
        axis=-1,
        epsilon=config.rms_eps,
    )[0]

    def project(x: str, layer: int, group: str, layer_slot: str | None) -> str:
        y = b.linear(x, weights.linears[layer][group], f"layers.{layer}.{group}", accuracy_level)
        if layer_slot is None:
            return y
        # Per-row LoRA: gather each row's A [K, R] and B [R, N] from the bank, then y += (x @ A) @ B.
        a = b.op("Gather", [f"lora.{group}.A", layer_slot])[0]
        down = b.op("MatMul", [x, a])[0]
        b_rows = b.op("Gather", [f"lora.{group}.B", layer_slot])[0]
        return b.op("Add", [y, b.op("MatMul", [down, b_rows])[0]])[0]

    for layer in range(config.num_layers):
        layer_slot = None
        if lora:
            offset = b.op("Mul", [slots, b.const(f"layer.{layer}", np.array([layer], np.int64))])[0]
            layer_slot = b.op("Add", ["lora_index", offset])[0]
        qkv = project(x, layer, "qkv", layer_slot)
        attention = b.op(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key.{layer}",
                f"past_value.{layer}",
                "seqlens_k",
                "total_sequence_length",
                "cos_cache",
                "sin_cache",
            ],
            n_out=3,
            domain="com.microsoft",
            num_heads=config.num_heads,
            kv_num_heads=config.num_kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(config.head_dim**-0.5),
        )
        b.nodes[-1].output[1:] = [f"present_key.{layer}", f"present_value.{layer}"]
        o = project(attention[0], layer, "o", layer_slot)
        mlp_in, _, _, hidden = b.op(
            "SkipSimplifiedLayerNormalization",
            [o, hidden, b.const(f"norm.{layer}.mlp", weights.mlp_norms[layer])],
            n_out=4,
            domain="com.microsoft",
            epsilon=config.rms_eps,
        )
        b.nodes[-1].output[1:3] = ["", ""]
        gate_up = project(mlp_in, layer, "gate_up", layer_slot)
        gate, up = b.op("Split", [gate_up], n_out=2, axis=-1, num_outputs=2)
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])[0]])[0], up])[0]
        down = project(act, layer, "down", layer_slot)
        next_norm = weights.attn_norms[layer + 1] if layer + 1 < config.num_layers else weights.final_norm
        x, _, _, hidden = b.op(
            "SkipSimplifiedLayerNormalization",
            [down, hidden, b.const(f"norm.{layer + 1}.in", next_norm)],
            n_out=4,
            domain="com.microsoft",
            epsilon=config.rms_eps,
        )
        b.nodes[-1].output[1:3] = ["", ""]

    wanted = b.op("Gather", [x, "logits_index"], axis=1)[0]
    logits = b.linear(wanted, weights.lm_head, "lm_head", accuracy_level)
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    graph = helper.make_graph(b.nodes, "atelier-decoder", inputs, outputs, b.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10
    )
    model.metadata_props.add(key="atelier.graph", value="decoder-v1")
    model.metadata_props.add(key="atelier.config", value=json.dumps(config.__dict__))
    return model


_HF_MODULES = {  # PEFT/HF module -> (HF parameter prefix, GGUF tensor suffix)
    "q_proj": ("self_attn.q_proj", "attn_q"),
    "k_proj": ("self_attn.k_proj", "attn_k"),
    "v_proj": ("self_attn.v_proj", "attn_v"),
    "o_proj": ("self_attn.o_proj", "attn_output"),
    "gate_proj": ("mlp.gate_proj", "ffn_gate"),
    "up_proj": ("mlp.up_proj", "ffn_up"),
    "down_proj": ("mlp.down_proj", "ffn_down"),
}


def load_decoder_weights(*, hf_dir: Path, gguf_path: Path | None = None, quantize: bool = True) -> DecoderWeights:
    """The decoder's weights from a HF checkpoint: dense, or as MatMulNBits blocks.

    With gguf_path, the blocks are the GGUF's own (the checkpoint was dequantized from it), and each
    packed tensor is proven to reproduce the checkpoint's fp32 weight exactly. Without it, quantize=True
    quantizes the fp32 weights to Q4_1/Q8_0 here (tiny test models).
    """
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize
    from safetensors.numpy import load_file

    from inference.quantize import GGUFBlocks, pack_blocks

    config = DecoderConfig.from_hf(hf_dir)
    tensors: dict[str, np.ndarray] = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    blocks = GGUFBlocks(gguf_path) if gguf_path else None

    def linear(hf_name: str, gguf_name: str, quant_type: GGMLQuantizationType) -> LinearWeights:
        weight = tensors[hf_name].astype(np.float32)  # [n, k], torch layout
        n, k = weight.shape
        if not quantize:
            return LinearWeights(k, n, "dense", dense=np.ascontiguousarray(weight.T))
        if blocks is None:
            return pack_blocks(gguf_quantize(weight, quant_type), quant_type, n, k)
        packed = blocks.linear(gguf_name)
        # The promise is "lossless": prove it per tensor instead of trusting names and layouts.
        error = float(np.abs(packed.dequantized() - weight.T).max())
        if error > 1e-5:
            raise ExportError(
                f"{gguf_name} repacked does not reproduce {hf_name} (max error {error:.3g}); "
                "the GGUF and the checkpoint are not the same model"
            )
        return packed

    embed = tensors["model.embed_tokens.weight"].astype(np.float32)
    head_name = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    head_gguf = "output.weight" if blocks and "output.weight" in blocks.tensors else "token_embd.weight"
    weights = DecoderWeights(
        config=config,
        embed=embed,
        lm_head=linear(head_name, head_gguf, GGMLQuantizationType.Q8_0),
        final_norm=tensors["model.norm.weight"].astype(np.float32),
    )
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}"
        weights.attn_norms.append(tensors[f"{prefix}.input_layernorm.weight"].astype(np.float32))
        weights.mlp_norms.append(tensors[f"{prefix}.post_attention_layernorm.weight"].astype(np.float32))
        modules = {
            module: linear(f"{prefix}.{hf}.weight", f"blk.{i}.{gguf}.weight", GGMLQuantizationType.Q4_1)
            for module, (hf, gguf) in _HF_MODULES.items()
        }
        weights.linears.append(
            {group: LinearWeights.concat([modules[m] for m in LORA_GROUP_MODULES[group]]) for group in LORA_GROUPS}
        )
    return weights


def export_engine_decoder(*, hf_dir: Path, gguf_path: Path | None, out_dir: Path, progress: ProgressFn) -> dict:
    """Write out_dir/model.onnx and model_lora.onnx (the same decoder with LoRA banks) plus the tokenizer."""
    import onnx

    progress("repacking the GGUF's blocks into MatMulNBits", 0.05)
    weights = load_decoder_weights(hf_dir=hf_dir, gguf_path=gguf_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "model.onnx", out_dir / "model_lora.onnx"]
    try:
        progress("writing the fused decoder graph", 0.4)
        onnx.save(build_decoder(weights), written[0])
        progress("writing the fused decoder graph with LoRA banks", 0.65)
        onnx.save(build_decoder(weights, lora=True), written[1])
        copy_tokenizer_files(hf_dir, out_dir)
    except BaseException:
        for path in written:  # a half-written graph must never look usable
            path.unlink(missing_ok=True)
        raise
    progress("decoder graphs written", 0.9)
    return {
        "dtype": "q4_1-matmulnbits",
        "format": "onnx",
        "graph": "atelier decoder-v1 (GroupQueryAttention, in-place KV cache, banked LoRA)",
        "quantization": {
            "method": "lossless Q4_1/Q8_0 repack into MatMulNBits (zp=8 + per-block offset correction)",
            "bits": 4,
            "block_size": BLOCK,
            "accuracy_level": DEFAULT_ACCURACY_LEVEL,
        },
    }
