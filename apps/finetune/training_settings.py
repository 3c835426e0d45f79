"""A fine-tune's knobs and their defaults, without torch: the web app fills the Train form's placeholders and
checks a job's settings from here, and only the worker that trains imports training.py (and torch).

`LoraSettings` is PEFT's LoRA configuration; `TrainingSettings` is everything else the trainer reads.
SFT_DEFAULTS and DPO_DEFAULTS are each method's starting point (services.training_settings_default fits them
to a dataset's size).
"""

from dataclasses import dataclass, field

from inference.config import LORA_GROUP_MODULES, LORA_GROUPS

ALL_MODULES = tuple(module for group in LORA_GROUPS for module in LORA_GROUP_MODULES[group])


@dataclass(frozen=True)
class LoraSettings:
    """PEFT's LoRA knobs. The defaults suit SmolLM2-135M: rank 16 on all seven linear layers, alpha 2 x rank,
    and no dropout (PEFT's default too): a 0.05 dropout cost a quarter of the training rate here (its random
    masks; bench/results_finetune.md)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_MODULES

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA rank {self.rank}, alpha {self.alpha} or dropout {self.dropout} is out of range")
        unknown = set(self.target_modules) - set(ALL_MODULES)
        if unknown or not self.target_modules:
            raise ValueError(f"LoRA target modules must be a non-empty subset of {ALL_MODULES}, not {unknown}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class TrainingSettings:
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 2e-4
    epochs: int = 2
    batch_size: int = 4  # examples (conversations, or preference pairs) per optimizer step
    max_length: int = 1024  # tokens per conversation, or per prompt + completion; longer ones are cut
    seed: int = 0
    validation_fraction: float = 0.1  # held out by conversation (by pair for DPO); none under 10 examples
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.1  # DPO only: strength of the pull towards the reference
    eval_every: int | None = None  # steps between validations; None: at the end of each epoch
    checkpoint_every: int = 20  # steps
    max_steps: int | None = None  # stop early (benchmarks, smoke runs)
    precision: str = "auto"  # "auto": bf16 on CUDA and on CPUs with AMX, else fp32; or "bf16", "fp32"
    device: str = "auto"  # "auto": CUDA when present, else the CPU

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0 and self.epochs >= 1 and self.batch_size >= 1 and self.max_length >= 8):
            raise ValueError("learning_rate, epochs, batch_size and max_length must be positive (max_length >= 8)")
        if not 0 <= self.validation_fraction < 1 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("validation_fraction and warmup_fraction must lie in [0, 1)")
        if self.precision not in ("auto", "bf16", "fp32") or self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"precision {self.precision!r} or device {self.device!r} is not one of the choices")
        if self.checkpoint_every < 1 or (self.eval_every is not None and self.eval_every < 1):
            raise ValueError("checkpoint_every and eval_every count steps: at least 1")


SFT_DEFAULTS = TrainingSettings()
# DPO moves a model that already answers: a smaller step and one epoch. Its LoRA keeps no dropout
# (the default), so that the policy starts exactly at the reference (loss log 2, zero rewards).
DPO_DEFAULTS = TrainingSettings(learning_rate=5e-5, epochs=1)
