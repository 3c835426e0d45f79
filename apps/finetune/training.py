"""LoRA fine-tuning of the base model: SFT on conversations, DPO on preference pairs. Plain Python and
PyTorch (no Django, no Celery), on the CPU or on CUDA when present; a job wraps it.

    result = train_sft(base_model_dir=..., examples=[{"messages": [...]}, ...], out_dir=..., ...)
    result = train_dpo(base_model_dir=..., examples=[{"prompt": [...], "chosen": [...], "rejected": [...]}],
                       out_dir=..., reference_adapter_dir=None, ...)

A job page gets every metrics point through `on_metrics(point)`, can stop the run between steps with
`should_cancel()`, and a retried job resumes from the last checkpoint in `checkpoint_dir` exactly where the
interrupted one was (same LoRA weights, optimizer moments, data order, dropout draws). Failures raise
TrainingError with the reason for the page: TrainingFailed for a NaN loss or running out of memory,
TrainingCancelled for a cancel, plain TrainingError for bad examples, a base model the trainer cannot use
or a checkpoint of another job.

Metrics points are JSON-ready dicts (TrainingResult.history keeps them all):
- {"kind": "status", "message"}: the data is ready (how many examples, how many left out), a resume, the
  reference pass starting.
- {"kind": "train", "step", "total_steps", "epoch" (fractional), "loss", "learning_rate", "grad_norm",
  "tokens" (real tokens in the step), "tokens_per_second" (this run so far), "elapsed_s" (the job's, across
  resumes), "eta_s"}; DPO adds "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy"
  (means over the step's pairs) and "pairs_per_second" (this step).
- {"kind": "validation", "step", "epoch", "loss"} (DPO: and the reward statistics over the held-out
  pairs): after each epoch (or every eval_every steps) and at the end.

Checkpoints: checkpoint_dir/checkpoint/, every checkpoint_every steps, replaced whole, deleted when the
run completes. lora.safetensors (the LoRA weights), optimizer.safetensors (AdamW's step, exp_avg and
exp_avg_sq per parameter), rng.safetensors (the dropout generator), reference.safetensors (DPO: the
reference log-probs) and state.json ({"fingerprint", "step", "tokens", "elapsed_s"}). No pickles.

Where the speed comes from (bench/results_finetune.md measures each against TRL on this machine):
- the decoder (decoder.py): frozen weights stored once in bf16 where the CPU has AMX (else fp32),
  fused q|k|v and gate|up GEMMs, one LoRA A GEMM and one block-diagonal B GEMM per fused group;
- packing (packing.py): a step's examples form one stream without padding; only attention pads;
- the vocabulary projection and the loss only at positions that predict a trained token;
- DPO: the reference model's log-probs are computed once, before training, with the policy's own
  decoder (LoRA off, or the starting adapter's weights), and each pair's prompt once for both
  completions (a two-branch tree).
- no gradient checkpointing (memory is not short here; it would recompute the forward pass).

Determinism: the split, the order of examples in each epoch and the LoRA init are functions of the seed;
dropout draws from the decoder's own generator. On the CPU the same seed and thread count give the same
run bit for bit.

The settings (TrainingSettings, LoraSettings, each method's defaults) live in training_settings.py, without torch,
so the web app can fill a form and check a job's settings without loading it.
"""

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from apps.finetune.decoder import BaseModelError, LoraDecoder, read_adapter_settings
from apps.finetune.packing import Batch, ChatEncoder, ExampleError, Segment, collate
from apps.finetune.training_settings import DPO_DEFAULTS, SFT_DEFAULTS, TrainingSettings
from inference.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from inference.tokenizer import ChatTokenizer

MetricsCallback = Callable[[dict], None]
CancelCheck = Callable[[], bool]

CHECKPOINT = "checkpoint"  # checkpoint_dir/checkpoint/: the latest, replaced whole


class TrainingError(Exception):
    """The run cannot go on; str(error) is the reason to show on the job page."""


class TrainingFailed(TrainingError):
    """The run broke while training: a NaN loss, or out of memory."""


class TrainingCancelled(TrainingError):
    """should_cancel() said so between two steps."""


