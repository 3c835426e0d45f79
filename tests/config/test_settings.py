"""Settings come from the environment; with nothing set, they point at the embedded services."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

PROBE = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "db": [db["ENGINE"], db["NAME"], db["HOST"], str(db["PORT"]), db["USER"]],
    "broker": settings.CELERY_BROKER_URL,
    "backend": settings.CELERY_RESULT_BACKEND,
    "cache": settings.CACHES["default"]["LOCATION"],
    "hosts": settings.ALLOWED_HOSTS,
    "models_dir": str(settings.MODELS_DIR),
    "inference": settings.INFERENCE_URL,
    "debug": settings.DEBUG,
}))
"""


def _settings(module: str, **env: str) -> subprocess.CompletedProcess:
    inherited = {"DATABASE_URL", "REDIS_URL", "ATELIER_VAR_DIR", "ATELIER_MODELS_DIR"}
    clean = {key: value for key, value in os.environ.items() if key not in inherited}
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup();" + PROBE],
        env={**clean, "DJANGO_SETTINGS_MODULE": module, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_external_services_come_from_env_vars():
    result = _settings(
        "config.settings.local",
        DATABASE_URL="postgres://atelier:s3cret@db.internal:5433/atelier_prod",
        REDIS_URL="redis://cache.internal:6380/2",
        DJANGO_ALLOWED_HOSTS="atelier.example.com,localhost",
        ATELIER_MODELS_DIR="/srv/models",
        INFERENCE_URL="http://gpu-1:8001",
        ATELIER_VAR_DIR="/tmp/atelier-settings-test",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["db"] == ["django.db.backends.postgresql", "atelier_prod", "db.internal", "5433", "atelier"]
    assert values["broker"] == values["backend"] == "redis://cache.internal:6380/2"
    assert values["cache"] == "redis://cache.internal:6380/2"
    assert values["hosts"] == ["atelier.example.com", "localhost"]
    assert values["models_dir"] == "/srv/models"
    assert values["inference"] == "http://gpu-1:8001"
    assert values["debug"] is False


def test_without_env_the_embedded_services_are_used(tmp_path):
    result = _settings("config.settings.local", ATELIER_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["db"][1:3] == ["atelier", str(tmp_path / "postgres")]  # a unix socket, no TCP port
    assert values["broker"] == f"redis+socket://{tmp_path}/redis/redis.sock?db=0"
    assert values["cache"] == f"unix://{tmp_path}/redis/redis.sock?db=0"
    assert values["models_dir"] == str(tmp_path / "models")


def test_production_refuses_to_start_without_a_secret_key():
    result = _settings(
        "config.settings.production", DATABASE_URL="postgres://a:b@db:5432/x", REDIS_URL="redis://r:6379/0"
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_production_settings_pass_the_deployment_checks(tmp_path):
    """`check --deploy` reports nothing (the one silenced check, HSTS preload, is explained in production.py)."""
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": "k" * 20 + "production-like-secret-key-with-enough-entropy-0123456789",
        "DATABASE_URL": "postgres://a:b@db:5432/x",
        "REDIS_URL": "redis://r:6379/0",
        "ATELIER_VAR_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (1 silenced)" in result.stdout
