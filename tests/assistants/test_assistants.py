"""The assistant builder: versions, gallery, moderation, avatars, share links, and object permissions.

These need only the database. The live preview's stream is covered end to end elsewhere (it needs the
inference server); here only its permission check is.
"""

import io
import re
from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image, PngImagePlugin

from apps.accounts.models import User
from apps.assistants.models import Assistant, AssistantReport, AssistantVersion, Visibility
from apps.assistants.selectors import gallery_list, share_link_valid
from apps.assistants.services import AssistantConfig, AssistantError, assistant_update
from tests.factories import make_assistant, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def ada() -> User:
    return User.objects.create_user(username="ada", password="x")


@pytest.fixture
def bob() -> User:
    return User.objects.create_user(username="bob", password="x")


@pytest.fixture
def ada_client(ada) -> Client:
    return signed_in(ada)


@pytest.fixture
def bob_client(bob) -> Client:
    return signed_in(bob)


def _form(stub_chat_model, **overrides) -> dict:
    data = {
        "name": "Poet",
        "slug": "",
        "description": "Writes short poems.",
        "instructions": "You are a poet. Today is {{date}}; greet {{user_name}}.",
        "starter_prompts": ["Write a haiku", "A limerick, please"],
        "base_model": stub_chat_model.pk,
        "adapter": "",
        "temperature": "0.8",
        "top_p": "0.9",
        "max_tokens": "256",
        "repetition_penalty": "1.1",
        "visibility": Visibility.PRIVATE,
    }
    data.update(overrides)
    return data


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _png_bytes(size=(600, 400)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "metadata that must not survive re-encoding")
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# Versions


def test_create_saves_version_1(ada_client, ada, stub_chat_model):
    response = ada_client.post(reverse("assistants:create"), _form(stub_chat_model, slug="poet"))
    assert response.status_code == 302 and response.url == reverse("assistants:edit", args=["poet"])
    assistant = Assistant.objects.get(slug="poet")
    version = assistant.current_version
    assert assistant.owner == ada and version.number == 1
    assert version.starter_prompts == ["Write a haiku", "A limerick, please"]
    assert version.temperature == 0.8 and version.max_tokens == 256 and version.base_model == stub_chat_model
    assert "Saved version 1." in _messages(response)


def test_create_without_slug_derives_one_from_the_name(ada_client, stub_chat_model):
    ada_client.post(reverse("assistants:create"), _form(stub_chat_model, name="My Great Poet"))
    assert Assistant.objects.filter(slug="my-great-poet").exists()


def test_edit_saves_version_2_and_version_1_is_unchanged(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, name="Poet", instructions="First instructions.")
    page = ada_client.get(reverse("assistants:edit", args=[assistant.slug]))
    assert page.status_code == 200 and b"First instructions." in page.content

    data = _form(stub_chat_model, name="Poet II", instructions="Second instructions.", slug="ignored-on-edit")
    response = ada_client.post(reverse("assistants:edit", args=[assistant.slug]), data)
    assert response.status_code == 302 and "Saved version 2." in _messages(response)

    assistant.refresh_from_db()
    assert assistant.slug == "poet"  # the address cannot change
    assert assistant.current_version.number == 2 and assistant.current_version.instructions == "Second instructions."
    first = AssistantVersion.objects.get(assistant=assistant, number=1)
    assert first.name == "Poet" and first.instructions == "First instructions."

    page = ada_client.get(reverse("assistants:edit", args=[assistant.slug]))
    assert page.content.count(b"<time datetime=") == 2  # the version history lists both

    first.instructions = "Rewritten history"
    with pytest.raises(ValueError, match="immutable"):
        first.save()
    first.refresh_from_db()
    assert first.instructions == "First instructions."


def test_more_than_four_starter_prompts_are_refused(ada_client, ada, stub_chat_model):
    prompts = ["one", "two", "three", "four", "five"]
    response = ada_client.post(
        reverse("assistants:create"), _form(stub_chat_model, slug="many", starter_prompts=prompts)
    )
    assert response.status_code == 200 and b"At most 4 starter prompts" in response.content
    assert not Assistant.objects.filter(slug="many").exists()

    with pytest.raises(AssistantError):
        make_assistant(ada, base_model=stub_chat_model, starter_prompts=prompts)
    assistant = make_assistant(ada, base_model=stub_chat_model, starter_prompts=prompts[:4])
    assert assistant.current_version.starter_prompts == prompts[:4]


