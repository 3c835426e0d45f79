"""Knowledge pages: collections, a collection's documents (upload, live progress, cancel, retry, re-ingest,
delete), the retrieval tester, the source viewer, the original's download, and cited passages in chat and on
shared snapshots (through the snapshot's own link: its holder reads the sources of the shared branch's
answers, under the same rule as a visitor, and nothing else).

Thin: selectors decide access (the collection's owner; everyone else gets 404) and services do the writes.
Untrusted text (document text, passages) reaches HTML only through `untrusted_markdown_render`; the original
file is never shown inline, only downloaded by its owner as an attachment with nosniff. No inline scripts or
styles: progress polling lives in static/js/knowledge.js.
"""

from django.contrib import messages
from django.http import FileResponse, Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.permissions import member_required
from apps.chat.selectors import message_get_for_viewer, message_get_in_snapshot
from apps.core.inference_client import InferenceError
from apps.core.rendering import untrusted_markdown_render
from apps.knowledge import services
from apps.knowledge.forms import CollectionForm, SearchForm, UploadForm
from apps.knowledge.models import DocumentVersion
from apps.knowledge.retrieval import chunks_search
from apps.knowledge.selectors import (
    collection_get_owned,
    collection_list_owned,
    collection_progress,
    document_get_owned,
    document_list,
    version_get_owned,
)

SEARCH_TOP_K = 10
NAV = {"nav_active": "knowledge"}


@member_required
@require_http_methods(["GET", "POST"])
def collection_list(request):
    form = CollectionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            collection = services.collection_create(owner=request.user, name=form.cleaned_data["name"])
        except services.KnowledgeError as error:
            form.add_error("name", str(error))
        else:
            return redirect("knowledge:collection", collection.pk)
    context = {"collections": collection_list_owned(user=request.user), "form": form, **NAV}
    return render(request, "knowledge/collections.html", context)


@member_required
@require_POST
def collection_delete(request, pk: int):
    collection = collection_get_owned(user=request.user, pk=pk)
    services.collection_delete(collection=collection)
    messages.success(request, f"Collection “{collection.name}” deleted, with its documents.")
    return redirect("knowledge:collections")


@member_required
@require_http_methods(["GET", "POST"])
def collection_detail(request, pk: int):
    collection = collection_get_owned(user=request.user, pk=pk)
    form = UploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        accepted = 0
        for upload in form.cleaned_data["files"]:
            try:
                services.upload_size_refuse(filename=upload.name, size=upload.size)  # before reading it into memory
                services.document_upload(collection=collection, filename=upload.name, data=upload.read())
                accepted += 1
            except services.KnowledgeError as error:
                messages.error(request, str(error))
        if accepted:
            messages.success(request, f"{accepted} document{'s' if accepted != 1 else ''} queued for ingestion.")
        return redirect("knowledge:collection", collection.pk)
    context = {
        "collection": collection,
        "documents": document_list(collection=collection),
        "form": form,
        **NAV,
    }
    return render(request, "knowledge/collection.html", context)


@member_required
@require_GET
@never_cache
def collection_progress_json(request, pk: int):
    """Each document's newest version, for the page's once-a-second poll (static/js/knowledge.js)."""
    collection = collection_get_owned(user=request.user, pk=pk)
    return JsonResponse({"versions": collection_progress(collection=collection)})


@member_required
@require_GET
def collection_search(request, pk: int):
    """Test retrieval: what an assistant with this collection would be given, with each ranking shown."""
    collection = collection_get_owned(user=request.user, pk=pk)
    form = SearchForm(request.GET or None)
    results, query = [], ""
    if form.is_valid() and (query := form.cleaned_data["q"].strip()):
        try:
            results = chunks_search(
                collection_ids=[collection.pk], owner_id=request.user.pk, query=query, top_k=SEARCH_TOP_K
            )
        except InferenceError as error:
            messages.error(request, str(error))
    rows = [{"chunk": r, "html": _html(r.text)} for r in results]
    context = {"collection": collection, "form": form, "query": query, "rows": rows, **NAV}
    return render(request, "knowledge/search.html", context)


def _action(request, pk: int, action, done: str):
    version = version_get_owned(user=request.user, pk=pk)
    try:
        action(version=version)
    except services.KnowledgeError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, done.format(name=version.document.filename))
    return redirect("knowledge:collection", version.document.collection_id)


