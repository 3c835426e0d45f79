"""LoRA adapters as banks the decoder gathers from per row, loaded and evicted at run time.

A PEFT adapter adds scale * x @ A^T @ B^T to a linear layer (A [r, in], B [out, r]). The decoder's
LoRA graph fuses q|k|v and gate|up like its base linears, so the banks are laid out per fused group:

    lora.{group}.A [layers * slots, in, rank * modules]   each module's A^T in its own rank band
    lora.{group}.B [layers * slots, rank * modules, out]  its scaled B^T in that band's rows and its
                                                          own output columns (block diagonal)

The bands are sized to the adapters loaded now, not to the worst case: `rank` is the largest rank
among them and `modules` only those some adapter targets, and a group no adapter targets has width
zero, which costs the graph nothing. (Eight rank-8 q/v adapters in max_rank-16 bands for every group
made a mixed-adapter step 1.75x slower than a base step; most of that was gathering zeros.) When the
loaded set needs other widths, new banks are built and swapped in whole, so a forward pass still
running on the old ones is unaffected.

Slot 0 is all zeros: rows without an adapter. Adapters of lower rank or fewer target modules leave
zeros, which add nothing. Only safetensors are read: a pickle (.bin) could run code on load.
"""

import json
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from inference.config import LORA_GROUP_MODULES, LORA_GROUPS, DecoderConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(ValueError):
    """The adapter can't be used: the message says why, for the HTTP 400 answer."""


class AdaptersBusy(RuntimeError):
    """Every slot holds an adapter that running requests still use."""