@dataclass
class TrainingResult:
    adapter_dir: Path
    steps: int
    epochs_completed: float
    train_loss: float  # mean over this run's steps of the last (maybe partial) epoch
    validation: dict | None  # the last validation point
    history: list[dict]  # every metrics point of this run (after a resume: from the resume on)
    timings: dict[str, float]  # seconds of this run spent in data, forward, backward, optimizer, validation
    tokens_per_second: float
    device: str
    precision: str


# -- resolving the machine ---------------------------------------------------------------------------


def _device(settings: TrainingSettings) -> torch.device:
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("CUDA was asked for, but no CUDA device is available")
    use_cuda = settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def _cpu_has_fast_bf16() -> bool:
    # AMX tiles run bf16 GEMMs several times faster than fp32 (measured: bench/results_finetune.md); without
    # them (AVX2 machines) bf16 is emulated and slower, so fp32 stays.
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def compute_dtype(settings: TrainingSettings, device: torch.device) -> torch.dtype:
    """The dtype of the frozen weights and activations (LoRA weights, norms and the loss stay fp32)."""
    if settings.precision == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_fast_bf16()
        return torch.bfloat16 if fast else torch.float32
    return torch.bfloat16 if settings.precision == "bf16" else torch.float32


# -- data ---------------------------------------------------------------------------------------------


