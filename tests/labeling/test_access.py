"""Who reaches what, checked on the server: members never reach the panel, labelers never reach the admin pages or
another labeler's rankings. The ranking screen over HTTP. Data sharing gates chat sampling; generation cancels."""

import re

import pytest
from django.urls import reverse

from apps.chat.models import Conversation, Message
from apps.labeling.models import Ranking, TaskSet
from apps.labeling.services import (
    PromptInput,
    candidates_generate,
    prompts_from_chats,
    task_claim_next,
    task_set_cancel,
    task_set_create,
    task_set_resume,
)
from tests.conftest import free_port
from tests.factories import make_user, signed_in

pytestmark = pytest.mark.django_db


def test_a_member_cannot_reach_the_panel(make_set, labelers):
    task_set = make_set(["Q"])
    claim = task_claim_next(task_set=task_set, labeler=labelers[0])
    member = signed_in(make_user("mem"))
    for url in (
        reverse("labeling:home"),
        reverse("labeling:mine"),
        reverse("labeling:task", args=[claim.task_id]),
        reverse("labeling:set_admin", args=[task_set.pk]),
    ):
        assert member.get(url).status_code == 403, url
    assert member.post(reverse("labeling:next", args=[task_set.pk])).status_code == 403
    page = member.get(reverse("dashboard")).content.decode()
    assert reverse("labeling:home") not in page


def test_a_labeler_cannot_reach_the_admin_pages(make_set, labelers):
    task_set = make_set(["Q"])
    labeler = signed_in(labelers[0])
    task = task_set.tasks.get()
    for url in (
        reverse("labeling:set_new"),
        reverse("labeling:set_admin", args=[task_set.pk]),
        reverse("labeling:set_progress", args=[task_set.pk]),
        reverse("labeling:export", args=[task_set.pk]) + "?format=trl",
    ):
        assert labeler.get(url).status_code == 403, url
    for url in (
        reverse("labeling:set_cancel", args=[task_set.pk]),
        reverse("labeling:guideline_publish", args=[task_set.pk]),
        reverse("labeling:exclusion", args=[task_set.pk]),
        reverse("labeling:gold", args=[task_set.pk, task.pk]),
    ):
        assert labeler.post(url, {"labeler": labelers[0].pk, "text": "x", "gold_order": "1,2,3"}).status_code == 403
    assert labeler.get(reverse("labeling:home")).status_code == 200


def test_a_labeler_ranks_over_http_and_cannot_see_another_labelers_ranking(make_set, labelers):
    ann, ben, _ = labelers
    task_set = make_set(["What is <b>bold</b>?"], k=3)
    as_ann, as_ben = signed_in(ann), signed_in(ben)
    response = as_ann.post(reverse("labeling:next", args=[task_set.pk]))
    task_url = response.url
    page = as_ann.get(task_url)
    assert page.status_code == 200
    shown = [index for _, index, _ in page.context["candidates"]]
    assert shown == page.context["claim"].presented_order
    assert "<b>bold</b>" not in page.content.decode()  # the prompt went through the untrusted renderer
    # the untouched order is refused once, with a warning, then accepted when confirmed
    refused = as_ann.post(task_url, {"action": "rank", "order": [str(i) for i in shown]})
    assert refused.status_code == 200 and refused.context["warn_presented"]
    order = list(reversed(shown))
    saved = as_ann.post(task_url, {"action": "rank", "order": [str(i) for i in order]})
    assert saved.status_code == 302
    ranking = Ranking.objects.get(labeler=ann)
    assert ranking.order == order and ranking.presented_order == shown and ranking.guideline.version == 1
    # ben, not holding a claim on it, cannot open the task ann ranked, nor find her ranking anywhere
    assert as_ben.get(task_url).status_code == 404
    mine = as_ben.get(reverse("labeling:mine"))
    assert mine.status_code == 200 and list(mine.context["rankings"]) == []
    assert [r.pk for r in as_ann.get(reverse("labeling:mine")).context["rankings"]] == [ranking.pk]
    # a not-rankable submission needs its reason
    as_ben.post(reverse("labeling:next", args=[task_set.pk]))
    as_ben.post(task_url, {"action": "not_rankable", "reason": "All three are empty."})
    assert Ranking.objects.get(labeler=ben).not_rankable_reason == "All three are empty."