def test_invalid_generation_settings_are_refused(ada_client, stub_chat_model):
    for field, value in [("temperature", "2.5"), ("top_p", "0"), ("max_tokens", "5000"), ("repetition_penalty", "0.9")]:
        response = ada_client.post(reverse("assistants:create"), _form(stub_chat_model, slug="bad", **{field: value}))
        assert response.status_code == 200, field
    assert not Assistant.objects.filter(slug="bad").exists()


def test_list_shows_own_assistants_and_an_empty_state(ada_client, ada, bob, stub_chat_model):
    assert b"No assistants yet" in ada_client.get(reverse("assistants:list")).content
    make_assistant(ada, base_model=stub_chat_model, name="Mine")
    make_assistant(bob, base_model=stub_chat_model, name="Theirs")
    content = ada_client.get(reverse("assistants:list")).content
    assert b"Mine" in content and b"Theirs" not in content and b"v1" in content


def test_delete_asks_then_deletes_with_its_versions_and_conversations(ada_client, ada, stub_chat_model):
    from apps.chat.models import Conversation, Message
    from apps.chat.services import conversation_start, message_send

    assistant = make_assistant(ada, base_model=stub_chat_model)
    conversation = conversation_start(assistant=assistant, owner=ada)
    _, answer = message_send(conversation=conversation, content="Hello")  # the answer PROTECTs version 1
    url = reverse("assistants:delete", args=[assistant.slug])
    assert ada_client.get(url).status_code == 200 and Assistant.objects.filter(pk=assistant.pk).exists()
    response = ada_client.post(url)
    assert response.status_code == 302 and not Assistant.objects.filter(pk=assistant.pk).exists()
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(pk=answer.pk).exists()


# Object permissions


def test_someone_elses_private_assistant_is_a_404_everywhere(bob_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.LINK)
    assistant.visibility = Visibility.PRIVATE  # private, yet with a token and an avatar to steal
    assistant.save()
    png = SimpleUploadedFile("a.png", _png_bytes(), content_type="image/png")
    from apps.assistants.services import assistant_avatar_set

    assistant_avatar_set(assistant=assistant, upload=png)
    assistant.refresh_from_db()
    before = (assistant.share_token, assistant.avatar, assistant.versions.count(), assistant.visibility)
    slug = assistant.slug

    requests = [
        ("get", reverse("assistants:edit", args=[slug]), {}),
        ("post", reverse("assistants:edit", args=[slug]), _form(stub_chat_model, visibility=Visibility.PUBLIC)),
        ("get", reverse("assistants:delete", args=[slug]), {}),
        ("post", reverse("assistants:delete", args=[slug]), {}),
        ("post", reverse("assistants:share_issue", args=[slug]), {}),
        ("post", reverse("assistants:share_revoke", args=[slug]), {}),
        ("get", reverse("assistants:avatar_image", args=[slug]), {}),
        ("post", reverse("assistants:avatar", args=[slug]), {"avatar": SimpleUploadedFile("b.png", _png_bytes())}),
        ("post", reverse("assistants:preview", args=[slug]), {**_form(stub_chat_model), "conversation": "[]"}),
        ("post", reverse("assistants:report", args=[slug]), {"reason": "probing"}),
    ]
    for method, url, data in requests:
        response = getattr(bob_client, method)(url, data)
        assert response.status_code == 404, (method, url, response.status_code)

    assistant.refresh_from_db()
    assert (assistant.share_token, assistant.avatar, assistant.versions.count(), assistant.visibility) == before
    assert not AssistantReport.objects.exists()


def test_public_assistant_is_still_not_editable_by_others(bob_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.PUBLIC)
    assert bob_client.get(reverse("assistants:edit", args=[assistant.slug])).status_code == 404
    assert bob_client.post(reverse("assistants:delete", args=[assistant.slug])).status_code == 404
    assert Assistant.objects.filter(pk=assistant.pk).exists()


