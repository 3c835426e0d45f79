"""The learning loop's job-success hook: a succeeded loop job's adapter becomes a draft version.

The fine-tune job's success path (apps.finetune.services) calls `loop_draft_create` once the `Adapter` row
exists and the engine has it. For a job that "Improve this assistant" did not start, it does nothing. For a
loop job it makes a draft of the run's parent version with the new adapter (`assistant_draft_create`: the
parent's instructions, knowledge and sampling, the new adapter, `parent` set, not current) and records it
on the run. From then on:
- My arena draws the draft against its parent more often (apps.arena.sampler's DRAFT_PARENT_BOOST);
- the owner's dashboard lists it as awaiting review (apps.loop.selectors.loop_drafts_for_owner), until
  they publish it (apps.assistants.services.assistant_version_publish).

It lives apart from services.py because services.py queues fine-tune jobs (it imports apps.finetune.services)
and the fine-tune success path imports this: one module each way would be an import cycle.
"""

from django.db import transaction

from apps.assistants.models import AssistantVersion
from apps.assistants.services import assistant_draft_create
from apps.loop.models import LoopRun


@transaction.atomic
def loop_draft_create(*, job, adapter) -> AssistantVersion | None:
    """The draft for a succeeded loop job (idempotent: a second call returns the same draft); None for a job
    the loop did not start."""
    run = LoopRun.objects.select_for_update().select_related("parent").filter(job=job).first()
    if run is None:
        return None
    if run.draft_id is not None:
        return run.draft
    draft = assistant_draft_create(parent=run.parent, adapter=adapter, actor=run.created_by)
    run.draft = draft
    run.save(update_fields=["draft"])
    return draft
