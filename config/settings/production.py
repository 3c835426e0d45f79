"""Production (docker-compose): every secret from the env, HTTPS behind a TLS proxy, hashed static files.

`python manage.py check --deploy` reports nothing with these settings. One check is silenced:
security.W021 (HSTS preload). Preloading puts the domain in the browsers' built-in HTTPS-only list, a decision
for whoever owns the domain (and made at hstspreload.org, not by a header flag), so the app does not make it.
"""

from .base import *  # noqa: F403
from .base import BASE_DIR, env

SECRET_KEY = env("DJANGO_SECRET_KEY")  # required: fail at start-up rather than run with a weak key
DEBUG = False

# The site is served over HTTPS by a proxy in front (it sets X-Forwarded-Proto). DJANGO_HTTPS=false is for a
# closed network without TLS; `check --deploy` then warns, rightly.
HTTPS = env.bool("DJANGO_HTTPS", default=True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_SSL_REDIRECT = HTTPS
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # the container's health check calls it over plain HTTP
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=365 * 24 * 3600) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = True  # Atelier's own host name's subdomains, not its parent domain's
SILENCED_SYSTEM_CHECKS = ["security.W021"]  # HSTS preload: see the module docstring

STATIC_ROOT = BASE_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = False
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
