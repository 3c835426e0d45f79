"""pytest: the same real services as production (Postgres+pgvector, Redis, a Celery worker process).

The test run keeps its state in its own var dir (var/test; tests/conftest.py starts its services) and shares only the
exported model artifacts with `make run`, since exporting them takes minutes.
"""

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent.parent
# Before importing base: it derives the embedded services' sockets from the var dir.
os.environ.setdefault("ATELIER_VAR_DIR", str(_REPO / "var" / "test"))
os.environ.setdefault("ATELIER_MODELS_DIR", str(_REPO / "var" / "models"))

from .base import *  # noqa: E402, F403

SECRET_KEY = "test-only-secret-key-not-for-production"  # noqa: S105
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed; never used outside tests
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
