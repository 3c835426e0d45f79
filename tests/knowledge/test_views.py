"""The knowledge pages: the owner's flows, and everyone else gets 404 on every view, and never another
person's passage in retrieval, even for a verbatim query."""

import json
import re

import pytest
from django.urls import reverse
from lxml import html

from apps.knowledge.models import Document, DocumentVersion
from apps.knowledge.retrieval import chunks_search, readable_chunks
from tests.core.test_security_headers import csp_check
from tests.factories import make_assistant, make_user, signed_in
from tests.knowledge.factories import ingested, make_collection

pytestmark = pytest.mark.django_db
SECRET_NOTE = "The vault combination is seven four nine one, kept behind the lighthouse painting."
KETTLE = "# Kettle\n\nThe kettle boils one litre of water in three minutes.\n\nDescale it monthly."


@pytest.fixture
def mallory_and_alice(models_ready, inference_server):
    alice, mallory = make_user("alice"), make_user("mallory")
    secret = ingested(make_collection(alice, "Private"), "vault.md", f"# Vault\n\n{SECRET_NOTE}")
    return alice, mallory, secret


def test_another_users_passages_never_come_back_even_verbatim(mallory_and_alice):
    alice, mallory, secret = mallory_and_alice
    mine = make_collection(mallory, "Mine")
    ingested(mine, "kettle.md", KETTLE)
    alice_collection = secret.document.collection
    # Even naming Alice's collection id, Mallory's search (owner = Mallory) reads nothing of hers.
    results = chunks_search(
        collection_ids=[mine.pk, alice_collection.pk], owner_id=mallory.pk, query=SECRET_NOTE, top_k=10
    )
    assert results and all(r.document == "kettle.md" for r in results)
    assert not readable_chunks(collection_ids=[alice_collection.pk], owner_id=mallory.pk).exists()
    mine_only = chunks_search(collection_ids=[alice_collection.pk], owner_id=alice.pk, query=SECRET_NOTE, top_k=1)
    assert mine_only[0].text.endswith(SECRET_NOTE)  # the control: the same query finds it for its owner


def test_an_assistant_given_someone_elses_collection_retrieves_nothing_from_it(mallory_and_alice):
    """The builder refuses it; a version that has the link anyway (made past the form) still reads nothing."""
    from apps.assistants.engine import engine_request_build

    alice, mallory, secret = mallory_and_alice
    assistant = make_assistant(mallory)
    assistant.current_version.knowledge_collections.add(secret.document.collection)
    request = engine_request_build(
        version=assistant.current_version, messages=[{"role": "user", "content": SECRET_NOTE}], user_name="mallory"
    )
    assert request.sources == [] and request.report["chunks_included"] == 0
    assert all(SECRET_NOTE not in m["content"] for m in request.body["messages"][:-1])
    own = make_assistant(alice, knowledge_collections=(secret.document.collection,))
    request = engine_request_build(
        version=own.current_version, messages=[{"role": "user", "content": SECRET_NOTE}], user_name="alice"
    )
    assert [s["chunk_id"] for s in request.sources] == list(secret.chunks.values_list("pk", flat=True))


def test_every_view_is_404_for_anyone_but_the_owner(mallory_and_alice, client):
    _, mallory, secret = mallory_and_alice
    collection, document = secret.document.collection, secret.document
    gets = [
        reverse("knowledge:collection", args=[collection.pk]),
        reverse("knowledge:progress", args=[collection.pk]),
        reverse("knowledge:search", args=[collection.pk]) + "?q=vault",
        reverse("knowledge:source", args=[secret.pk]),
        reverse("knowledge:original", args=[secret.pk]),
    ]
    posts = [
        reverse("knowledge:collection", args=[collection.pk]),
        reverse("knowledge:collection_delete", args=[collection.pk]),
        reverse("knowledge:reingest", args=[document.pk]),
        reverse("knowledge:document_delete", args=[document.pk]),
        reverse("knowledge:cancel", args=[secret.pk]),
        reverse("knowledge:retry", args=[secret.pk]),
    ]
    intruder = signed_in(mallory)
    for url in gets:
        response = intruder.get(url)
        assert response.status_code == 404, url
        assert SECRET_NOTE not in response.content.decode(errors="replace")
    for url in posts:
        assert intruder.post(url).status_code == 404, url
    assert DocumentVersion.objects.filter(pk=secret.pk, status="ready").exists()
    assert Document.objects.filter(pk=document.pk).exists()
    listing = intruder.get(reverse("knowledge:collections")).content.decode()
    assert "Private" not in listing
    for url in gets:  # signed out: sent to log in, nothing shown
        response = client.get(url)
        assert response.status_code == 302 and reverse("login") in response.url


