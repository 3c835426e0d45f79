"""The GGUF's own quantized blocks, repacked without losing a bit into ORT's MatMulNBits.

The SmolLM2 GGUF holds Q4_1 linear layers and a Q8_0 embedding, so its fp32 export carries exactly those
values. Quantizing fp32 again would round twice (ORT's own 4-bit quantizer costs +24% perplexity);
instead each linear layer becomes MatMulNBits fed with the GGUF's own blocks.

Q4_1 block (32 weights along K): w = d*q + m, q in 0..15, d and m fp16.
MatMulNBits block:                w = scale*(q - zp), zp a uint4.
With scale = d and zp = 8:        w = d*(q - 8) + c,  c = m + 8d (one offset per block),
so y = x @ W = MatMulNBits(x) + blocksum(x) @ C, where blocksum sums x over each 32-wide block of K
and C [K/32, N] holds the offsets: a MatMul 32x smaller than the one it replaces.
(MatMulNBits also takes float zero points, which would express m directly, but ORT then dequantizes
the whole matrix on every call: 13x slower, measured. Rounding m to d/16 in an 8-bit layout removes the
correction ops but measured no faster on this CPU and +0.1% perplexity, so the exact layout stays.)

Q8_0 block: w = d*q, q int8, which is MatMulNBits 8-bit with zp = 128 and no correction at all.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader

from inference.export import ExportError

BLOCK = 32  # weights per GGUF block, and MatMulNBits' block_size
Q4_1_BLOCK_BYTES = 20  # fp16 d, fp16 m, 16 bytes of nibbles
Q8_0_BLOCK_BYTES = 34  # fp16 d, 32 int8
ZERO_POINT = {4: 8, 8: 128}  # MatMulNBits' default zero points, which the packing below relies on
# MatMulNBits accuracy_level. 0 keeps activations fp32 (bit-faithful, but slower than fp32 on a 2-core
# AVX2 CPU); 4 quantizes activations to int8 per block at run time: ~2x faster decode for +0.75%
# perplexity on SmolLM2 (16.64 vs 16.51), well inside the 2% gate. The weights stay exact either way.
DEFAULT_ACCURACY_LEVEL = 4


@dataclass
class LinearWeights:
    """One linear layer y = x @ W, W [k, n], as a dense matrix or as MatMulNBits blocks."""

    k: int
    n: int
    kind: str  # "dense", "q4_1" or "q8_0"
    dense: np.ndarray | None = None  # [k, n] fp32
    packed: np.ndarray | None = None  # [n, k/32, 32*bits/8] uint8
    scales: np.ndarray | None = None  # [n, k/32] fp32
    offsets: np.ndarray | None = None  # [k/32, n] fp32, Q4_1 only

    @property
    def bits(self) -> int:
        return {"q4_1": 4, "q8_0": 8}[self.kind]

    def dequantized(self) -> np.ndarray:
        """The [k, n] matrix the graph computes with, in numpy: the check against the fp32 weights."""
        if self.kind == "dense":
            return self.dense
        n, kb, _ = self.packed.shape
        if self.kind == "q8_0":
            q = self.packed.astype(np.float32) - ZERO_POINT[8]
            return (self.scales[..., None] * q).reshape(n, kb * BLOCK).T
        q = np.stack([self.packed & 0x0F, self.packed >> 4], axis=-1).reshape(n, kb, BLOCK).astype(np.float32)
        w = self.scales[..., None] * (q - ZERO_POINT[4]) + self.offsets.T[..., None]
        return w.reshape(n, kb * BLOCK).T

    @classmethod
    def concat(cls, parts: list["LinearWeights"]) -> "LinearWeights":
        """Fuse linears that share an input (q|k|v, gate|up) along N: one kernel call instead of several."""
        first = parts[0]
        n = sum(p.n for p in parts)
        if first.kind == "dense":
            return cls(first.k, n, "dense", dense=np.concatenate([p.dense for p in parts], axis=1))
        return cls(
            first.k,
            n,
            first.kind,
            packed=np.concatenate([p.packed for p in parts]),
            scales=np.concatenate([p.scales for p in parts]),
            offsets=None if first.offsets is None else np.concatenate([p.offsets for p in parts], axis=1),
        )


def unpack_q4_1(raw_blocks: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GGUF Q4_1 bytes [n, k/32*20] -> d [n, kb], m [n, kb] (fp32) and q [n, kb, 32] (uint8, in K order)."""
    blocks = np.ascontiguousarray(raw_blocks, dtype=np.uint8).reshape(n, k // BLOCK, Q4_1_BLOCK_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    nibbles = blocks[..., 4:]
    # ggml stores element j in the low nibble and element j+16 in the high nibble of byte j.
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
    return d, m, q


def pack_q4_1(raw_blocks: np.ndarray, n: int, k: int) -> LinearWeights:
    """GGUF Q4_1 bytes of an [n, k] weight -> MatMulNBits blocks (zp 8) and the offset matrix C.

    packed [n, kb, 16]: elements 2j (low nibble) and 2j+1 (high nibble) of each block share a byte;
    C [kb, n] with C[b, j] = m + 8d of row j's block b.
    """
    if k % BLOCK:
        raise ValueError(f"K={k} is not a multiple of the block size {BLOCK}")
    d, m, q = unpack_q4_1(raw_blocks, n, k)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    offsets = np.ascontiguousarray((m + np.float32(ZERO_POINT[4]) * d).T.astype(np.float32))
    return LinearWeights(k, n, "q4_1", packed=packed, scales=d, offsets=offsets)


def pack_q8_0(raw_blocks: np.ndarray, n: int, k: int) -> LinearWeights:
    """GGUF Q8_0 bytes of an [n, k] weight -> 8-bit MatMulNBits blocks (q + 128, zp 128)."""
    if k % BLOCK:
        raise ValueError(f"K={k} is not a multiple of the block size {BLOCK}")
    blocks = np.ascontiguousarray(raw_blocks, dtype=np.uint8).reshape(n, k // BLOCK, Q8_0_BLOCK_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    q = blocks[..., 2:].view(np.int8).astype(np.int16)
    return LinearWeights(k, n, "q8_0", packed=(q + ZERO_POINT[8]).astype(np.uint8), scales=d)


def pack_blocks(raw_blocks: np.ndarray, quant_type: GGMLQuantizationType, n: int, k: int) -> LinearWeights:
    if quant_type == GGMLQuantizationType.Q4_1:
        return pack_q4_1(raw_blocks, n, k)
    if quant_type == GGMLQuantizationType.Q8_0:
        return pack_q8_0(raw_blocks, n, k)
    raise ExportError(f"no lossless MatMulNBits packing for GGUF type {quant_type.name}")


def llama_row_order(n: int, n_head: int) -> np.ndarray:
    # llama.cpp interleaves q/k rows for its rotary layout; transformers undoes it (reverse_permute) when
    # loading, so HF's row r is GGUF row order[r].
    return np.arange(n).reshape(n_head, n // n_head // 2, 2).swapaxes(1, 2).reshape(n)


class GGUFBlocks:
    """Raw blocks of a llama GGUF's tensors, rows in transformers' (HF) order."""

    def __init__(self, gguf_path: Path) -> None:
        self.path = gguf_path
        self.reader = GGUFReader(gguf_path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def _int(self, key: str) -> int:
        field = self.reader.fields[key]
        return int(field.parts[field.data[0]][0])

    def linear(self, name: str) -> LinearWeights:
        tensor = self.tensors.get(name)
        if tensor is None:
            raise ExportError(f"{self.path} has no tensor {name}; it is not the model the config describes")
        k, n = (int(d) for d in tensor.shape)  # GGUF shapes list the fastest-varying dimension first
        raw = np.asarray(tensor.data).reshape(n, -1)
        if ".attn_q." in name or ".attn_k." in name:
            heads = self._int("llama.attention.head_count" + ("_kv" if ".attn_k." in name else ""))
            raw = raw[llama_row_order(n, heads)]
        return pack_blocks(raw, GGMLQuantizationType(tensor.tensor_type), n, k)