def test_chats_are_sampled_only_from_people_who_share(admin, version):
    sharer, private = make_user("sharer"), make_user("private")
    signed_in(sharer).post(reverse("account_settings"), {"data_sharing": "on"})
    sharer.refresh_from_db()
    assert sharer.data_sharing and not private.data_sharing
    for owner, text in ((sharer, "Shared question"), (private, "Private question")):
        conversation = Conversation.objects.create(owner=owner, assistant=version.assistant)
        Message.objects.create(conversation=conversation, role=Message.Role.USER, content=text)
    prompts = prompts_from_chats(count=10)
    assert [(p.text, p.author_id, p.source) for p in prompts] == [("Shared question", sharer.pk, "chat")]


def test_a_cancelled_generation_stops_before_the_next_prompt(admin, version):
    task_set = task_set_create(
        name="Cancelled",
        created_by=admin,
        prompts=[PromptInput("Q", "typed", None)],
        versions=[version],
        candidates_per_task=2,
        guideline_text="Rank.",
    )
    task_set_cancel(task_set=task_set)
    assert candidates_generate(task_set_id=task_set.pk) == TaskSet.Status.CANCELLED
    task_set.refresh_from_db()
    assert task_set.status == TaskSet.Status.CANCELLED and task_set.progress_done == 0
    assert task_set_resume(task_set=task_set) and not task_set_resume(task_set=task_set)  # once
    task_set.refresh_from_db()
    assert task_set.status == TaskSet.Status.GENERATING and not task_set.cancel_requested


def test_the_admin_creates_a_task_set_from_typed_and_uploaded_prompts(admin, version):
    from django.core.files.uploadedfile import SimpleUploadedFile

    as_admin = signed_in(admin)
    assert as_admin.get(reverse("labeling:set_new")).status_code == 200
    upload = b'{"prompt": "Uploaded one"}\n{"prompt": [{"role": "user", "content": "Uploaded two"}]}\n'
    response = as_admin.post(
        reverse("labeling:set_new"),
        {
            "name": "Mixed",
            "prompts_text": "Typed one\n\nTyped two\n",
            "prompts_file": SimpleUploadedFile("prompts.jsonl", upload),
            "sample_chats": "0",
            "versions": [version.pk],
            "candidates_per_task": "3",
            "rankings_per_task": "2",
            "temperature": "0.9",
            "top_p": "",
            "guidelines": "Rank by **helpfulness**.",
        },
    )
    task_set = TaskSet.objects.get(name="Mixed")
    assert response.status_code == 302 and response.url == reverse("labeling:set_admin", args=[task_set.pk])
    tasks = list(task_set.tasks.order_by("created_at", "id").values_list("prompt", "source", "author_id"))
    assert sorted(tasks) == sorted(
        [
            ("Typed one", "typed", admin.pk),
            ("Typed two", "typed", admin.pk),
            ("Uploaded one", "uploaded", None),
            ("Uploaded two", "uploaded", None),
        ]
    )
    assert task_set.sampling == {"temperature": 0.9} and task_set.guidelines.get().version == 1
    assert (task_set.candidates_per_task, task_set.rankings_per_task) == (3, 2)


def test_labeling_pages_are_csp_clean(make_set, labelers, admin):
    """No inline script (only src= scripts and JSON data), no style attribute, no inline handler, on every page."""
    task_set = make_set(["Q"])
    claim = task_claim_next(task_set=task_set, labeler=labelers[0])
    pages = [
        signed_in(labelers[0]).get(reverse("labeling:task", args=[claim.task_id])),
        signed_in(admin).get(reverse("labeling:set_admin", args=[task_set.pk])),
        signed_in(admin).get(reverse("labeling:set_progress", args=[task_set.pk])),
        signed_in(admin).get(reverse("labeling:set_new")),
        signed_in(admin).get(reverse("labeling:home")),
    ]
    for response in pages:
        assert response.status_code == 200
        html = response.content.decode()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, tag
        assert not re.search(r"\sstyle=", html)
        assert not re.search(r"\son[a-z]+=", html)


def test_generation_fails_with_the_engines_message_when_it_is_down(admin, version, settings):
    settings.INFERENCE_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    task_set = task_set_create(
        name="Down",
        created_by=admin,
        prompts=[PromptInput("Q", "typed", None)],
        versions=[version],
        candidates_per_task=2,
        guideline_text="Rank.",
    )
    assert candidates_generate(task_set_id=task_set.pk) == TaskSet.Status.FAILED
    task_set.refresh_from_db()
    assert task_set.status == TaskSet.Status.FAILED and "not reachable" in task_set.error
    assert task_set.tasks.get().candidates.count() == 0
