"""One decoder on ONNX Runtime: the KV cache it owns, and a forward() over any contiguous run of its rows.

The KV cache is preallocated once: per layer a [max_rows, kv_heads, capacity, head_dim] buffer for keys
and one for values, on the device the session runs on. Row r holds one sequence. Every Run binds a view
of rows [start, start+B) as both past_* input and present_* output, so GroupQueryAttention appends the
new keys in place: no copy of the cache per token, and no host round trip on CUDA.

Two graphs share that cache: the base decoder, and (when an adapter is in the batch) the same decoder
with banked per-row LoRA. A batch with no adapter never pays for LoRA.

Rows are copied (n > 1 choices share one prefill) by a third, tiny graph, bound by pointer like the
cache itself, so the copy happens on the cache's own device through the same code on CPU and CUDA.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.config import DecoderConfig


def choose_device(requested: str | None = None) -> str:
    """ATELIER_DEVICE=cpu|cuda overrides; otherwise CUDA when ORT has it, else CPU."""
    requested = (requested or os.environ.get("ATELIER_DEVICE") or "auto").lower()
    available = ort.get_available_providers()
    if requested == "auto":
        return "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if requested == "cuda" and "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            "ATELIER_DEVICE=cuda but this onnxruntime has no CUDAExecutionProvider "
            f"(it has {', '.join(available)}); install onnxruntime-gpu or use ATELIER_DEVICE=cpu"
        )
    if requested not in ("cpu", "cuda"):
        raise RuntimeError(f"ATELIER_DEVICE must be cpu, cuda or auto, not {requested!r}")
    return requested


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spin between ops while a Run lasts (waking a sleeping thread costs more than a small op), and stop
    # the moment it returns, so the idle pool never starves the event loop, the web app or the worker.
    # Through HTTP on 2 cores, A/B over 4 interleaved rounds: single-stream 89 vs 83 tok/s, 8 streams
    # 173 vs 158 tok/s. Spinning without the stop (the pool spins on after Run) halved single-stream
    # decode under load (25 vs 46 tok/s), so both keys go together.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


# One Identity over a float vector of any length ("source" -> "target", opset 17), serialized here
# rather than built with onnx so that serving never imports the model-building code; a test rebuilds
# it with onnx.helper and compares. Bound to a span of one row and the same span of another, ORT
# copies it in place on whatever device holds the cache: a memcpy on CPU, device to device on CUDA.
SPAN_COPY_GRAPH = (
    b'\x08\x08:T\n\x1a\n\x06source\x12\x06target"\x08Identity\x12\x08row_copyZ\x15\n\x06source\x12\x0b\n\t'
    b"\x08\x01\x12\x05\n\x03\x12\x01nb\x15\n\x06target\x12\x0b\n\t\x08\x01\x12\x05\n\x03\x12\x01nB\x04\n\x00\x10\x11"
)


@dataclass
class Lora:
    """What a LoRA forward needs besides the tokens: each row's slot and the banks (see adapters.py)."""

    index: np.ndarray  # [B] int64
    banks: dict[str, np.ndarray]  # graph input name -> bank array


