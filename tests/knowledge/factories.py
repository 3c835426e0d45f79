"""Knowledge objects made through the services, as a person would make them, and ingested in this process."""

from apps.knowledge.ingestion import document_ingest
from apps.knowledge.models import Collection, DocumentVersion
from apps.knowledge.services import collection_create, document_upload


def make_collection(owner, name: str = "Manuals") -> Collection:
    return collection_create(owner=owner, name=name)


def ingested(collection: Collection, filename: str, data: bytes | str) -> DocumentVersion:
    """Upload and ingest now (the task's body, in this process); the version as ingestion left it."""
    version = document_upload(
        collection=collection, filename=filename, data=data.encode() if isinstance(data, str) else data
    )
    document_ingest(version_id=version.pk)
    version.refresh_from_db()
    return version