def test_pages_need_a_login(ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.PUBLIC)
    anonymous = Client()
    for url in [
        reverse("assistants:list"),
        reverse("assistants:gallery"),
        reverse("assistants:create"),
        reverse("assistants:edit", args=[assistant.slug]),
        reverse("assistants:avatar_image", args=[assistant.slug]),
    ]:
        response = anonymous.get(url)
        assert response.status_code == 302 and "/login" in response.url, url


def test_writes_are_post_only(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.LINK)
    for name in ["share_issue", "share_revoke", "avatar", "report", "preview"]:
        assert ada_client.get(reverse(f"assistants:{name}", args=[assistant.slug])).status_code == 405, name


def test_csrf_is_enforced_on_edit(ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model)
    client = Client(enforce_csrf_checks=True)
    client.force_login(ada)
    response = client.post(reverse("assistants:edit", args=[assistant.slug]), _form(stub_chat_model, name="Changed"))
    assert response.status_code == 403
    assert assistant.versions.count() == 1


# Gallery and moderation


def test_gallery_lists_only_listed_public_assistants_and_searches(bob_client, ada, stub_chat_model):
    public = make_assistant(
        ada,
        base_model=stub_chat_model,
        name="Public Poet",
        visibility=Visibility.PUBLIC,
        description="Sonnets on demand",
    )
    make_assistant(
        ada, base_model=stub_chat_model, name="Public Chef", visibility=Visibility.PUBLIC, description="Recipes"
    )
    make_assistant(ada, base_model=stub_chat_model, name="Private Diary", visibility=Visibility.PRIVATE)
    make_assistant(ada, base_model=stub_chat_model, name="Linked Tutor", visibility=Visibility.LINK)
    hidden = make_assistant(ada, base_model=stub_chat_model, name="Unlisted Troll", visibility=Visibility.PUBLIC)
    hidden.unlisted = True
    hidden.save()

    content = bob_client.get(reverse("assistants:gallery")).content.decode()
    assert "Public Poet" in content and "Public Chef" in content and "by ada" in content
    assert "Private Diary" not in content and "Linked Tutor" not in content and "Unlisted Troll" not in content
    assert f"/assistants/{public.slug}/chat/" in content

    content = bob_client.get(reverse("assistants:gallery"), {"q": "sonnets"}).content.decode()
    assert "Public Poet" in content and "Public Chef" not in content

    content = bob_client.get(reverse("assistants:gallery"), {"q": "diary"}).content.decode()
    assert "Private Diary" not in content and "Nothing matches" in content


def test_report_once_per_user_and_never_by_the_owner(ada_client, bob_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.PUBLIC)
    url = reverse("assistants:report", args=[assistant.slug])

    response = bob_client.post(url, {"reason": "It insults people."})
    assert response.status_code == 302 and AssistantReport.objects.filter(assistant=assistant).count() == 1

    response = bob_client.post(url, {"reason": "Again!"})
    assert any("already reported" in m for m in _messages(response))
    assert AssistantReport.objects.filter(assistant=assistant).count() == 1

    response = bob_client.post(url, {"reason": ""})  # refused for being empty, before "already reported"
    assert "required" in _messages(response)[-1]  # the newest message; the earlier ones are still queued
    assert AssistantReport.objects.filter(assistant=assistant).count() == 1

    response = ada_client.post(url, {"reason": "Reporting myself"})
    assert any("your own" in m for m in _messages(response))
    assert AssistantReport.objects.filter(assistant=assistant).count() == 1


def test_the_admin_changes_visibility_through_the_service_so_going_private_ends_the_link(ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, name="Shared", visibility=Visibility.LINK)
    old_token = assistant.share_token
    admin_client = signed_in(User.objects.create_superuser(username="root", password="x"))
    url = reverse("admin:assistants_assistant_change", args=[assistant.pk])
    for visibility in (Visibility.PRIVATE, Visibility.LINK):
        page = admin_client.get(url).content.decode()  # the form as the admin page sends it, inlines included
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
        response = admin_client.post(url, {**hidden, "visibility": visibility})
        assert response.status_code == 302
    assistant.refresh_from_db()
    assert assistant.visibility == Visibility.LINK and assistant.share_token and assistant.share_token != old_token
    assert not share_link_valid(assistant=assistant, token=old_token)
    assert admin_client.get(reverse("admin:assistants_assistant_add")).status_code == 403


