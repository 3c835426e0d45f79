"""docker-compose.yml can't run here (no Docker engine), so check its shape: it parses and is complete."""

import yaml

from tests.conftest import REPO_ROOT


def _compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_names_the_production_services():
    services = _compose()["services"]
    assert {"postgres", "redis", "web", "worker", "chat-worker", "inference"} <= set(services)
    assert "chat" in services["chat-worker"]["command"] and "threads" in services["chat-worker"]["command"]
    assert services["postgres"]["image"] == "pgvector/pgvector:pg16"
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis", "web", "worker", "chat-worker", "inference"):
        assert "healthcheck" in services[name], name


def test_gpu_profile_adds_a_finetune_worker_and_cuda_inference():
    services = _compose()["services"]
    gpu = {name: spec for name, spec in services.items() if "gpu" in spec.get("profiles", [])}
    assert {"gpu-worker", "inference-gpu"} <= set(gpu)
    assert "finetune" in gpu["gpu-worker"]["command"]
    for spec in gpu.values():
        assert spec["environment"]["ATELIER_DEVICE"] == "cuda"
        assert spec["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_app_services_are_configured_through_env_and_share_model_volumes():
    compose = _compose()
    web = compose["services"]["web"]
    assert web["environment"]["DATABASE_URL"].startswith("postgres://")
    assert web["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert "models:/var/lib/atelier/models" in web["volumes"]
    assert set(compose["volumes"]) >= {"postgres", "redis", "models"}
    assert (REPO_ROOT / "Dockerfile").read_text().count("FROM ") == 1
