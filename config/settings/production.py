"""Production (docker-compose): every secret from the env, HTTPS-aware cookies, hashed static files."""

from .base import *  # noqa: F403
from .base import BASE_DIR, env

SECRET_KEY = env("DJANGO_SECRET_KEY")  # required: fail at start-up rather than run with a weak key
DEBUG = False
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