def test_admin_unlist_action_hides_from_gallery_and_reports_appear(bob_client, ada, bob, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, name="Listed One", visibility=Visibility.PUBLIC)
    admin = User.objects.create_superuser(username="root", password="x")
    admin_client = signed_in(admin)
    bob_client.post(reverse("assistants:report", args=[assistant.slug]), {"reason": "Spam"})

    reports = admin_client.get(reverse("admin:assistants_assistantreport_changelist"))
    assert reports.status_code == 200 and b"Spam" in reports.content

    assert b"<h2>Listed One</h2>" in bob_client.get(reverse("assistants:gallery")).content
    changelist = reverse("admin:assistants_assistant_changelist")
    response = admin_client.post(changelist, {"action": "unlist", "_selected_action": [assistant.pk]})
    assert response.status_code == 302
    assistant.refresh_from_db()
    assert assistant.unlisted and assistant not in gallery_list()
    assert b"<h2>Listed One</h2>" not in bob_client.get(reverse("assistants:gallery")).content

    admin_client.post(changelist, {"action": "list_again", "_selected_action": [assistant.pk]})
    assistant.refresh_from_db()
    assert not assistant.unlisted

    report = AssistantReport.objects.get()
    report_list = reverse("admin:assistants_assistantreport_changelist")
    admin_client.post(report_list, {"action": "unlist_assistants", "_selected_action": [report.pk]})
    admin_client.post(report_list, {"action": "mark_resolved", "_selected_action": [report.pk]})
    assistant.refresh_from_db()
    report.refresh_from_db()
    assert assistant.unlisted and report.resolved

    version_page = reverse("admin:assistants_assistantversion_change", args=[assistant.current_version_id])
    assert admin_client.get(version_page).status_code == 200
    assert admin_client.get(reverse("admin:assistants_assistant_change", args=[assistant.pk])).status_code == 200


# Avatars


def test_avatar_is_reencoded_and_served_as_png(ada_client, bob_client, ada, stub_chat_model, media_root):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.PUBLIC)
    original = _png_bytes()
    upload = SimpleUploadedFile("me.png", original, content_type="image/png")
    response = ada_client.post(reverse("assistants:avatar", args=[assistant.slug]), {"avatar": upload})
    assert response.status_code == 302 and "Avatar updated." in _messages(response)

    assistant.refresh_from_db()
    stored = (media_root / assistant.avatar).read_bytes()
    assert stored != original and b"must not survive" not in stored
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "PNG" and image.width <= 256 and image.height <= 256

    for client in (ada_client, bob_client):  # the owner, and anyone for a listed public assistant
        served = client.get(reverse("assistants:avatar_image", args=[assistant.slug]))
        assert served.status_code == 200
        assert served["Content-Type"] == "image/png" and served["X-Content-Type-Options"] == "nosniff"
        assert b"".join(served.streaming_content) == stored


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        (
            "evil.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "image/svg+xml",
        ),
        ("notes.png", b"just some text, not an image", "image/png"),
    ],
)
def test_avatar_refuses_svg_and_non_images(ada_client, ada, stub_chat_model, name, content, content_type):
    assistant = make_assistant(ada, base_model=stub_chat_model)
    upload = SimpleUploadedFile(name, content, content_type=content_type)
    response = ada_client.post(reverse("assistants:avatar", args=[assistant.slug]), {"avatar": upload})
    assert response.status_code == 302 and any("not an image" in m for m in _messages(response))
    assistant.refresh_from_db()
    assert assistant.avatar == ""


def test_avatar_refuses_files_over_2mb(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model)
    upload = SimpleUploadedFile("big.png", _png_bytes() + b"\0" * (2 * 1024 * 1024), content_type="image/png")
    response = ada_client.post(reverse("assistants:avatar", args=[assistant.slug]), {"avatar": upload})
    assert any("the limit is" in m for m in _messages(response))
    assistant.refresh_from_db()
    assert assistant.avatar == ""


