"""Settings shared by every environment. Everything a deployment changes comes from env vars."""

from pathlib import Path

import environ
from csp.constants import NONCE, NONE, SELF

from config import embedded

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()

VAR_DIR = embedded.var_dir()
MODELS_DIR = Path(env("ATELIER_MODELS_DIR", default=str(VAR_DIR / "models"))).resolve()
MEDIA_ROOT = Path(env("ATELIER_MEDIA_DIR", default=str(VAR_DIR / "media"))).resolve()

SECRET_KEY = env("DJANGO_SECRET_KEY", default="")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "csp",
    "apps.core",
    "apps.accounts",
    "apps.registry",
    "apps.knowledge",
    "apps.assistants",
    "apps.chat",
    "apps.api",
    "apps.arena",
    "apps.labeling",
    "apps.finetune",
    "apps.loop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "apps.core.middleware.SameOriginNullOriginMiddleware",  # form posts under Referrer-Policy: no-referrer
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Data stores: embedded unless the env names external ones -----------------------------------
if "DATABASE_URL" in env:
    DATABASES = {"default": env.db_url("DATABASE_URL")}
else:  # the embedded server listens on a unix socket in its data directory
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": embedded.DATABASE_NAME,
            "USER": "postgres",
            "HOST": str(embedded.postgres_dir()),
        }
    }
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default=embedded.redis_url())
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}


def _celery_url(url: str) -> str:
    # redis-py spells a socket "unix://"; kombu and Celery's backend spell it "redis+socket://".
    return url.replace("unix://", "redis+socket://", 1) if url.startswith("unix://") else url


CELERY_BROKER_URL = _celery_url(env("CELERY_BROKER_URL", default=REDIS_URL))
CELERY_RESULT_BACKEND = _celery_url(env("CELERY_RESULT_BACKEND", default=REDIS_URL))
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True  # a killed worker's task goes back to the queue instead of vanishing
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # long jobs (ingestion, fine-tunes) must not hoard tasks
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Answers and titles stream on the `chat` queue (a threaded worker); everything else defaults to `default`.
CELERY_TASK_ROUTES = {
    "chat.reply_generate": {"queue": "chat"},
    "chat.conversation_title": {"queue": "chat"},
    "knowledge.document_ingest": {"queue": "ingest"},  # one task per document version (apps/knowledge/services.py)
    "finetune.job_run": {"queue": "finetune"},  # one task per job, on a worker of concurrency 1 (apps/finetune/jobs.py)
    "finetune.evaluation_run": {"queue": "finetune"},  # base vs fine-tuned: loads the model in torch
}
# Periodic tasks, sent by one `celery beat` process (make run starts it; compose has a `beat` service).
CELERY_BEAT_SCHEDULE = {
    "chat-replies-fail-abandoned": {"task": "chat.replies_fail_abandoned", "schedule": 30.0},
    "arena-answers-fail-abandoned": {"task": "arena.battle_answers_fail_abandoned", "schedule": 30.0},
    "knowledge-versions-fail-stale": {"task": "knowledge.versions_fail_stale", "schedule": 60.0},
    "finetune-jobs-fail-stale": {"task": "finetune.jobs_fail_stale", "schedule": 60.0},
}

# --- Inference engine (a separate process; see inference/) ---------------------------------------
INFERENCE_URL = env("INFERENCE_URL", default="http://127.0.0.1:8001")
INFERENCE_API_KEY = env("INFERENCE_API_KEY", default="")

# --- Chat ----------------------------------------------------------------------------------------
# Share-link visitors may chat without an account; their messages are rate-limited per IP address.
ATELIER_ANONYMOUS_SHARING = env.bool("ATELIER_ANONYMOUS_SHARING", default=True)
ATELIER_ANONYMOUS_MESSAGES_PER_HOUR = env.int("ATELIER_ANONYMOUS_MESSAGES_PER_HOUR", default=30)
# An answer that saved nothing for this long lost its worker; it is marked failed and can be retried.
CHAT_ANSWER_ABANDONED_AFTER_SECONDS = env.int("CHAT_ANSWER_ABANDONED_AFTER_SECONDS", default=150)

# --- Arena ---------------------------------------------------------------------------------------
ARENA_VOTES_PER_DAY = env.int("ARENA_VOTES_PER_DAY", default=200)  # votes over it are kept but not rated
ARENA_MIN_VOTES = env.int("ARENA_MIN_VOTES", default=10)  # before a version is ranked
ARENA_BT_L2 = env.float("ARENA_BT_L2", default=0.5)  # Bradley–Terry's weak prior (apps.arena.ratings)
ARENA_BOOTSTRAP_ROUNDS = env.int("ARENA_BOOTSTRAP_ROUNDS", default=1000)
ARENA_REFRESH_DELAY_SECONDS = env.float("ARENA_REFRESH_DELAY_SECONDS", default=2.0)  # votes batched per refit
ARENA_REFRESH_LOCK_SECONDS = 120  # a lost refresh task frees its board after this
ARENA_OUTLIER_MIN_VOTES = env.int("ARENA_OUTLIER_MIN_VOTES", default=10)
ARENA_OUTLIER_ALPHA = env.float("ARENA_OUTLIER_ALPHA", default=0.001)

