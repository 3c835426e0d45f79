"""The base model as a LoRA training decoder: frozen Llama weights, fused like the engine's, plus trainable
PEFT-compatible adapters.

Not transformers' LlamaForCausalLM + PEFT, because on a CPU the step time goes to everything around the
matmuls (tests/finetune checks this decoder's logits against that pair's):
- the frozen weights are stored once in the compute dtype. bf16 runs on AMX tiles at several times fp32's
  speed; autocast would re-cast every weight on every step instead.
- q|k|v and gate|up are one GEMM each, as in the engine's graph (inference/graph.py), and each RMSNorm's
  weight is folded into the columns of the linear that reads it.
- LoRA per fused group: one dropout of the shared input, one GEMM for the group's stacked A's and one
  addmm with the block-diagonal B's that also adds the base output (PEFT runs a dropout, an A, a B and
  an add per module: 7 of each per layer).
- the residual stream, norms and the loss stay fp32; matmuls, attention and activations use the
  compute dtype (what torch.autocast does, minus the casts).
- RoPE on q and k in one pass; attention is one causal SDPA call over the packed stream's attention rows
  (apps/finetune/packing.py), with position ids that restart per example.
- the vocabulary projection is not part of forward(): the trainer applies `logits` only to the positions
  that predict a trained token.

Only what the engine serves is accepted: a Llama with plain RoPE, no biases, SiLU gates. Adapters are
saved exactly as PEFT saves them (adapter_config.json + adapter_model.safetensors, lora_A [r, in] and
lora_B [out, r] per module, scale alpha / r), so PEFT and the engine (inference/adapters.py) load them.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from apps.finetune.packing import Batch
from apps.finetune.training_settings import ALL_MODULES, LoraSettings
from inference.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, read_peft_adapter
from inference.graph import LORA_GROUP_MODULES, LORA_GROUPS, DecoderConfig

ATTENTION_MODULES = frozenset(("q_proj", "k_proj", "v_proj", "o_proj"))


class BaseModelError(ValueError):
    """The base checkpoint or a starting adapter cannot be trained on; the message says why."""


def peft_key(layer: int, module: str, kind: str) -> str:
    block = "self_attn" if module in ATTENTION_MODULES else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}.{kind}.weight"


def _check_supported(hf_dir: Path) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    problems = []
    if config.get("model_type") != "llama":
        problems.append(f"model_type {config.get('model_type')!r} (only llama)")
    if config.get("rope_scaling"):
        problems.append("rope_scaling")
    if config.get("attention_bias") or config.get("mlp_bias"):
        problems.append("linear biases")
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"activation {config.get('hidden_act')!r}")
    if problems:
        raise BaseModelError(f"{hf_dir} is not a model the trainer supports: {', '.join(problems)}")


class LoraDecoder(torch.nn.Module):
    def __init__(
        self,
        *,
        hf_dir: Path,
        lora: LoraSettings,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_supported(hf_dir)
        self.config = config = DecoderConfig.from_hf(hf_dir)
        self.lora, self.dtype, self.device = lora, dtype, torch.device(device)
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(hf_dir.glob("*.safetensors")):
            tensors.update(load_file(path))

        def weight(name: str) -> torch.Tensor:
            return tensors[name].to(device=self.device, dtype=torch.float32)

        def fused(layer: int, block: str, group: str, norm: torch.Tensor | None = None) -> torch.Tensor:
            names = [f"model.layers.{layer}.{block}.{m}.weight" for m in LORA_GROUP_MODULES[group]]
            stacked = torch.cat([weight(n) for n in names])
            return (stacked if norm is None else stacked * norm).to(dtype).contiguous()

        # Each RMSNorm's weight is folded into the columns of the linear that reads it (W diag(w)), so the
        # norm itself is one scaling per token; the LoRA A's that read it get the same fold at use.
        self.embed = weight("model.embed_tokens.weight")
        head = weight("lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight")
        self.head = (head * weight("model.norm.weight")).to(dtype)
        self.layers = []
        self.a_scales: dict[tuple[int, str], torch.Tensor | float] = {}  # LoRA scale, times the folded norm
        for i in range(config.num_layers):
            attn_norm = weight(f"model.layers.{i}.input_layernorm.weight")
            mlp_norm = weight(f"model.layers.{i}.post_attention_layernorm.weight")
            self.layers.append(
                {
                    "qkv": fused(i, "self_attn", "qkv", attn_norm),
                    "o": fused(i, "self_attn", "o"),
                    "gate_up": fused(i, "mlp", "gate_up", mlp_norm),
                    "down": fused(i, "mlp", "down"),
                }
            )
            self.a_scales |= {
                (i, "qkv"): attn_norm * lora.scale,
                (i, "o"): lora.scale,
                (i, "gate_up"): mlp_norm * lora.scale,
                (i, "down"): lora.scale,
            }
        head_dim = config.head_dim
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        self.inv_freq = (1.0 / config.rope_theta**exponents).to(self.device)

        # Trainable LoRA weights, fp32 whatever the compute dtype: per (layer, group) the targeted modules'
        # A's stacked [modules * r, in], and per (layer, module) B [out, r]. PEFT's init: A Kaiming-uniform
        # (a = sqrt 5, so bound 1 / sqrt(in)), B zero, so training starts from the base model exactly.
        generator = torch.Generator().manual_seed(seed)
        # Dropout draws from its own generator, saved in checkpoints, so nothing else in the process
        # (a Celery worker's other work) can change a run, and a resumed run draws what it would have.
        self.dropout_generator = torch.Generator(self.device).manual_seed(seed + 1)
        self.group_modules = {
            g: tuple(m for m in LORA_GROUP_MODULES[g] if m in lora.target_modules) for g in LORA_GROUPS
        }
        self.lora_a = torch.nn.ParameterDict()
        self.lora_b = torch.nn.ParameterDict()
        for i in range(config.num_layers):
            for group, modules in self.group_modules.items():
                if not modules:
                    continue
                fan_in = config.group_shape(group)[0]
                bound = 1 / math.sqrt(fan_in)
                a = (torch.rand(len(modules) * lora.rank, fan_in, generator=generator) * 2 - 1) * bound
                self.lora_a[f"{i}_{group}"] = torch.nn.Parameter(a.to(self.device))
                for module in modules:
                    out = config.module_out_features(module)
                    self.lora_b[f"{i}_{module}"] = torch.nn.Parameter(torch.zeros(out, lora.rank, device=self.device))

    # -- forward -----------------------------------------------------------------------------------

    def _linear(self, x: torch.Tensor, layer: int, group: str) -> torch.Tensor:
        """x [N, in] through one fused linear of `layer`, plus its LoRA: y + blockdiag(B) (scale A x)."""
        y = F.linear(x, self.layers[layer][group])
        modules = self.group_modules[group]
        if not modules:
            return y
        dropped = x
        if self.lora.dropout and self.training:
            keep = torch.empty_like(x).bernoulli_(1 - self.lora.dropout, generator=self.dropout_generator)
            dropped = x * keep.div_(1 - self.lora.dropout)
        down = F.linear(dropped, (self.lora_a[f"{layer}_{group}"] * self.a_scales[(layer, group)]).to(self.dtype))
        # One GEMM for the group's B's (block-diagonal; zero rows for modules not targeted) that also adds
        # the base output: cheaper than a GEMM per module and a concatenation the size of y.
        blocks = [
            self.lora_b[f"{layer}_{m}"] if m in modules else y.new_zeros(self.config.module_out_features(m), 0)
            for m in LORA_GROUP_MODULES[group]
        ]
        up = torch.block_diag(*blocks) if len(blocks) > 1 else blocks[0]
        return torch.addmm(y, down, up.to(self.dtype).T)

    def _rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin [N, 1, D], so that rope(x) = x cos + roll(x, D/2) sin: the same rotation as
        transformers' x cos + rotate_half(x) sin, with one op fewer."""
        freqs = position_ids[:, None].float() * self.inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat([cos, cos], -1)[:, None].to(self.dtype), torch.cat([-sin, sin], -1)[:, None].to(self.dtype)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.config.hidden_size,), eps=self.config.rms_eps).to(self.dtype)

    def _attend(self, qk: torch.Tensor, v: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Causal attention per example of a packed stream: qk [N, heads + kv heads, D] (after RoPE) and
        v [N, kv heads, D] gathered into the batch's attention rows, one SDPA call, each token's output
        taken back: [N, heads * D]."""
        config = self.config
        rows, width = batch.attention_rows
        qk_rows = qk.index_select(0, batch.gather).view(rows, width, -1, config.head_dim).transpose(1, 2)
        q, k = qk_rows.split([config.num_heads, config.num_kv_heads], 1)
        v = v.index_select(0, batch.gather).view(rows, width, -1, config.head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return attended.transpose(1, 2).reshape(rows * width, -1).index_select(0, batch.keep)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Final-normed hidden states [N, H] (fp32) of a packed stream (apps/finetune/packing.py), without the
        final norm's weight: `logits` applies it (folded into the head)."""
        config = self.config
        heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        qk_width, kv_width = (heads + kv_heads) * head_dim, kv_heads * head_dim
        cos, sin = self._rope(batch.position_ids)
        x = F.embedding(batch.input_ids, self.embed)
        for i in range(len(self.layers)):
            # RoPE on q and k at once, in [N, heads, D] layout
            qk, v = self._linear(self._norm(x), i, "qkv").split([qk_width, kv_width], -1)
            qk = qk.reshape(-1, heads + kv_heads, head_dim)
            qk = torch.addcmul(qk * cos, qk.roll(head_dim // 2, -1), sin)
            x = x + self._linear(self._attend(qk, v.reshape(-1, kv_heads, head_dim), batch), i, "o")
            gate, up = self._linear(self._norm(x), i, "gate_up").chunk(2, -1)
            x = x + self._linear(F.silu(gate) * up, i, "down")
        return F.rms_norm(x, (config.hidden_size,), eps=config.rms_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The vocabulary projection of some hidden states [M, H], as fp32 logits [M, V]."""
        return F.linear(hidden.to(self.dtype), self.head).float()

    # -- adapters ----------------------------------------------------------------------------------

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The LoRA weights under PEFT's names (fp32, on the CPU)."""
        rank, tensors = self.lora.rank, {}
        for i in range(self.config.num_layers):
            for group, modules in self.group_modules.items():
                for band, module in enumerate(modules):
                    a = self.lora_a[f"{i}_{group}"][band * rank : (band + 1) * rank]
                    tensors[peft_key(i, module, "lora_A")] = a.detach().float().cpu().contiguous()
                    tensors[peft_key(i, module, "lora_B")] = self.lora_b[f"{i}_{module}"].detach().float().cpu()
        return tensors

    def adapter_config(self, *, base_model: str) -> dict:
        """adapter_config.json as PEFT writes it for a plain LoRA of this decoder."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.lora.rank,
            "lora_alpha": self.lora.alpha,
            "lora_dropout": self.lora.dropout,
            "target_modules": sorted(self.lora.target_modules),
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "inference_mode": True,
            "modules_to_save": None,
            "layers_to_transform": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }

    def load_adapter_weights(self, path: Path) -> None:
        """Start from a saved PEFT adapter (validated by the engine's own reader): it must have this
        decoder's rank, alpha and target modules on every layer (read_adapter_settings gives them)."""
        try:
            modules = read_peft_adapter(path, self.config, max_rank=self.lora.rank)
        except AdapterError as error:
            raise BaseModelError(str(error)) from error
        expected = {(i, m) for i in range(self.config.num_layers) for m in self.lora.target_modules}
        if set(modules) != expected:
            raise BaseModelError(f"{path} does not adapt the same modules on every layer; it cannot be trained on")
        rank = self.lora.rank
        with torch.no_grad():
            for (i, module), (a, scaled_b) in modules.items():
                if a.shape[0] != rank:
                    raise BaseModelError(f"{path}: layer {i} {module} has rank {a.shape[0]}, expected {rank}")
                group = next(g for g, ms in self.group_modules.items() if module in ms)
                band = self.group_modules[group].index(module) * rank
                self.lora_a[f"{i}_{group}"][band : band + rank] = torch.from_numpy(a)
                self.lora_b[f"{i}_{module}"].copy_(torch.from_numpy(scaled_b) / self.lora.scale)


def read_adapter_settings(path: Path, *, dropout: float) -> LoraSettings:
    """The LoRA settings a saved PEFT adapter was trained with (rank, alpha, target modules)."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        tensors = load_file(path / ADAPTER_WEIGHTS)
        rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BaseModelError(f"{path} is not a readable PEFT adapter: {error}") from error
    if config.get("use_rslora") or config.get("use_dora"):
        raise BaseModelError(f"{path}: only plain LoRA adapters (no rsLoRA, no DoRA) can be trained on")
    modules = {part for name in tensors for part in name.split(".") if part in ALL_MODULES}
    return LoraSettings(rank=rank, alpha=alpha, dropout=dropout, target_modules=tuple(sorted(modules)))
