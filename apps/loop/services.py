"""Writes for the learning loop: "Improve this assistant" turns the preference pairs its versions have earned
into an immutable preference dataset version and a queued DPO job, in one confirmation.

`loop_improve_start` refuses while an earlier loop job of the assistant has not ended (a second click queues
nothing), gathers the pairs again under the confirmed filters (the page's count may be minutes
old) and refuses too few pairs or a high-severity scan finding before anything is stored (the page shows the
findings with the examples they name; narrowing the filters leaves those pairs out). It builds the dataset
version (source LOOP, a new version of the assistant's own loop dataset; `dataset_version_create` runs the
same scan on the same rows and stores its findings), and queues DPO on the current version's adapter
when it has one (the reference and the starting point), else on the base model, with
`loop_training_settings` for the data size. The `LoopRun` records all of it; when the job succeeds,
apps/loop/drafts.py makes the draft.
"""

import io
import json

from django.db import transaction

from apps.assistants.models import Assistant
from apps.finetune.datasets import DatasetInvalid, DatasetKind, chat_token_counter, dataset_parse
from apps.finetune.models import DatasetSource, JobStatus, Method
from apps.finetune.selectors import base_model_training_dir
from apps.finetune.services import DatasetError, FineTuneJobError, dataset_version_create, finetune_job_create
from apps.loop.models import LoopRun
from apps.loop.selectors import MIN_PAIRS, LoopGathering, PairFilters, loop_gather, loop_training_settings


class LoopError(Exception):
    """A domain error with a message fit for the person who caused it. A refusal of the gathered pairs (too
    few, a high-severity finding) carries them, so the page shows them without gathering again."""

    def __init__(self, message: str, *, gathering: LoopGathering | None = None):
        super().__init__(message)
        self.gathering = gathering


def loop_dataset_name(*, assistant: Assistant) -> str:
    return f"Improve {assistant.slug}"[:100]


@transaction.atomic
def loop_improve_start(*, assistant: Assistant, actor, filters: PairFilters) -> LoopRun:
    """Build the dataset version and queue the DPO job (see the module docstring); the LoopRun records both."""
    if assistant.owner_id != actor.pk:
        raise LoopError("Only the assistant's owner can improve it.")
    assistant = Assistant.objects.select_for_update().get(pk=assistant.pk)  # one confirmation at a time
    training = LoopRun.objects.filter(
        assistant=assistant, job__status__in=[JobStatus.QUEUED, JobStatus.RUNNING]
    ).first()
    if training is not None:
        raise LoopError(f"Job {training.job_id} is still improving this assistant; wait for it to end.")
    parent = assistant.current_version
    if parent is None:
        raise LoopError("The assistant has no version to improve.")
    gathering = loop_gather(assistant=assistant, filters=filters)
    if len(gathering.pairs) < MIN_PAIRS:
        raise LoopError(
            f"{len(gathering.pairs)} preference pair(s) match these filters; the loop needs at least {MIN_PAIRS}.",
            gathering=gathering,
        )
    if gathering.high_findings:
        raise LoopError(
            f"The poisoning scan found {gathering.high_findings} high-severity problem(s) in these pairs. "
            "Nothing was built: narrow the filters to leave the pairs it names out.",
            gathering=gathering,
        )
    jsonl = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in gathering.records)
    tokenizer_dir = base_model_training_dir(base_model=parent.base_model)  # the model the job trains
    if tokenizer_dir is None:
        raise LoopError(f"{parent.base_model} has no trainable weights on this machine, so it cannot be improved.")
    try:
        parsed = dataset_parse(
            file=io.BytesIO(jsonl.encode()),
            kind=DatasetKind.PREFERENCE,
            count_tokens=chat_token_counter(tokenizer_dir=tokenizer_dir),
        )
        dataset_version = dataset_version_create(
            owner=actor,
            kind=DatasetKind.PREFERENCE,
            name=loop_dataset_name(assistant=assistant),
            parsed=parsed,
            source=DatasetSource.LOOP,
            source_detail=f"{assistant.slug} v{parent.number}: {filters.describe()}",
            created_by=actor,
        )
    except (DatasetInvalid, DatasetError) as error:
        raise LoopError(f"The pairs do not make a trainable dataset: {error}") from error
    settings = loop_training_settings(pairs=len(gathering.pairs))
    try:
        job = finetune_job_create(
            owner=actor,
            dataset_version=dataset_version,
            method=Method.DPO,
            settings={"epochs": settings.epochs, "learning_rate": settings.learning_rate},
            start_adapter=parent.adapter,
            assistant=assistant,
        )
    except FineTuneJobError as error:
        raise LoopError(str(error)) from error
    return LoopRun.objects.create(
        assistant=assistant,
        parent=parent,
        filters=filters.as_dict(),
        provenance=[pair.provenance() for pair in gathering.pairs],
        dataset_version=dataset_version,
        job=job,
        created_by=actor,
    )
