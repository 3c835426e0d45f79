"""Writes for assistants. Every configuration change creates a new immutable AssistantVersion."""

import io
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify
from PIL import Image, UnidentifiedImageError

from apps.accounts.models import User
from apps.assistants.models import (
    MAX_STARTER_PROMPTS,
    Assistant,
    AssistantReport,
    AssistantVersion,
    Visibility,
)
from apps.finetune.models import Adapter
from apps.knowledge.models import Collection
from apps.registry.models import BaseModel

AVATAR_MAX_BYTES = 2 * 1024 * 1024
AVATAR_SIZE = 256
AVATAR_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}  # raster only: an SVG can carry script


class AssistantError(Exception):
    """A domain error with a message fit for the person who caused it."""


@dataclass(frozen=True)
class AssistantConfig:
    """Everything a version holds. Forms and the API build one; services validate and save it."""

    name: str
    base_model: BaseModel
    description: str = ""
    instructions: str = ""
    starter_prompts: list[str] = field(default_factory=list)
    adapter: Adapter | None = None
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    repetition_penalty: float = 1.1
    knowledge_collections: tuple[Collection, ...] = ()
    knowledge_top_k: int = 4
    knowledge_min_score: float = 0.0
    knowledge_share_documents: bool = False
    canary: str = ""

    @property
    def adapter_id(self) -> int | None:
        """As on a version, so engine_settings reads a config and a version alike."""
        return self.adapter.pk if self.adapter is not None else None


def assistant_config_of(*, version: AssistantVersion) -> AssistantConfig:
    """A saved version's configuration, to change one thing and save it as the next version."""
    return AssistantConfig(
        name=version.name,
        base_model=version.base_model,
        description=version.description,
        instructions=version.instructions,
        starter_prompts=list(version.starter_prompts),
        adapter=version.adapter,
        temperature=version.temperature,
        top_p=version.top_p,
        max_tokens=version.max_tokens,
        repetition_penalty=version.repetition_penalty,
        knowledge_collections=tuple(version.knowledge_collections.all()),
        knowledge_top_k=version.knowledge_top_k,
        knowledge_min_score=version.knowledge_min_score,
        knowledge_share_documents=version.knowledge_share_documents,
        canary=version.canary,
    )


def _validate(config: AssistantConfig, owner: User) -> None:
    if not config.name.strip():
        raise AssistantError("An assistant needs a name.")
    if len(config.starter_prompts) > MAX_STARTER_PROMPTS:
        raise AssistantError(f"At most {MAX_STARTER_PROMPTS} starter prompts.")
    if config.base_model.kind != BaseModel.Kind.CHAT or not config.base_model.ready:
        raise AssistantError(f"{config.base_model} is not a ready chat model.")
    if any(collection.owner_id != owner.pk for collection in config.knowledge_collections):
        raise AssistantError("You can only attach your own knowledge collections.")
    if config.adapter is not None:
        # Checked here as well as in the form's choices: the API and the services are callers too.
        if config.adapter.owner_id != owner.pk:
            raise AssistantError("You can only use your own fine-tunes.")
        if config.adapter.base_model_id != config.base_model.pk:
            raise AssistantError(
                f"The fine-tune {config.adapter.name} was made for {config.adapter.base_model}, "
                f"not {config.base_model}."
            )


def _unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "assistant"
    slug, n = base, 2
    while Assistant.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


def _version_create(*, assistant: Assistant, config: AssistantConfig, actor: User) -> AssistantVersion:
    last = assistant.versions.order_by("-number").values_list("number", flat=True).first() or 0
    version = AssistantVersion.objects.create(
        assistant=assistant,
        number=last + 1,
        name=config.name.strip(),
        description=config.description.strip(),
        instructions=config.instructions,
        starter_prompts=[p.strip() for p in config.starter_prompts if p.strip()],
        base_model=config.base_model,
        adapter=config.adapter,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        repetition_penalty=config.repetition_penalty,
        knowledge_top_k=config.knowledge_top_k,
        knowledge_min_score=config.knowledge_min_score,
        knowledge_share_documents=config.knowledge_share_documents,
        canary=config.canary.strip(),
        created_by=actor,
    )
    version.knowledge_collections.set(config.knowledge_collections)
    assistant.current_version = version
    assistant.save(update_fields=["current_version", "updated_at"])
    return version


@transaction.atomic
def assistant_create(
    *, owner: User, config: AssistantConfig, visibility: str = Visibility.PRIVATE, slug: str = ""
) -> Assistant:
    _validate(config, owner)
    slug = slugify(slug) if slug else _unique_slug(config.name)
    if Assistant.objects.filter(slug=slug).exists():
        raise AssistantError(f"The address {slug!r} is taken; choose another.")
    share_token = None if visibility == Visibility.PRIVATE else _new_share_token()
    assistant = Assistant.objects.create(owner=owner, slug=slug, visibility=visibility, share_token=share_token)
    _version_create(assistant=assistant, config=config, actor=owner)
    return assistant