class DecoderSession:
    def __init__(
        self,
        model_dir: Path,
        *,
        max_rows: int,
        capacity: int,
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.device = choose_device(device)
        cuda = ["CUDAExecutionProvider"] if self.device == "cuda" else []
        options = session_options(threads)
        self.base = ort.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=[*cuda, "CPUExecutionProvider"]
        )
        self.config = _config(self.base, model_dir / "model.onnx")
        if capacity > self.config.max_positions:
            raise ValueError(f"capacity {capacity} exceeds the model's {self.config.max_positions} positions")
        self.max_rows, self.capacity = max_rows, capacity
        lora_path = model_dir / "model_lora.onnx"
        self.lora = None
        if lora_path.exists():
            self.lora = ort.InferenceSession(str(lora_path), options, providers=[*cuda, "CPUExecutionProvider"])
        c = self.config
        self.kv_shape = (max_rows, c.num_kv_heads, capacity, c.head_dim)
        self.dtype = np.float32
        self._row_bytes = c.num_kv_heads * capacity * c.head_dim * np.dtype(self.dtype).itemsize
        # One buffer per layer and kind (numpy on CPU, an OrtValue on CUDA); rows are addressed by
        # pointer arithmetic into it.
        if self.device == "cpu":
            self.cache = [np.zeros(self.kv_shape, self.dtype) for _ in range(2 * c.num_layers)]
            self._pointers = [array.ctypes.data for array in self.cache]
        else:
            self.cache = [
                ort.OrtValue.ortvalue_from_shape_and_type(self.kv_shape, self.dtype, "cuda", 0)
                for _ in range(2 * c.num_layers)
            ]
            self._pointers = [value.data_ptr() for value in self.cache]
        self._bindings: dict[tuple[bool, int, int], ort.IOBinding] = {}  # (LoRA graph?, start, rows)
        self._copier = ort.InferenceSession(SPAN_COPY_GRAPH, options, providers=[*cuda, "CPUExecutionProvider"])

    def forward(
        self,
        input_ids: np.ndarray,
        *,
        start: int,
        lengths: np.ndarray,
        logits_index: np.ndarray,
        lora: Lora | None = None,
    ) -> np.ndarray:
        """Run input_ids [B, S] on KV rows [start, start+B); lengths [B] = each row's length after it.

        Returns logits [B, len(logits_index), vocab] for the requested positions of the S new tokens.
        """
        batch, _ = input_ids.shape
        if start < 0 or start + batch > self.max_rows:
            raise IndexError(f"rows [{start}, {start + batch}) outside the cache's {self.max_rows} rows")
        if int(lengths.max()) > self.capacity:
            raise ValueError(f"a row would hold {int(lengths.max())} tokens; the cache holds {self.capacity}")
        session = self.base if lora is None else self.lora
        binding = self._binding(session, start, batch)
        # Rebound every step: once ORT has allocated it, a bound output would be reused as a fixed-shape buffer.
        binding.bind_output("logits", "cpu")
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", (lengths - 1).astype(np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(int(lengths.max()), dtype=np.int32))
        binding.bind_cpu_input("logits_index", np.ascontiguousarray(logits_index, dtype=np.int64))
        if lora is not None:
            binding.bind_cpu_input("lora_index", lora.index.astype(np.int64))
            for name, bank in lora.banks.items():  # by pointer: the banks are large and must not be copied
                binding.bind_input(name, "cpu", 0, np.float32, list(bank.shape), bank.ctypes.data)
        session.run_with_iobinding(binding)
        # Only the logits: copy_outputs_to_cpu() would also copy every bound KV buffer.
        return binding.get_outputs()[0].numpy()

    def _binding(self, session: ort.InferenceSession, start: int, batch: int) -> ort.IOBinding:
        """The IOBinding of rows [start, start+batch) with the KV cache already bound, made once per range.

        Binding 2 x layers cache views costs ~1 ms of Python per step; rebinding the small inputs by name
        replaces them in place, so only those change between steps.
        """
        key = (session is self.lora, start, batch)
        binding = self._bindings.get(key)
        if binding is not None:
            return binding
        binding = session.io_binding()
        binding.bind_output("logits", "cpu")  # bound first: outputs come back in binding order
        shape = [batch, *self.kv_shape[1:]]
        offset = start * self._row_bytes
        for layer in range(self.config.num_layers):
            for j, kind in enumerate(("key", "value")):
                pointer = self._pointers[2 * layer + j] + offset
                binding.bind_input(f"past_{kind}.{layer}", self.device, 0, self.dtype, shape, pointer)
                binding.bind_output(f"present_{kind}.{layer}", self.device, 0, self.dtype, shape, pointer)
        self._bindings[key] = binding
        return binding

    def copy_rows(self, *, source: int, target: int, length: int) -> None:
        """Copy row source's first `length` positions to row target (n > 1 choices sharing one prefill).

        A row is [kv_heads, capacity, head_dim], so each head's first `length` positions are one
        contiguous span; each span is copied by the copy graph, on the cache's device.
        """
        if not (0 <= source < self.max_rows and 0 <= target < self.max_rows) or source == target:
            raise IndexError(f"cannot copy row {source} to row {target} of {self.max_rows}")
        if not 0 < length <= self.capacity:
            raise ValueError(f"cannot copy {length} positions of a {self.capacity}-position row")
        itemsize = np.dtype(self.dtype).itemsize
        head_bytes = self.capacity * self.config.head_dim * itemsize
        span = [length * self.config.head_dim]
        binding = self._copier.io_binding()
        for pointer in self._pointers:
            for head in range(self.config.num_kv_heads):
                offset = head * head_bytes
                source_at = pointer + source * self._row_bytes + offset
                target_at = pointer + target * self._row_bytes + offset
                binding.bind_input("source", self.device, 0, self.dtype, span, source_at)
                binding.bind_output("target", self.device, 0, self.dtype, span, target_at)
                self._copier.run_with_iobinding(binding)


def _config(session: ort.InferenceSession, model_path: Path) -> DecoderConfig:
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("atelier.graph") != "decoder-v1":
        raise ValueError(f"{model_path} is not an Atelier decoder graph (no atelier.graph metadata)")
    config = json.loads(meta["atelier.config"])
    config["eos_token_ids"] = tuple(config["eos_token_ids"])
    return DecoderConfig(**config)
