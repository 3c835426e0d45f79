"""What the engine knows of a decoder without building it: its shape, and how LoRA modules group.

Kept apart from graph.py (which imports onnx, gguf and the exporter) so that serving a model never
imports the code that builds one.
"""

import json
from dataclasses import dataclass
from pathlib import Path

LORA_GROUPS = ("qkv", "o", "gate_up", "down")
# The PEFT module names each group is made of, in the order their outputs are concatenated.
LORA_GROUP_MODULES = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    max_positions: int
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, hf_dir: Path) -> "DecoderConfig":
        config = json.loads((hf_dir / "config.json").read_text())
        eos = config.get("eos_token_id")
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            max_positions=config["max_position_embeddings"],
            eos_token_ids=tuple(eos if isinstance(eos, list) else [eos] if eos is not None else []),
        )

    def group_shape(self, group: str) -> tuple[int, int]:
        """(K, N) of one fused linear."""
        h, ff = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {"qkv": (h, q + 2 * kv), "o": (q, h), "gate_up": (h, 2 * ff), "down": (ff, h)}[group]

    def module_out_features(self, module: str) -> int:
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": q,
            "k_proj": kv,
            "v_proj": kv,
            "o_proj": self.hidden_size,
            "gate_proj": self.intermediate_size,
            "up_proj": self.intermediate_size,
            "down_proj": self.hidden_size,
        }[module]
