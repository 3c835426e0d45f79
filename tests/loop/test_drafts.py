"""Drafts: the job-success hook makes one from a loop job's adapter; nothing changes for users until the owner
publishes it; My arena draws it against its parent more often; the dashboard tells the owner; and no one else
reaches any of it (IDOR)."""

import random
from collections import Counter

import pytest
from django.urls import reverse

from apps.arena.models import Mode
from apps.arena.sampler import pair_key
from apps.arena.selectors import arena_versions
from apps.arena.services import battle_start
from apps.assistants.engine import engine_settings
from apps.assistants.models import Visibility
from apps.assistants.services import (
    AssistantError,
    assistant_version_publish,
    assistant_visibility_set,
    share_link_issue,
)
from apps.chat.models import Message
from apps.loop.drafts import loop_draft_create
from apps.loop.models import LoopRun
from apps.loop.selectors import loop_drafts_for_owner
from tests.factories import make_user, signed_in
from tests.loop.conftest import loop_job

pytestmark = pytest.mark.django_db


def test_a_succeeded_loop_job_makes_one_draft_of_its_parent_with_the_new_adapter(assistant, owner):
    parent = assistant.current_version
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    assert draft.is_draft and draft.parent == parent and draft.number == parent.number + 1
    assert draft.adapter == adapter
    assert (draft.instructions, draft.temperature, draft.max_tokens) == (
        parent.instructions,
        parent.temperature,
        parent.max_tokens,
    )
    assert loop_draft_create(job=job, adapter=adapter) == draft  # a retried hook makes no second one
    assert LoopRun.objects.get(job=job).draft == draft
    assistant.refresh_from_db()
    assert assistant.current_version == parent  # nothing changed for users
    assert engine_settings(version=assistant.current_version)["model"] == parent.base_model.name


def test_a_job_the_loop_did_not_start_makes_no_draft(assistant, owner):
    job, adapter = loop_job(assistant, owner)
    LoopRun.objects.filter(job=job).delete()
    assert loop_draft_create(job=job, adapter=adapter) is None
    assert not assistant.versions.filter(published_at__isnull=True).exists()


def test_publishing_makes_the_draft_current_once_and_only_for_the_owner(assistant, owner):
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    with pytest.raises(AssistantError, match="owner"):
        assistant_version_publish(version=draft, actor=make_user("mallory"))
    assistant_version_publish(version=draft, actor=owner)
    assistant.refresh_from_db()
    draft.refresh_from_db()
    assert assistant.current_version == draft and not draft.is_draft
    with pytest.raises(AssistantError, match="already published"):
        assistant_version_publish(version=draft, actor=owner)


def test_chat_and_share_links_answer_with_the_parent_until_the_draft_is_published(assistant, owner):
    parent = assistant.current_version
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    assistant_visibility_set(assistant=assistant, visibility=Visibility.PUBLIC)
    token = share_link_issue(assistant=assistant)
    starts = [
        (signed_in(owner), reverse("chat:start", args=[assistant.slug])),  # the owner, in chat
        (signed_in(make_user("vera")), reverse("chat:start", args=[assistant.slug])),  # anyone, it being public
        (signed_in(make_user("walt")), reverse("chat:share", args=[token])),  # through the share link
    ]

    def answered_by() -> list:
        for client, url in starts:
            assert client.post(url, {"content": "Hi"}).status_code == 302, url
        replies = Message.objects.filter(role=Message.Role.ASSISTANT).order_by("-created_at")[: len(starts)]
        return [reply.assistant_version for reply in replies]

    assert answered_by() == [parent] * len(starts)
    assistant_version_publish(version=draft, actor=owner)
    assert answered_by() == [draft] * len(starts)  # the same paths do follow the current version


def test_my_arena_draws_the_draft_against_its_parent_and_no_one_else_sees_it(assistant, owner):
    v1 = assistant.versions.get(number=1)
    parent = assistant.current_version
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    drawn = Counter()
    for seed in range(60):
        battle = battle_start(user=owner, mode=Mode.PERSONAL, prompt="Hi", rng=random.Random(seed))
        drawn[pair_key(battle.version_a_id, battle.version_b_id)] += 1
    # Three fresh versions: each pair weighs 9, the draft with its parent 9 × 4: 4/6 of the draws.
    assert drawn[pair_key(draft.pk, parent.pk)] > drawn[pair_key(draft.pk, v1.pk)] + drawn[pair_key(v1.pk, parent.pk)]
    # Public, the draft is never a contender, even once the assistant is public; nor in anyone else's arena.
    assistant_visibility_set(assistant=assistant, visibility=Visibility.PUBLIC)
    assert draft not in arena_versions(mode=Mode.PUBLIC, user=owner)
    assert draft not in arena_versions(mode=Mode.PERSONAL, user=make_user("vera"))


def test_the_dashboard_tells_the_owner_until_the_draft_is_published(assistant, owner):
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    client = signed_in(owner)
    page = client.get(reverse("dashboard")).content.decode()
    assert f'data-draft="{assistant.slug}-{draft.number}"' in page
    assert list(loop_drafts_for_owner(owner=owner)) == [draft]
    assert 'data-draft="' not in signed_in(make_user("vera")).get(reverse("dashboard")).content.decode()
    response = client.post(reverse("assistants:publish", args=[assistant.slug, draft.number]))
    assert response.status_code == 302 and response["Location"] == reverse("loop:history", args=[assistant.slug])
    assert 'data-draft="' not in client.get(reverse("dashboard")).content.decode()


def test_no_one_but_the_owner_reaches_the_loop_pages_or_publishes(assistant, owner):
    job, adapter = loop_job(assistant, owner)
    draft = loop_draft_create(job=job, adapter=adapter)
    assistant_visibility_set(assistant=assistant, visibility=Visibility.PUBLIC)  # public: still not theirs
    other = signed_in(make_user("mallory"))
    for url in (reverse("loop:improve", args=[assistant.slug]), reverse("loop:history", args=[assistant.slug])):
        assert other.get(url).status_code == 404, url
    assert other.post(reverse("loop:improve", args=[assistant.slug]), {"sources": ["labeling"]}).status_code == 404
    assert other.post(reverse("assistants:publish", args=[assistant.slug, draft.number])).status_code == 404
    draft.refresh_from_db()
    assert draft.is_draft
    assert LoopRun.objects.count() == 1