class AdapterBank:
    def __init__(self, config: DecoderConfig, *, slots: int, max_rank: int) -> None:
        self.config, self.max_rank = config, max_rank
        self.slots = slots + 1  # + the all-zero slot 0
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # adapter id -> slot, least recently used first
        self._users: dict[str, int] = {}  # adapter id -> running requests using it
        self._modules: dict[str, dict] = {}  # adapter id -> {(layer, module): (A, scaled B)}
        self._lock = threading.Lock()
        self.layout: dict[str, tuple[int, tuple[str, ...]]] = {}
        self.banks: dict[str, np.ndarray] = self._build_banks()

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._slot_of)

    def load(self, adapter_id: str, path: Path) -> None:
        """Load (or reload) the PEFT adapter in directory `path` under adapter_id, evicting the LRU one."""
        modules = read_peft_adapter(path, self.config, max_rank=self.max_rank)
        with self._lock:
            slot = self._slot_of.get(adapter_id)
            if slot is not None and self._users.get(adapter_id):
                raise AdaptersBusy(f"adapter {adapter_id!r} is in use by running requests; retry when they finish")
            if slot is None:
                slot = self._free_slot()
            self._slot_of[adapter_id] = slot
            self._slot_of.move_to_end(adapter_id)
            self._modules[adapter_id] = modules
            self._refresh(slot, modules)

    def unload(self, adapter_id: str) -> None:
        with self._lock:
            if adapter_id not in self._slot_of:
                raise KeyError(adapter_id)
            if self._users.get(adapter_id):
                raise AdaptersBusy(f"adapter {adapter_id!r} is in use by running requests; retry when they finish")
            slot = self._slot_of.pop(adapter_id)
            del self._modules[adapter_id]
            self._refresh(slot, {})

    def acquire(self, adapter_id: str) -> int:
        """The slot of a loaded adapter, pinned until release(): running requests are never evicted."""
        with self._lock:
            if adapter_id not in self._slot_of:
                raise KeyError(adapter_id)
            self._slot_of.move_to_end(adapter_id)
            self._users[adapter_id] = self._users.get(adapter_id, 0) + 1
            return self._slot_of[adapter_id]

    def release(self, adapter_id: str) -> None:
        with self._lock:
            self._users[adapter_id] -= 1

    def _free_slot(self) -> int:
        used = set(self._slot_of.values())
        for slot in range(1, self.slots):
            if slot not in used:
                return slot
        for adapter_id in self._slot_of:  # least recently used first
            if not self._users.get(adapter_id):
                del self._modules[adapter_id]
                return self._slot_of.pop(adapter_id)
        raise AdaptersBusy(f"all {self.slots - 1} adapter slots are in use by running requests")

    def _needed_layout(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """Per group: the band rank and the modules that the loaded adapters target."""
        ranks: dict[str, int] = {}  # module -> the largest rank any loaded adapter gives it
        for modules in self._modules.values():
            for (_, module), (a, _) in modules.items():
                ranks[module] = max(ranks.get(module, 0), a.shape[0])
        layout = {}
        for group in LORA_GROUPS:
            members = tuple(m for m in LORA_GROUP_MODULES[group] if m in ranks)
            layout[group] = (max((ranks[m] for m in members), default=0), members)
        return layout

    def _build_banks(self) -> dict[str, np.ndarray]:
        self.layout = self._needed_layout()
        banks = {}
        for group, (rank, members) in self.layout.items():
            k, n = self.config.group_shape(group)
            band = rank * len(members)
            banks[f"lora.{group}.A"] = np.zeros((self.config.num_layers * self.slots, k, band), np.float32)
            banks[f"lora.{group}.B"] = np.zeros((self.config.num_layers * self.slots, band, n), np.float32)
        return banks

    def _refresh(self, slot: int, modules: dict) -> None:
        """After loading `modules` into `slot` (or freeing it: no modules): rewrite that slot in place, or
        build and swap new banks when the loaded adapters need other band widths."""
        if self._needed_layout() == self.layout:
            self._write(self.banks, slot, modules)
            return
        banks = self._build_banks()
        for adapter_id, adapter_slot in self._slot_of.items():
            self._write(banks, adapter_slot, self._modules[adapter_id])
        self.banks = banks  # one assignment: the engine reads either the old banks or the new

    def _write(self, banks: dict[str, np.ndarray], slot: int, modules: dict) -> None:
        for layer in range(self.config.num_layers):
            row = layer * self.slots + slot
            for group, (rank, members) in self.layout.items():
                a, b = banks[f"lora.{group}.A"][row], banks[f"lora.{group}.B"][row]
                a[...] = 0
                b[...] = 0
                out = 0
                for module in LORA_GROUP_MODULES[group]:
                    width = self.config.module_out_features(module)
                    if (layer, module) in modules:
                        lora_a, lora_b = modules[(layer, module)]  # [r, in], scaled [out, r]
                        start = members.index(module) * rank
                        band = slice(start, start + lora_a.shape[0])
                        a[:, band] = lora_a.T
                        b[band, out : out + width] = lora_b.T
                    out += width


def read_peft_adapter(path: Path, config: DecoderConfig, *, max_rank: int) -> dict[tuple[int, str], tuple]:
    """{(layer, module): (A [r, in], scale * B [out, r])} from a PEFT adapter directory, validated."""
    if not path.is_dir():
        raise AdapterError(f"adapter path {path} is not a directory")
    weights_path, config_path = path / ADAPTER_WEIGHTS, path / ADAPTER_CONFIG
    if not weights_path.is_file():
        pickles = sorted(p.name for p in path.glob("*.bin"))
        hint = (
            f" (found {', '.join(pickles)}: pickles are refused, save with safe_serialization=True)" if pickles else ""
        )
        raise AdapterError(f"{path} has no {ADAPTER_WEIGHTS}; adapters are accepted only as safetensors{hint}")
    try:
        peft = json.loads(config_path.read_text())
        rank, alpha = int(peft["r"]), float(peft.get("lora_alpha", peft["r"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AdapterError(f"{config_path} is missing or invalid: {error}") from error
    if not 0 < rank <= max_rank:
        raise AdapterError(f"adapter rank {rank} is outside 1..{max_rank} (the server's INFERENCE_LORA_MAX_RANK)")
    if peft.get("use_dora"):
        raise AdapterError("DoRA adapters are not supported, only plain LoRA")
    scale = alpha / (rank**0.5 if peft.get("use_rslora") else rank)
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise AdapterError(f"{weights_path} is not a readable safetensors file: {error}") from error

    modules: dict[tuple[int, str], tuple] = {}
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for name, tensor in tensors.items():
        parts = name.split(".")
        try:
            layer = int(parts[parts.index("layers") + 1])
            kind = next(p for p in parts if p in ("lora_A", "lora_B"))
            module = parts[parts.index(kind) - 1]
        except (ValueError, StopIteration, IndexError):
            raise AdapterError(
                f"unexpected tensor {name!r}: only LoRA A/B weights of decoder layers are supported"
            ) from None
        if module not in {m for group in LORA_GROUP_MODULES.values() for m in group}:
            raise AdapterError(f"tensor {name!r} targets {module!r}, which this server cannot adapt")
        if not 0 <= layer < config.num_layers:
            raise AdapterError(f"tensor {name!r} names layer {layer}; the base model has {config.num_layers}")
        pairs.setdefault((layer, module), {})[kind] = tensor.astype(np.float32)
    if not pairs:
        raise AdapterError(f"{weights_path} holds no LoRA weights")
    for (layer, module), pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise AdapterError(f"layer {layer} {module} has only {', '.join(pair)}")
        lora_a, lora_b = pair["lora_A"], pair["lora_B"]
        k = config.group_shape(next(g for g, ms in LORA_GROUP_MODULES.items() if module in ms))[0]
        expected_a, expected_b = (rank, k), (config.module_out_features(module), rank)
        if lora_a.shape != expected_a or lora_b.shape != expected_b:
            raise AdapterError(
                f"layer {layer} {module}: A {lora_a.shape} and B {lora_b.shape}, expected {expected_a} and "
                f"{expected_b}; the adapter was trained for a different base model"
            )
        modules[(layer, module)] = (lora_a, lora_b * np.float32(scale))
    return modules