def test_the_owner_creates_uploads_follows_progress_and_searches(inference_server):
    owner = make_user("ada")
    client = signed_in(owner)
    response = client.post(reverse("knowledge:collections"), {"name": "Manuals"})
    collection = owner.collections.get()
    assert response.status_code == 302 and response.url == reverse("knowledge:collection", args=[collection.pk])

    from django.core.files.uploadedfile import SimpleUploadedFile

    files = [
        SimpleUploadedFile("kettle.md", KETTLE.encode()),
        SimpleUploadedFile("photo.md", b"\x89PNG\r\n\x1a\n" + bytes(64)),
    ]
    page = client.post(reverse("knowledge:collection", args=[collection.pk]), {"files": files}, follow=True)
    text = page.content.decode()
    assert "1 document queued" in text and "PNG" in text  # one accepted, one refused with its reason
    version = DocumentVersion.objects.get()
    progress = json.loads(client.get(reverse("knowledge:progress", args=[collection.pk])).content)
    assert [(v["id"], v["status"]) for v in progress["versions"]] == [(version.pk, "queued")]

    from apps.knowledge.ingestion import document_ingest

    document_ingest(version_id=version.pk)
    progress = json.loads(client.get(reverse("knowledge:progress", args=[collection.pk])).content)["versions"][0]
    assert progress["status"] == "ready" and progress["chunks_embedded"] == progress["chunks_total"] > 0

    search = client.get(reverse("knowledge:search", args=[collection.pk]), {"q": "how long to boil the kettle"})
    tree = html.fromstring(search.content)
    first = tree.cssselect(".knowledge-result")[0]
    ranks = {dd.get("data-rank"): dd.text_content().strip() for dd in first.cssselect("dd[data-rank]")}
    assert ranks["vector"] == "1" and float(ranks["score"]) > 0
    link = first.cssselect("h3 a")[0].get("href")
    source = client.get(link)
    cited = html.fromstring(source.content).cssselect("#cited")
    assert source.status_code == 200 and cited and "three minutes" in cited[0].text_content()

    listing, detail = client.get(reverse("knowledge:collections")), client.get(page.request["PATH_INFO"])
    for shown in (listing, detail, search, source):
        csp_check(shown["Content-Security-Policy"])  # the strict policy, and pages that need nothing looser:
        tree = html.fromstring(shown.content)
        assert not tree.xpath("//*[@style]") and all(script.get("src") for script in tree.iter("script"))
        assert not [name for el in tree.iter() for name in el.attrib if name.startswith("on")]


def test_the_original_downloads_only_as_an_attachment_with_nosniff(inference_server):
    owner = make_user("ada")
    page = b"<html><body><p>Visible words here.</p><script>alert(1)</script></body></html>"
    version = ingested(make_collection(owner), "page.html", page)
    response = signed_in(owner).get(reverse("knowledge:original", args=[version.pk]))
    assert response.status_code == 200 and b"".join(response.streaming_content) == page
    assert response["Content-Disposition"].startswith("attachment")
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_the_source_viewer_escapes_document_text(inference_server):
    owner = make_user("ada")
    version = ingested(make_collection(owner), "notes.txt", "Use <b>bold</b> and <script>alert(1)</script> safely.")
    body = signed_in(owner).get(reverse("knowledge:source", args=[version.pk])).content.decode()
    article = re.search(r'<article class="card section knowledge-source".*?</article>', body, re.S).group()
    assert "<script>" not in article and "&lt;script&gt;" in article