# --- Knowledge -----------------------------------------------------------------------------------
KNOWLEDGE_MAX_UPLOAD_MB = env.int("KNOWLEDGE_MAX_UPLOAD_MB", default=50)
# An ingestion whose worker saved no progress for this long lost its worker; it is marked failed, retryable.
KNOWLEDGE_INGEST_STALE_SECONDS = env.int("KNOWLEDGE_INGEST_STALE_SECONDS", default=300)
# Fair queueing: at most this many of one person's documents are sent to the `ingest` queue at a time.
KNOWLEDGE_INGEST_PER_USER = env.int("KNOWLEDGE_INGEST_PER_USER", default=2)
# A sent ingestion task that no worker took for this long was lost: it is sent again, up to DISPATCH_MAX
# times in all, then the version fails as retryable.
KNOWLEDGE_INGEST_QUEUED_STALE_SECONDS = env.int("KNOWLEDGE_INGEST_QUEUED_STALE_SECONDS", default=1800)
KNOWLEDGE_INGEST_DISPATCH_MAX = env.int("KNOWLEDGE_INGEST_DISPATCH_MAX", default=3)

# --- Fine-tuning datasets ------------------------------------------------------------------------
FINETUNE_MAX_UPLOAD_MB = env.int("FINETUNE_MAX_UPLOAD_MB", default=50)

# --- Fine-tuning: adapters ----------------------------------------------------------------------
# Every adapter's folder (adapter_model.safetensors + adapter_config.json), trained or uploaded: the engine
# loads them from here, so it must see the same path (compose puts it on the models volume).
FINETUNE_ADAPTERS_DIR = Path(env("FINETUNE_ADAPTERS_DIR", default=str(VAR_DIR / "adapters"))).resolve()
FINETUNE_ADAPTER_MAX_MB = env.int("FINETUNE_ADAPTER_MAX_MB", default=200)  # an uploaded adapter's weights
# The engine's INFERENCE_LORA_MAX_RANK: an upload of a higher rank would be refused when it is loaded.
FINETUNE_ADAPTER_MAX_RANK = env.int("INFERENCE_LORA_MAX_RANK", default=16)
# An evaluation whose worker said nothing for this long is given up when the owner asks for a new one.
FINETUNE_EVALUATION_STALE_SECONDS = env.int("FINETUNE_EVALUATION_STALE_SECONDS", default=900)

# --- Fine-tuning: jobs (apps/finetune/jobs.py) -------------------------------------------------------
# Checkpoints (a retry resumes from them, so they must outlive a worker's container) and the per-host lock.
FINETUNE_DIR = Path(env("ATELIER_FINETUNE_DIR", default=str(VAR_DIR / "finetune"))).resolve()
# A running job whose worker saved no progress for this long lost its worker: failed, retryable from its
# checkpoint. A step of SmolLM2 on 2 CPU cores takes seconds and every cancel check is a heartbeat too.
FINETUNE_STALE_SECONDS = env.int("FINETUNE_STALE_SECONDS", default=300)
# A queued job that no worker took for this long while none was training lost its queue message.
FINETUNE_QUEUED_LOST_SECONDS = env.int("FINETUNE_QUEUED_LOST_SECONDS", default=600)
# How often a training worker reads the cancel flag (and beats): one small query per interval.
FINETUNE_CANCEL_CHECK_SECONDS = env.float("FINETUNE_CANCEL_CHECK_SECONDS", default=2.0)
# A job that finds its machine already training waits this long before trying again.
FINETUNE_BUSY_RETRY_SECONDS = env.int("FINETUNE_BUSY_RETRY_SECONDS", default=30)
# torch's intra-op threads in the fine-tune worker; 0 leaves torch's default (one per core).
FINETUNE_TORCH_THREADS = env.int("FINETUNE_TORCH_THREADS", default=0)

# --- Accounts ------------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
EMAIL_BACKEND = env("DJANGO_EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="atelier@localhost")

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = None  # whitenoise serves straight from the finders; production collects (production.py)
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "media/"

# --- Untrusted text (model output, documents): see apps/core/rendering.py ---------------------------
# Links per rendered answer; the rest stay text. Enough for a list of sources, too few to hide one among many.
ATELIER_RENDER_MAX_LINKS = env.int("ATELIER_RENDER_MAX_LINKS", default=25)

# --- Security headers and cookies ---------------------------------------------------------------------
# The Content-Security-Policy (django-csp) is the backstop if untrusted text ever got past the renderer:
# nothing loads from or connects to another origin, no inline script runs without the per-request nonce (no
# page uses one today; `nonce="{{ request.csp_nonce }}"` is the one way to add an inline script), no inline
# style or style attribute applies, and the site cannot be framed. Every page, Django's admin included, works
# under it: tests/test_browser_flow.py walks them in Chromium and fails on any violation.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "frame-src": [NONE],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
SECURE_REFERRER_POLICY = "no-referrer"  # links out of the site leak nothing, not even the origin
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"  # Strict would sign out a visitor arriving by a share link from elsewhere
CSRF_COOKIE_HTTPONLY = True  # scripts take the token from the page, never from the cookie
CSRF_COOKIE_SAMESITE = "Lax"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "pgserver": {"level": "WARNING"}},
}
