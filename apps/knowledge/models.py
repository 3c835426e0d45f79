"""Knowledge: collections of documents, each a chain of versions, each version's text cut into embedded chunks.

Design:
- A `Document` is one file name in a collection. Uploading the same bytes again (under any name) is a
  duplicate (one `content_hash` per collection); uploading changed bytes under a known name makes a new
  `DocumentVersion`. The original bytes are kept under MEDIA_ROOT for the owner to download.
- A version moves queued -> processing -> ready, or ends failed / cancelled. Its progress counters, error,
  the hidden passages removed from it (kept for the audit) and its extracted text live on the version.
- Retrieval reads only `Document.current_version`, which points at a *ready* version. Ingestion writes a new
  version's chunks while the old version is still the one read, then flips the pointer in one transaction:
  a re-upload or re-ingest replaces the chunks atomically, and a failed one leaves the old ones served.
- `Chunk` holds the passage, its [start, end) in the version's text, its page and heading path, a 384-dim
  embedding (HNSW, cosine) and a generated English tsvector (GIN) for the full-text half of hybrid search.
"""

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import models
from django.db.models import F, Q
from pgvector.django import HnswIndex, VectorField

EMBEDDING_DIMENSIONS = 384  # all-minilm-l6-v2
SEARCH_CONFIG = "english"


class Collection(models.Model):
    """A named set of documents an assistant retrieves from."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="collections")
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="collection_unique_owner_name")]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    collection = models.ForeignKey(Collection, on_delete=models.CASCADE, related_name="documents")
    filename = models.CharField(max_length=255)
    content_hash = models.CharField(max_length=64, help_text="sha256 of the newest version's bytes.")
    # The version retrieval reads: always a ready one, flipped only once all its chunks are written.
    current_version = models.OneToOneField(
        "DocumentVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="current_of"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["filename"]
        constraints = [
            models.UniqueConstraint(fields=["collection", "filename"], name="document_unique_filename"),
            models.UniqueConstraint(fields=["collection", "content_hash"], name="document_unique_content"),
            models.CheckConstraint(condition=~Q(filename=""), name="document_has_filename"),
            models.CheckConstraint(condition=Q(content_hash__regex=r"^[0-9a-f]{64}$"), name="document_hash_sha256"),
        ]

    def __str__(self) -> str:
        return self.filename


def _original_path(version: "DocumentVersion", filename: str) -> str:
    # Never the uploader's name on disk: the hash names the bytes, the name is kept on the Document.
    return f"knowledge/{version.document.collection_id}/{version.content_hash}"


class DocumentVersion(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.PROCESSING)

    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    original = models.FileField(upload_to=_original_path, max_length=300)
    content_hash = models.CharField(max_length=64)
    size = models.PositiveBigIntegerField()
    format = models.CharField(max_length=20, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    pages_parsed = models.PositiveIntegerField(default=0)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    failure = models.CharField(max_length=40, blank=True, help_text="A stable code: an ExtractionFailure or ours.")
    error = models.CharField(max_length=500, blank=True, help_text="Why it failed, written for the uploader.")
    hidden_count = models.PositiveIntegerField(default=0)
    hidden = models.JSONField(default=list, blank=True, help_text="Removed passages: reason, text, detail, page.")
    tag_messages = models.JSONField(default=list, blank=True)
    text = models.TextField(blank=True, help_text="The extracted, sanitized text the chunks point into.")
    pages = models.JSONField(default=list, blank=True, help_text="[[number, start, end], ...] for PDFs.")
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life from its worker.")
    # Fair queueing (queueing.py): a queued version waits (null) until its owner has a free share of the workers.
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="When its ingestion task was last sent.")
    dispatches = models.PositiveIntegerField(default=0, help_text="Tasks sent for this queueing (lost ones resent).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["document", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["document", "number"], name="documentversion_unique_number"),
            models.CheckConstraint(condition=Q(number__gte=1), name="documentversion_number_positive"),
            models.CheckConstraint(
                condition=Q(status__in=["queued", "processing", "ready", "failed", "cancelled"]),
                name="documentversion_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(chunks_embedded__lte=F("chunks_total")), name="documentversion_embedded_le_total"
            ),
            models.CheckConstraint(
                condition=~Q(status="failed") | ~Q(error=""), name="documentversion_failed_has_error"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document} v{self.number}"

    @property
    def active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def retryable(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.CANCELLED)


class Chunk(models.Model):
    version = models.ForeignKey(DocumentVersion, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    text = models.TextField()
    start = models.PositiveIntegerField()
    end = models.PositiveIntegerField()
    page = models.PositiveIntegerField(null=True, blank=True)
    heading_path = models.JSONField(default=list, blank=True)
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    search = models.GeneratedField(
        expression=SearchVector("text", config=SEARCH_CONFIG),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    class Meta:
        ordering = ["version", "index"]
        constraints = [
            models.UniqueConstraint(fields=["version", "index"], name="chunk_unique_index"),
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="chunk_span_not_empty"),
        ]
        indexes = [
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
            GinIndex(fields=["search"], name="chunk_search_gin"),
        ]

    def __str__(self) -> str:
        return f"{self.version} #{self.index}"