def split_examples(count: int, *, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) example indices: a seeded shuffle, whole conversations (or pairs) per side."""
    order = np.random.default_rng(seed).permutation(count).tolist()
    held_out = 0 if count < 10 else max(1, round(count * fraction)) if fraction > 0 else 0
    return sorted(order[held_out:]), sorted(order[:held_out])


def epoch_order(count: int, *, seed: int, epoch: int) -> list[int]:
    return np.random.default_rng([seed, epoch]).permutation(count).tolist()


def learning_rate_at(step: int, *, total: int, settings: TrainingSettings) -> float:
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to zero; step counts from 0."""
    warmup = math.ceil(total * settings.warmup_fraction)
    if step < warmup:
        return settings.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _fingerprint(*, method: str, settings: TrainingSettings, base_model_dir: Path, examples, reference) -> str:
    """What a checkpoint must match to be resumed: the same job (settings, data, base model, reference)."""
    identity = {
        "method": method,
        "settings": asdict(replace(settings, max_steps=None)),
        "base_model": str(base_model_dir.resolve()),
        "base_config": (base_model_dir / "config.json").read_text(),
        "reference": str(reference.resolve()) if reference else None,
        "examples": hashlib.sha256(json.dumps(list(examples), sort_keys=True).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


# -- losses -------------------------------------------------------------------------------------------


def token_logprobs(model: LoraDecoder, batch: Batch) -> torch.Tensor:
    """log p(target) at every predicted position [M], fp32: the head runs on those positions only."""
    hidden = model(batch)
    logits = model.logits(hidden[batch.sources])
    return -F.cross_entropy(logits, batch.targets, reduction="none")


def sequence_logprobs(token_logps: torch.Tensor, batch: Batch, sequences: int) -> torch.Tensor:
    """Summed log-probs per sequence, [examples, sequences per example] (DPO: chosen, rejected)."""
    sums = token_logps.new_zeros(batch.examples * sequences).index_add(0, batch.sequences, token_logps)
    return sums.view(batch.examples, sequences)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, *, beta: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sigmoid DPO loss (Rafailov et al. 2023) from summed log-probs [pairs, 2] (chosen, rejected):
    -log σ(β [(π_c - ref_c) - (π_r - ref_r)]), averaged over pairs; and the implicit rewards β (π - ref)."""
    rewards = beta * (policy - reference)
    margins = rewards[:, 0] - rewards[:, 1]
    stats = {
        "rewards_chosen": rewards[:, 0].detach(),
        "rewards_rejected": rewards[:, 1].detach(),
        "reward_margin": margins.detach(),
        "reward_accuracy": (margins > 0).float().detach(),
    }
    return -F.logsigmoid(margins).mean(), stats


# -- checkpoints --------------------------------------------------------------------------------------


def _save_checkpoint(
    directory: Path, *, model: LoraDecoder, optimizer: torch.optim.Optimizer, state: dict, reference
) -> None:
    """Everything a resumed run needs, as safetensors and JSON (no pickles), written beside the old one
    and renamed over it, so a crash mid-write leaves the previous checkpoint whole."""
    final, partial = directory / CHECKPOINT, directory / f"{CHECKPOINT}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = {id(p): name for name, p in model.named_parameters()}
    save_file({n: p.detach().cpu().contiguous() for n, p in model.named_parameters()}, partial / "lora.safetensors")
    moments = {}
    for param, param_state in optimizer.state.items():
        for key, value in param_state.items():
            moments[f"{names[id(param)]}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(moments, partial / "optimizer.safetensors")
    save_file({"dropout": model.dropout_generator.get_state()}, partial / "rng.safetensors")
    if reference is not None:
        save_file({n: t.cpu().contiguous() for n, t in reference.items()}, partial / "reference.safetensors")
    (partial / "state.json").write_text(json.dumps(state))
    old = directory / f"{CHECKPOINT}.old"
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_path(directory: Path) -> Path | None:
    """The checkpoint a run in `directory` resumes from, if there is one."""
    for path in (directory / CHECKPOINT, directory / f"{CHECKPOINT}.old"):  # .old: between the two renames
        if (path / "state.json").is_file():
            return path
    return None


def _load_checkpoint(
    directory: Path, *, model: LoraDecoder, optimizer: torch.optim.Optimizer, fingerprint: str
) -> tuple[dict, dict | None] | None:
    path = checkpoint_path(directory)
    if path is None:
        return None
    state = json.loads((path / "state.json").read_text())
    if state.get("fingerprint") != fingerprint:
        raise TrainingError(
            f"the checkpoint in {directory} belongs to another run (its settings, data or base model differ); "
            "delete it to start over"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(path / "lora.safetensors").items():
            params[name].copy_(tensor)
    moments = load_file(path / "optimizer.safetensors")
    for name, param in params.items():
        optimizer.state[param] = {
            key: moments[f"{name}.{key}"].to(param.device) for key in ("step", "exp_avg", "exp_avg_sq")
        }
    model.dropout_generator.set_state(load_file(path / "rng.safetensors")["dropout"])
    reference = path / "reference.safetensors"
    return state, (load_file(reference) if reference.is_file() else None)


def _save_adapter(model: LoraDecoder, out_dir: Path, *, base_model: str) -> None:
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(model.adapter_tensors(), partial / ADAPTER_WEIGHTS)
    (partial / ADAPTER_CONFIG).write_text(json.dumps(model.adapter_config(base_model=base_model), indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)


# -- failures -----------------------------------------------------------------------------------------


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _check_finite(value: torch.Tensor, *, what: str, step: int) -> None:
    if not torch.isfinite(value).all():
        raise TrainingFailed(
            f"the {what} became {value.item() if value.numel() == 1 else 'NaN/inf'} at step {step}; the run diverged "
            "(lower the learning rate) or the base model or data hold non-finite values"
        )


# -- the run ------------------------------------------------------------------------------------------


class _Clock:
    """Wall time per phase; on CUDA each phase waits for the device so its time is its own."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _point(kind: str, **values) -> dict:
    """A metrics point: {"kind": "train" | "validation" | "status", ...}, floats rounded for storage."""
    return {"kind": kind, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}}


def _encode(
    encoder: ChatEncoder, examples: Sequence[dict], indices: list[int], *, method: str, max_length: int
) -> list[tuple[Segment, ...]]:
    """Tokenized examples; SFT conversations with no assistant token within max_length are left out."""
    encoded = []
    for index in indices:
        where = f"example {index}"
        try:
            if method == "sft":
                segment = encoder.sft_segment(examples[index], max_length=max_length, where=where)
                parts = (segment,) if segment is not None else ()
            else:
                parts = encoder.dpo_segments(examples[index], max_length=max_length, where=where)
        except ExampleError as error:
            raise TrainingError(str(error)) from error
        if parts:
            encoded.append(parts)
    return encoded


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class _Run:
    """One training run; the public functions below build it and call run()."""

    def __init__(
        self,
        *,
        method: str,
        base_model_dir: Path,
        examples: Sequence[dict],
        out_dir: Path,
        settings: TrainingSettings,
        reference_adapter_dir: Path | None,
        checkpoint_dir: Path | None,
        on_metrics: MetricsCallback | None,
        should_cancel: CancelCheck | None,
    ) -> None:
        self.method, self.settings = method, settings
        self.base_model_dir, self.examples, self.out_dir = base_model_dir, examples, out_dir
        self.reference_adapter_dir, self.checkpoint_dir = reference_adapter_dir, checkpoint_dir
        self.on_metrics, self.should_cancel = on_metrics, should_cancel
        self.sequences = 2 if method == "dpo" else 1  # sequences per example: DPO's chosen and rejected
        self.history: list[dict] = []
        self.step = 0
        self.device = _device(settings)
        self.dtype = compute_dtype(settings, self.device)
        self.clock = _Clock(self.device)

    def report(self, point: dict) -> None:
        self.history.append(point)
        if self.on_metrics is not None:
            self.on_metrics(point)

    def check_cancel(self, where: str) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise TrainingCancelled(f"cancelled {where}")

    def run(self) -> TrainingResult:
        try:
            return self._run()
        except TrainingError:
            raise
        except Exception as error:
            if is_out_of_memory(error):
                raise TrainingFailed(
                    f"out of memory at step {self.step + 1} (batch size {self.settings.batch_size}, max length "
                    f"{self.settings.max_length}); lower either and retry"
                ) from error
            raise

    # -- setup --

    def _load(self) -> None:
        settings, lora = self.settings, self.settings.lora
        try:
            if self.reference_adapter_dir is not None:
                lora = read_adapter_settings(self.reference_adapter_dir, dropout=lora.dropout)
            self.model = LoraDecoder(
                hf_dir=self.base_model_dir, lora=lora, dtype=self.dtype, device=self.device, seed=settings.seed
            )
            if self.reference_adapter_dir is not None:
                self.model.load_adapter_weights(self.reference_adapter_dir)
            self.encoder = ChatEncoder(ChatTokenizer(self.base_model_dir))
        except (BaseModelError, OSError, KeyError) as error:
            raise TrainingError(f"cannot train on {self.base_model_dir}: {error}") from error
        pad_id = self.encoder.tokenizer.hf.pad_token_id
        self.pad_id = pad_id if pad_id is not None else 0
        # fused AdamW: one kernel over all the LoRA tensors instead of a loop of small ops
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, fused=True
        )

    def _prepare_data(self) -> None:
        settings = self.settings
        train_idx, val_idx = split_examples(
            len(self.examples), fraction=settings.validation_fraction, seed=settings.seed
        )
        encode = {"method": self.method, "max_length": settings.max_length}
        self.train = _encode(self.encoder, self.examples, train_idx, **encode)
        self.val = _encode(self.encoder, self.examples, val_idx, **encode)
        if not self.train:
            raise TrainingError(f"no training example has an assistant token within {settings.max_length} tokens")
        dropped = len(train_idx) + len(val_idx) - len(self.train) - len(self.val)
        message = f"{len(self.train)} training and {len(self.val)} validation examples"
        if dropped:
            message += f"; {dropped} had no assistant token within {settings.max_length} tokens and were left out"
        self.report(_point("status", message=message))
        self.steps_per_epoch = math.ceil(len(self.train) / settings.batch_size)
        self.total_steps = self.steps_per_epoch * settings.epochs
        if settings.max_steps is not None:
            self.total_steps = min(self.total_steps, settings.max_steps)

    def _batch(self, encoded: list, indices: list[int]) -> Batch:
        return collate([encoded[i] for i in indices], pad_id=self.pad_id).to(self.device)

    def _reference_logprobs(self, encoded: list) -> torch.Tensor:
        """The reference model's summed log-probs [examples, 2]: the decoder with its starting LoRA, in
        eval mode, once per example."""
        self.model.eval()
        out = []
        with torch.no_grad():
            for indices in _chunks(list(range(len(encoded))), self.settings.batch_size):
                self.check_cancel("while computing the reference log-probs")
                batch = self._batch(encoded, indices)
                out.append(sequence_logprobs(token_logprobs(self.model, batch), batch, self.sequences))
        self.model.train()
        return torch.cat(out)

    # -- steps --

    def _loss(self, batch: Batch, reference: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """SFT: mean NLL of the assistant tokens. DPO: the loss of dpo_loss, and its reward statistics."""
        logps = token_logprobs(self.model, batch)
        if self.method == "sft":
            return -logps.mean(), {}
        return dpo_loss(sequence_logprobs(logps, batch, self.sequences), reference, beta=self.settings.beta)

    def _train_step(self, indices: list[int]) -> tuple[Batch, float, dict[str, float], float, float]:
        """One optimizer step on the training examples at `indices`: the batch, its loss, the DPO reward
        statistics (batch means), the gradient norm before clipping and the learning rate used."""
        with self.clock.phase("data"):
            batch = self._batch(self.train, indices)
            reference = self.reference["train"][indices] if self.method == "dpo" else None
        learning_rate = learning_rate_at(self.step, total=self.total_steps, settings=self.settings)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        with self.clock.phase("forward"):
            loss, stats = self._loss(batch, reference)
        _check_finite(loss.detach(), what="loss", step=self.step + 1)
        with self.clock.phase("backward"):
            loss.backward()
        with self.clock.phase("optimizer"):
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
            _check_finite(grad_norm, what="gradient norm", step=self.step + 1)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        means = {name: values.mean().item() for name, values in stats.items()}
        return batch, loss.item(), means, grad_norm.item(), learning_rate

    def _validate(self) -> dict | None:
        if not self.val:
            return None
        self.model.eval()
        total, count, sums = 0.0, 0, {}
        with torch.no_grad(), self.clock.phase("validation"):
            for indices in _chunks(list(range(len(self.val))), self.settings.batch_size):
                self.check_cancel(f"at step {self.step}")
                batch = self._batch(self.val, indices)
                reference = self.reference["validation"][indices] if self.method == "dpo" else None
                loss, stats = self._loss(batch, reference)
                weight = len(batch.targets) if self.method == "sft" else len(indices)
                total, count = total + loss.item() * weight, count + weight
                for name, values in stats.items():
                    sums[name] = sums.get(name, 0.0) + values.sum().item()
        self.model.train()
        point = _point(
            "validation",
            step=self.step,
            epoch=self.step / self.steps_per_epoch,
            loss=total / count,
            **{name: value / len(self.val) for name, value in sums.items()},
        )
        self.report(point)
        return point

    def _run(self) -> TrainingResult:
        settings = self.settings
        self._load()
        self._prepare_data()
        fingerprint = _fingerprint(
            method=self.method,
            settings=settings,
            base_model_dir=self.base_model_dir,
            examples=self.examples,
            reference=self.reference_adapter_dir,
        )
        tokens_before, elapsed_before = 0, 0.0
        self.reference: dict[str, torch.Tensor] | None = None
        resumed = None
        if self.checkpoint_dir is not None:
            resumed = _load_checkpoint(
                self.checkpoint_dir, model=self.model, optimizer=self.optimizer, fingerprint=fingerprint
            )
        if resumed:
            state, reference = resumed
            if reference is not None:  # read to the CPU; the policy's log-probs live on the device
                self.reference = {name: values.to(self.device) for name, values in reference.items()}
            self.step, tokens_before, elapsed_before = state["step"], state["tokens"], state["elapsed_s"]
            self.report(_point("status", message=f"resumed from the checkpoint at step {self.step}"))
        if self.method == "dpo" and self.reference is None:
            self.report(_point("status", message="computing the reference model's log-probs"))
            with self.clock.phase("reference"):
                self.reference = {"train": self._reference_logprobs(self.train)}
                if self.val:
                    self.reference["validation"] = self._reference_logprobs(self.val)

        self.model.train()
        start = time.perf_counter()
        losses: list[float] = []
        last_validation = None
        tokens_run, run_steps = 0, 0
        while self.step < self.total_steps:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            order = epoch_order(len(self.train), seed=settings.seed, epoch=epoch)
            indices = _chunks(order, settings.batch_size)[in_epoch]
            self.check_cancel(f"at step {self.step}")
            step_start = time.perf_counter()
            batch, loss, stats, grad_norm, learning_rate = self._train_step(indices)
            self.step += 1
            run_steps += 1
            tokens_run += batch.tokens
            losses.append(loss)
            now = time.perf_counter()
            extra = dict(stats)
            if self.method == "dpo":
                extra["pairs_per_second"] = len(indices) / (now - step_start)
            self.report(
                _point(
                    "train",
                    step=self.step,
                    total_steps=self.total_steps,
                    epoch=self.step / self.steps_per_epoch,
                    loss=losses[-1],
                    learning_rate=learning_rate,
                    grad_norm=grad_norm,
                    tokens=batch.tokens,
                    tokens_per_second=tokens_run / (now - start),
                    elapsed_s=elapsed_before + now - start,
                    eta_s=(now - start) / run_steps * (self.total_steps - self.step),
                    **extra,
                )
            )
            if self.step % (settings.eval_every or self.steps_per_epoch) == 0:
                last_validation = self._validate()
            due = self.step % settings.checkpoint_every == 0 and self.step < self.total_steps
            if self.checkpoint_dir is not None and due:
                _save_checkpoint(
                    self.checkpoint_dir,
                    model=self.model,
                    optimizer=self.optimizer,
                    reference=self.reference,
                    state={
                        "fingerprint": fingerprint,
                        "step": self.step,
                        "tokens": tokens_before + tokens_run,
                        "elapsed_s": elapsed_before + time.perf_counter() - start,
                    },
                )
        if last_validation is None or last_validation["step"] != self.step:
            last_validation = self._validate()
        # The registry's identity of the base model: var/models/<name>/<content hash>/hf
        base_model = f"{self.base_model_dir.parent.parent.name}/{self.base_model_dir.parent.name}"
        _save_adapter(self.model, self.out_dir, base_model=base_model)
        if self.checkpoint_dir is not None:
            shutil.rmtree(self.checkpoint_dir / CHECKPOINT, ignore_errors=True)
        last_epoch = losses[-(self.step % self.steps_per_epoch or self.steps_per_epoch) :]
        seconds = time.perf_counter() - start
        return TrainingResult(
            adapter_dir=self.out_dir,
            steps=self.step,
            epochs_completed=self.step / self.steps_per_epoch,
            train_loss=float(np.mean(last_epoch)) if last_epoch else float("nan"),
            validation=last_validation,
            history=self.history,
            timings=dict(self.clock.seconds),
            tokens_per_second=tokens_run / seconds if seconds else 0.0,
            device=self.device.type,
            precision="bf16" if self.dtype == torch.bfloat16 else "fp32",
        )


def train_sft(
    *,
    base_model_dir: Path,
    examples: Sequence[dict],
    out_dir: Path,
    settings: TrainingSettings = SFT_DEFAULTS,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> TrainingResult:
    """Train a LoRA adapter on conversations ({"messages": [{"role", "content"}, ...]}, OpenAI chat format),
    the loss on assistant tokens only; write it to out_dir (adapter_config.json + adapter_model.safetensors)."""
    return _Run(
        method="sft",
        base_model_dir=base_model_dir,
        examples=examples,
        out_dir=out_dir,
        settings=settings,
        reference_adapter_dir=None,
        checkpoint_dir=checkpoint_dir,
        on_metrics=on_metrics,
        should_cancel=should_cancel,
    ).run()


def train_dpo(
    *,
    base_model_dir: Path,
    examples: Sequence[dict],
    out_dir: Path,
    settings: TrainingSettings = DPO_DEFAULTS,
    reference_adapter_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> TrainingResult:
    """Train a LoRA adapter with DPO on preference pairs ({"prompt": [messages], "chosen": [assistant
    messages], "rejected": [...]}, TRL's conversational format). The reference is the base model, or the
    SFT adapter in reference_adapter_dir; the policy starts as the reference (from that adapter's weights,
    with its rank, alpha and target modules, and settings.lora.dropout), so the result replaces it."""
    return _Run(
        method="dpo",
        base_model_dir=base_model_dir,
        examples=examples,
        out_dir=out_dir,
        settings=settings,
        reference_adapter_dir=reference_adapter_dir,
        checkpoint_dir=checkpoint_dir,
        on_metrics=on_metrics,
        should_cancel=should_cancel,
    ).run()
