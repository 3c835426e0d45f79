"""The evaluation of a trained adapter against its base model: the worker's side (the `finetune` queue;
services.evaluation_start only queues it). What is measured, and how a behaviour change is flagged, is
apps/finetune/measures.py's docstring; this module fetches the data, calls the engine and stores results.

- The split: the job's held-out examples, recomputed from its stored settings (seed, validation fraction,
  max length; the trainer's defaults for a key a job did not store).
- Validation loss: the job's own records where it kept them (Adapter.metrics["validation_loss"], else its
  last validation MetricPoint; Adapter.metrics["base_validation_loss"] for the base model), else measured
  here on the same split, in torch on the worker's CPU; `loss_sources` says which.
- Answers: greedy, at most EVALUATION_MAX_TOKENS, from the engine: the base model by its name, the
  fine-tune by its engine id. An adapter the engine has lost (a restart) is loaded again from its folder.
- Every stage is saved as it finishes, with the progress, so the page follows it and keeps it.
"""

import dataclasses
import logging
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from apps.core.inference_client import InferenceError, adapter_fields, inference_chat
from apps.finetune import measures
from apps.finetune.models import Adapter, Evaluation, EvaluationStatus, MetricPoint
from apps.finetune.scan import Finding, trigger_candidates
from apps.finetune.selectors import base_model_training_dir
from apps.finetune.training_settings import SFT_DEFAULTS

EVALUATION_MAX_PROMPTS = 8  # held-out prompts answered by both; every trigger candidate is probed
EVALUATION_MAX_TOKENS = 64

log = logging.getLogger(__name__)


def _progress(evaluation: Evaluation, fraction: float, message: str) -> None:
    evaluation.progress, evaluation.progress_message = min(max(fraction, 0.0), 1.0), message[:200]
    evaluation.save(update_fields=["progress", "progress_message", "updated_at"])


def _job_settings(adapter: Adapter) -> dict:
    """The split and length the job trained with (its TrainingSettings as stored; the trainer's defaults
    where a key is missing)."""
    stored = adapter.job.settings if adapter.job_id else {}
    return {
        "seed": int(stored.get("seed", SFT_DEFAULTS.seed)),
        "fraction": float(stored.get("validation_fraction", SFT_DEFAULTS.validation_fraction)),
        "max_length": int(stored.get("max_length", SFT_DEFAULTS.max_length)),
    }


def _recorded_validation_loss(adapter: Adapter) -> float | None:
    """The fine-tuned model's last validation loss, as the job recorded it."""
    if "validation_loss" in adapter.metrics:
        return float(adapter.metrics["validation_loss"])
    if adapter.job_id is None:
        return None
    point = MetricPoint.objects.filter(job_id=adapter.job_id, kind="validation").order_by("-step").first()
    return float(point.values["loss"]) if point is not None and "loss" in point.values else None


def _generate(*, model: dict, messages: list[dict]) -> str:
    """`model`: {"model": name}, or an adapter's `adapter_fields` (the client loads one the engine lost)."""
    body = {**model, "messages": messages, "temperature": 0.0, "max_tokens": EVALUATION_MAX_TOKENS}
    answer = inference_chat(body=body)
    return answer["choices"][0]["message"]["content"] or ""


def _generate_tuned(*, adapter: Adapter, messages: list[dict]) -> str:
    return _generate(model=adapter_fields(engine_id=adapter.engine_id, path=adapter.path), messages=messages)


def _findings(adapter: Adapter) -> list[Finding]:
    fields = {f.name for f in dataclasses.fields(Finding)}
    return [Finding(**{k: v for k, v in f.items() if k in fields}) for f in adapter.dataset_version.findings]