@transaction.atomic
def assistant_update(
    *, assistant: Assistant, actor: User, config: AssistantConfig, visibility: str
) -> AssistantVersion:
    """Save a new version (the old one stays, for the conversations that used it) and the visibility."""
    assistant = Assistant.objects.select_for_update().get(pk=assistant.pk)
    _validate(config, assistant.owner)
    assistant_visibility_set(assistant=assistant, visibility=visibility)
    return _version_create(assistant=assistant, config=config, actor=actor)


@transaction.atomic
def assistant_visibility_set(*, assistant: Assistant, visibility: str) -> None:
    """The one way visibility changes (the builder and the admin alike). Going private ends the share link
    for good: making it shareable again issues a new one, so people who had the old link stay out."""
    if visibility not in Visibility.values:
        raise AssistantError("Unknown visibility.")
    locked = Assistant.objects.select_for_update().get(pk=assistant.pk)
    locked.visibility = visibility
    if visibility == Visibility.PRIVATE:
        locked.share_token = locked.share_expires_at = None
    elif not locked.share_token:
        locked.share_token = _new_share_token()
    locked.save(update_fields=["visibility", "share_token", "share_expires_at", "updated_at"])
    assistant.visibility, assistant.share_token = locked.visibility, locked.share_token
    assistant.share_expires_at = locked.share_expires_at


@transaction.atomic
def assistant_delete(*, assistant: Assistant) -> None:
    """Delete the assistant with its versions and every conversation with it.

    Versions are PROTECTed against deletion while anything points at them (answers record the version
    that wrote them), so the conversations go first, then the pointer to the current version."""
    from apps.chat.models import Conversation

    Conversation.objects.filter(assistant=assistant).update(current_leaf=None, snapshot_leaf=None)
    Conversation.objects.filter(assistant=assistant).delete()
    assistant.current_version = None
    assistant.save(update_fields=["current_version"])
    assistant.delete()


def assistant_avatar_set(*, assistant: Assistant, upload) -> None:
    """Decode the upload as a raster image and store a fresh 256×256 PNG: nothing of the uploaded file
    (metadata, trailing payloads, scripts) survives re-encoding."""
    if upload.size > AVATAR_MAX_BYTES:
        raise AssistantError(f"The avatar is {upload.size // 1024} KB; the limit is {AVATAR_MAX_BYTES // 1024} KB.")
    data = upload.read()
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        if image.format not in AVATAR_FORMATS:
            raise AssistantError("The avatar must be a PNG, JPEG, WebP or GIF image.")
        image = image.convert("RGBA")
        image.thumbnail((AVATAR_SIZE, AVATAR_SIZE))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError) as error:
        raise AssistantError("That file is not an image we can read (PNG, JPEG, WebP or GIF).") from error
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    relative = f"avatars/{assistant.pk}-{secrets.token_hex(8)}.png"
    path = settings.MEDIA_ROOT / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())
    old = assistant.avatar
    assistant.avatar = relative
    assistant.save(update_fields=["avatar", "updated_at"])
    if old:
        (settings.MEDIA_ROOT / old).unlink(missing_ok=True)


@transaction.atomic
def share_link_issue(*, assistant: Assistant, expires_at: datetime | None = None) -> str:
    """A new share token; the previous link (and every visitor conversation started through it) stops
    working at once."""
    if assistant.visibility == Visibility.PRIVATE:
        raise AssistantError("A private assistant has no share link. Set its visibility to Link or Public first.")
    if expires_at is not None and expires_at <= timezone.now():
        raise AssistantError("The expiry must be in the future.")
    assistant.share_token = _new_share_token()
    assistant.share_expires_at = expires_at
    assistant.save(update_fields=["share_token", "share_expires_at", "updated_at"])
    return assistant.share_token


def _new_share_token() -> str:
    return secrets.token_urlsafe(24)


@transaction.atomic
def share_link_revoke(*, assistant: Assistant) -> None:
    assistant.share_token = None
    assistant.share_expires_at = None
    assistant.save(update_fields=["share_token", "share_expires_at", "updated_at"])


def assistant_report(*, assistant: Assistant, reporter: User, reason: str) -> AssistantReport:
    if not reason.strip():
        raise AssistantError("Say what is wrong with this assistant.")
    if assistant.owner_id == reporter.pk:
        raise AssistantError("You cannot report your own assistant.")
    try:
        with transaction.atomic():
            return AssistantReport.objects.create(assistant=assistant, reporter=reporter, reason=reason.strip()[:1000])
    except IntegrityError as error:
        raise AssistantError("You have already reported this assistant; an admin will look at it.") from error


@transaction.atomic
def assistant_set_unlisted(*, assistant: Assistant, unlisted: bool) -> None:
    assistant.unlisted = unlisted
    assistant.save(update_fields=["unlisted", "updated_at"])


@transaction.atomic
def assistant_reports_resolve(*, report_ids: list[int]) -> int:
    """Mark reports reviewed; returns how many changed."""
    return AssistantReport.objects.filter(pk__in=report_ids, resolved=False).update(resolved=True)