def test_avatar_visibility_follows_the_assistant(bob_client, ada, stub_chat_model, settings):
    from apps.assistants.services import assistant_avatar_set

    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.LINK)
    assistant_avatar_set(assistant=assistant, upload=SimpleUploadedFile("a.png", _png_bytes()))
    url = reverse("assistants:avatar_image", args=[assistant.slug])
    assert bob_client.get(url).status_code == 404  # link-only, no token
    assert bob_client.get(url, {"share": "wrong"}).status_code == 404
    assert bob_client.get(url, {"share": assistant.share_token}).status_code == 200
    settings.ATELIER_ANONYMOUS_SHARING = True  # the share page's anonymous visitors see it too
    assert Client().get(url, {"share": assistant.share_token}).status_code == 200
    assert Client().get(url, {"share": "wrong"}).status_code == 404
    settings.ATELIER_ANONYMOUS_SHARING = False
    assert Client().get(url, {"share": assistant.share_token}).status_code == 302


def test_assistant_without_avatar_gets_a_letter_badge(ada_client, ada, stub_chat_model):
    make_assistant(ada, base_model=stub_chat_model, name="zed")
    assert b'assistant-avatar-letter" aria-hidden="true">Z</span>' in ada_client.get(reverse("assistants:list")).content


# Share links


def test_share_issue_replaces_the_token_and_revoke_clears_it(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.LINK)
    old = assistant.share_token
    assert share_link_valid(assistant=assistant, token=old)

    page = ada_client.get(reverse("assistants:edit", args=[assistant.slug])).content.decode()
    assert f"http://testserver/s/{old}/" in page

    response = ada_client.post(reverse("assistants:share_issue", args=[assistant.slug]), {"expires_in_days": "7"})
    assert response.status_code == 302
    assistant.refresh_from_db()
    assert assistant.share_token and assistant.share_token != old
    assert not share_link_valid(assistant=assistant, token=old)
    assert share_link_valid(assistant=assistant, token=assistant.share_token)
    assert timezone.now() + timedelta(days=6) < assistant.share_expires_at < timezone.now() + timedelta(days=8)

    ada_client.post(reverse("assistants:share_revoke", args=[assistant.slug]))
    assistant.refresh_from_db()
    assert assistant.share_token is None and assistant.share_expires_at is None


def test_share_expiry_in_the_past_is_refused(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.LINK)
    token = assistant.share_token
    past = (timezone.localtime() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    response = ada_client.post(reverse("assistants:share_issue", args=[assistant.slug]), {"expires_at": past})
    assert any("future" in m for m in _messages(response))
    assistant.refresh_from_db()
    assert assistant.share_token == token and assistant.share_expires_at is None


def test_private_assistant_gets_no_share_link(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model)
    response = ada_client.post(reverse("assistants:share_issue", args=[assistant.slug]))
    assert any("private" in m.lower() for m in _messages(response))
    assistant.refresh_from_db()
    assert assistant.share_token is None


def test_update_to_link_visibility_issues_a_token(ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model)
    config = AssistantConfig(name="Helper", base_model=stub_chat_model)
    assistant_update(assistant=assistant, actor=ada, config=config, visibility=Visibility.LINK)
    assistant.refresh_from_db()
    assert assistant.share_token and assistant.versions.count() == 2


def test_going_private_ends_the_link_for_good(ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model, visibility=Visibility.LINK)
    old = assistant.share_token
    config = AssistantConfig(name="Helper", base_model=stub_chat_model)
    assistant_update(assistant=assistant, actor=ada, config=config, visibility=Visibility.PRIVATE)
    assistant_update(assistant=assistant, actor=ada, config=config, visibility=Visibility.LINK)
    assistant.refresh_from_db()
    assert assistant.share_token and assistant.share_token != old
    assert not share_link_valid(assistant=assistant, token=old)


# Preview (its permission and input checks only; the stream needs the inference server)


def test_preview_refuses_a_bad_conversation(ada_client, ada, stub_chat_model):
    assistant = make_assistant(ada, base_model=stub_chat_model)
    url = reverse("assistants:preview", args=[assistant.slug])
    response = ada_client.post(url, {**_form(stub_chat_model), "conversation": "not json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    response = ada_client.post(url, {**_form(stub_chat_model), "conversation": '[{"role": "system", "content": "x"}]'})
    assert response.status_code == 400
    response = ada_client.post(url, {**_form(stub_chat_model, temperature="9"), "conversation": "[]"})
    assert response.status_code == 400 and "Fix the form" in response.json()["error"]