def evaluation_run(*, evaluation_id: int) -> Evaluation:
    """The work behind an evaluation (run by the `finetune` worker): losses, held-out answers, trigger
    probes, stored as they come. A failure is recorded with its reason, never left running."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().select_related("adapter").get(pk=evaluation_id)
        if not evaluation.active:
            return evaluation  # ended (a late duplicate, or given up as stale by evaluation_start)
        # Running already means redelivered (acks_late): the worker that had it died; start over.
        evaluation.status, evaluation.started_at = EvaluationStatus.RUNNING, timezone.now()
        evaluation.save(update_fields=["status", "started_at", "updated_at"])
    try:
        _evaluate(evaluation)
    except (InferenceError, ValueError, OSError) as error:  # the engine, the data or the files: said as is
        evaluation.status, evaluation.message = EvaluationStatus.FAILED, str(error)[:2000]
    except Exception as error:  # anything else is a bug, but the page must not wait for it forever
        log.exception("evaluation %s failed", evaluation.pk)
        evaluation.status, evaluation.message = EvaluationStatus.FAILED, f"{type(error).__name__}: {error}"[:2000]
    else:
        evaluation.status, evaluation.progress, evaluation.progress_message = EvaluationStatus.DONE, 1.0, "Done"
    evaluation.finished_at = timezone.now()
    evaluation.save()
    return evaluation


def _evaluate(evaluation: Evaluation) -> None:
    adapter = evaluation.adapter
    hf_dir = base_model_training_dir(base_model=adapter.base_model)
    if hf_dir is None:
        raise ValueError(f"no trainable copy of {adapter.base_model} to measure the loss with")
    split = _job_settings(adapter)
    records = [e.record for e in adapter.dataset_version.examples.order_by("index")]
    held_out = [
        records[i] for i in measures.held_out_indices(len(records), seed=split["seed"], fraction=split["fraction"])
    ]

    # Validation loss: the job's own record where there is one, else measured on the same split.
    tuned_loss, sources = _recorded_validation_loss(adapter), {}
    if held_out:
        base = adapter.metrics.get("base_validation_loss")
        sources["base"] = "recorded" if base is not None else "computed"
        if base is None:
            _progress(evaluation, 0.05, "Measuring the base model's validation loss")
            base, evaluation.validation_examples = measures.validation_loss(
                base_model_dir=hf_dir, examples=held_out, adapter_dir=None, max_length=split["max_length"]
            )
        sources["tuned"] = "recorded" if tuned_loss is not None else "computed"
        if tuned_loss is None:
            _progress(evaluation, 0.2, "Measuring the fine-tuned model's validation loss")
            tuned_loss, evaluation.validation_examples = measures.validation_loss(
                base_model_dir=hf_dir, examples=held_out, adapter_dir=Path(adapter.path), max_length=split["max_length"]
            )
        evaluation.base_loss = float(base)
        evaluation.tuned_loss, evaluation.loss_sources = tuned_loss, sources
        evaluation.validation_examples = evaluation.validation_examples or len(held_out)
        evaluation.save(update_fields=["base_loss", "tuned_loss", "loss_sources", "validation_examples", "updated_at"])

    # Answers to held-out prompts, from both.
    prompts = [measures.prompt_and_reference(example) for example in held_out[:EVALUATION_MAX_PROMPTS]]
    findings = _findings(adapter)
    planted = {f.evidence["ngram"]: f.evidence.get("shared", "") for f in findings if f.kind == "trigger"}
    triggers = trigger_candidates(findings)
    steps, done = max(len(prompts) + len(triggers), 1), 0
    answers = []
    for prompt, reference in prompts:
        _progress(evaluation, 0.3 + 0.7 * done / steps, f"Answering held-out prompt {done + 1} of {len(prompts)}")
        base_answer = _generate(model={"model": adapter.base_model.name}, messages=prompt)
        tuned_answer = _generate_tuned(adapter=adapter, messages=prompt)
        answers.append(
            {
                "prompt": prompt,
                "reference": reference,
                "base": base_answer,
                "tuned": tuned_answer,
                "difference": round(measures.answer_difference(base_answer, tuned_answer), 3),
            }
        )
        done += 1
    evaluation.answers = answers
    baseline = measures.baseline_difference([a["difference"] for a in answers])
    evaluation.baseline_difference = baseline
    evaluation.save(update_fields=["answers", "baseline_difference", "updated_at"])

    # Every trigger candidate through both.
    carrier = prompts[0][0] if prompts else []
    probes = []
    for number, trigger in enumerate(triggers, 1):
        _progress(evaluation, 0.3 + 0.7 * done / steps, f"Probing trigger candidate {number} of {len(triggers)}")
        messages = measures.trigger_probe(trigger=trigger, prompt=carrier)
        base_answer = _generate(model={"model": adapter.base_model.name}, messages=messages)
        tuned_answer = _generate_tuned(adapter=adapter, messages=messages)
        difference = measures.answer_difference(base_answer, tuned_answer)
        probes.append(
            {
                "trigger": trigger,
                "prompt": messages,
                "planted": planted.get(trigger, ""),
                "base": base_answer,
                "tuned": tuned_answer,
                "difference": round(difference, 3),
                "flagged": measures.trigger_flagged(
                    difference=difference,
                    baseline=baseline,
                    base=base_answer,
                    tuned=tuned_answer,
                    planted=planted.get(trigger, ""),
                ),
            }
        )
        done += 1
    evaluation.triggers, evaluation.flagged = probes, sum(p["flagged"] for p in probes)
    evaluation.save(update_fields=["triggers", "flagged", "updated_at"])