@member_required
@require_POST
def version_cancel(request, pk: int):
    return _action(request, pk, services.document_cancel, "Cancelling the ingestion of “{name}”.")


@member_required
@require_POST
def version_retry(request, pk: int):
    return _action(request, pk, services.document_retry, "“{name}” queued again.")


@member_required
@require_POST
def document_reingest(request, pk: int):
    document = document_get_owned(user=request.user, pk=pk)
    try:
        services.document_reingest(document=document)
    except services.KnowledgeError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"“{document.filename}” queued to be read again.")
    return redirect("knowledge:collection", document.collection_id)


@member_required
@require_POST
def document_delete(request, pk: int):
    document = document_get_owned(user=request.user, pk=pk)
    services.document_delete(document=document)
    messages.success(request, f"“{document.filename}” deleted.")
    return redirect("knowledge:collection", document.collection_id)


def _html(text: str) -> SafeString:
    """Untrusted text as HTML, through the one renderer (whose output is safe by its contract)."""
    return mark_safe(untrusted_markdown_render(text))  # noqa: S308 (the one sanitizer)


def _highlighted(text: str, start: int | None, end: int | None) -> SafeString:
    """The text as HTML, the span [start, end) in a block with id "cited": each part through the one renderer."""
    if start is None or end is None or not 0 <= start < end <= len(text):
        return _html(text)
    before, cited, after = text[:start], text[start:end], text[end:]
    marked = f'<div id="cited" class="source-cited">{_html(cited)}</div>'
    return mark_safe(_html(before) + marked + _html(after))  # noqa: S308


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _page_of(version: DocumentVersion, offset: int | None) -> int | None:
    if offset is None:
        return None
    pages = [number for number, start, end in version.pages if start <= offset < end or start == offset]
    return pages[0] if pages else None


@member_required
@require_GET
def version_source(request, pk: int):
    """The owner's source viewer: the extracted, sanitized text (never the original inline), scrolled to and
    highlighting ?start=&end= when given, with the hidden passages removed from it listed for the audit."""
    version = version_get_owned(user=request.user, pk=pk)
    start, end = _int(request.GET.get("start")), _int(request.GET.get("end"))
    context = {
        "version": version,
        "document": version.document,
        "collection": version.document.collection,
        "text_html": _highlighted(version.text, start, end),
        "page": _page_of(version, start),
        "hidden": [{**passage, "html": _html(passage.get("text", ""))} for passage in version.hidden],
        **NAV,
    }
    return render(request, "knowledge/source.html", context)


@member_required
@require_GET
def version_original(request, pk: int):
    """The uploaded file, for its owner only, always as a download (never rendered by the browser)."""
    version = version_get_owned(user=request.user, pk=pk)
    try:
        original = version.original.open("rb")
    except FileNotFoundError as error:
        raise Http404("The original file is gone.") from error
    response = FileResponse(
        original, as_attachment=True, filename=version.document.filename, content_type="application/octet-stream"
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


@require_GET
def cited_passage(request, message_id, n: int):
    """A cited source of a chat answer, for whoever may read the conversation."""
    message = message_get_for_viewer(
        message_id=message_id, user=request.user, session_key=request.session.session_key or ""
    )
    return _cited(request, message, n)


@require_GET
def snapshot_cited_passage(request, token: str, message_id, n: int):
    """A cited source of an answer on a shared snapshot, for whoever holds the snapshot link."""
    return _cited(request, message_get_in_snapshot(token=token, message_id=message_id), n)


def _cited(request, message, n: int):
    """Source `n` of `message` (None: not readable, 404): the passage itself, or the whole document with the
    passage highlighted when the viewer owns the collection or the answering version shares documents."""
    source = next((s for s in (message.sources if message else []) if s.get("n") == n), None)
    version = DocumentVersion.objects.select_related("document__collection").filter(pk=(source or {}).get("version_id"))
    version = version.first()
    if source is None or version is None:
        raise Http404("No such source.")
    owner = request.user.is_authenticated and version.document.collection.owner_id == request.user.pk
    whole = owner or (message.assistant_version and message.assistant_version.knowledge_share_documents)
    start, end = source["start"], source["end"]
    context = {
        "message": message,
        "source": source,
        "document_name": version.document.filename,
        "page": source.get("page"),
        "whole": whole,
        "text_html": _highlighted(version.text, start, end) if whole else _html(version.text[start:end]),
    }
    return render(request, "knowledge/cited.html", context)
