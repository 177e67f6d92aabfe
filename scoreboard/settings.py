"""Scoreboard settings: every knob comes from the environment (or `.env`).

The table of variables lives in README.md and `.env.example`; keep all three in step.
"""

from pathlib import Path

import environ
from cryptography.fernet import Fernet
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env", overwrite=False)

# Runtime files: the SQLite database, the filesystem broker, beat's state.
VAR_DIR = Path(env.str("SCOREBOARD_VAR_DIR", default=str(BASE_DIR / "var")))

DEBUG = env.bool("DEBUG", default=False)

# A placeholder key is refused outside DEBUG: sessions and password reset tokens
# are signed with it.
_PLACEHOLDER_SECRET_KEYS = {"", "change-me", "changeme", "insecure", "secret"}
SECRET_KEY = env.str("SECRET_KEY", default="")
if SECRET_KEY.strip().lower() in _PLACEHOLDER_SECRET_KEYS or len(SECRET_KEY) < 32:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is missing or a placeholder (it must be at least 32 random characters). "
            "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))' "
            "and put SECRET_KEY=<it> in the environment or in .env."
        )
    SECRET_KEY = SECRET_KEY or "insecure-development-key-only-for-debug-mode-0123456789"

# Outside DEBUG the host names are required: a default would either refuse the
# real name or, worse, accept a Host header the operator never meant to serve.
ALLOWED_HOSTS = [host.strip() for host in env.list("ALLOWED_HOSTS", default=[]) if host.strip()]
if not ALLOWED_HOSTS:
    if not DEBUG:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS is not set. With DEBUG off it must name the host names the site is "
            "served under, comma-separated, e.g. ALLOWED_HOSTS=scoreboard.example.com "
            "(for a local install: ALLOWED_HOSTS=localhost,127.0.0.1). Put it in the "
            "environment or in .env."
        )
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])


def _encryption_keys(raw: str) -> list[str]:
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    if not keys:
        raise ImproperlyConfigured(
            "SCOREBOARD_ENCRYPTION_KEYS is not set. Tenant secrets are encrypted with it. "
            "Generate a key with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())' and set SCOREBOARD_ENCRYPTION_KEYS=<key> "
            "(comma-separated, newest first, when rotating). Keep it safe: without it the "
            "stored secrets cannot be read."
        )
    for position, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ImproperlyConfigured(
                f"SCOREBOARD_ENCRYPTION_KEYS: key number {position} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes, 44 characters). Generate one with: "
                "python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from None
    return keys


SCOREBOARD_ENCRYPTION_KEYS = _encryption_keys(env.str("SCOREBOARD_ENCRYPTION_KEYS", default=""))

# Outbound TLS: an extra CA file trusted on top of the public ones (TLS-inspecting
# proxies, the simulator's self-signed certificate).
SCOREBOARD_CA_BUNDLE = env.str("SCOREBOARD_CA_BUNDLE", default="")
# The simulator cloud exists only when the operator sets this.
SCOREBOARD_SIMULATOR_URL = env.str("SCOREBOARD_SIMULATOR_URL", default="").rstrip("/")
if SCOREBOARD_SIMULATOR_URL and not SCOREBOARD_SIMULATOR_URL.startswith("https://"):
    raise ImproperlyConfigured(
        f"SCOREBOARD_SIMULATOR_URL={SCOREBOARD_SIMULATOR_URL!r} must start with https:// "
        "(the sign-in library refuses plain HTTP)."
    )

# Fetch behaviour.
SCOREBOARD_HTTP_CONNECT_TIMEOUT = env.float("SCOREBOARD_HTTP_CONNECT_TIMEOUT", default=5.0)
SCOREBOARD_HTTP_READ_TIMEOUT = env.float("SCOREBOARD_HTTP_READ_TIMEOUT", default=20.0)
SCOREBOARD_FETCH_MAX_TRIES = env.int("SCOREBOARD_FETCH_MAX_TRIES", default=4)
SCOREBOARD_MAX_RETRY_AFTER = env.int("SCOREBOARD_MAX_RETRY_AFTER", default=600)
SCOREBOARD_RETRY_BASE_SECONDS = env.float("SCOREBOARD_RETRY_BASE_SECONDS", default=30.0)
# An attempt no worker has started after this long is enqueued again (the broker
# may have lost it), and after the expiry it is closed as failed.
SCOREBOARD_ATTEMPT_REQUEUE_MINUTES = env.int("SCOREBOARD_ATTEMPT_REQUEUE_MINUTES", default=10)
SCOREBOARD_ATTEMPT_EXPIRY_MINUTES = env.int("SCOREBOARD_ATTEMPT_EXPIRY_MINUTES", default=60)
# Fetch attempts (the log of tries) are pruned after this many days; readings never are.
SCOREBOARD_ATTEMPT_RETENTION_DAYS = env.int("SCOREBOARD_ATTEMPT_RETENTION_DAYS", default=90)
if SCOREBOARD_ATTEMPT_RETENTION_DAYS < 1:
    raise ImproperlyConfigured("SCOREBOARD_ATTEMPT_RETENTION_DAYS must be 1 or more.")
if SCOREBOARD_FETCH_MAX_TRIES < 1:
    raise ImproperlyConfigured("SCOREBOARD_FETCH_MAX_TRIES must be 1 or more.")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "csp",
    "tenants",
    "scoreboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "scoreboard.urls"
WSGI_APPLICATION = "scoreboard.wsgi.application"

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

# An empty DATABASE_URL (a blank line in .env) means the embedded SQLite default.
_database_url = env.str("DATABASE_URL", default="").strip()
DATABASES = {
    "default": env.db_url_config(_database_url or f"sqlite:///{VAR_DIR / 'scoreboard.sqlite3'}")
}
# The rollup triggers exist for these two (scoreboard/migrations/0003, 0006).
if DATABASES["default"].get("ENGINE") not in (
    "django.db.backends.postgresql",
    "django.db.backends.sqlite3",
):
    scheme = _database_url.partition("://")[0][:20]
    raise ImproperlyConfigured(
        f"DATABASE_URL starts with {scheme!r}: Scoreboard runs on PostgreSQL or SQLite. Fix: use "
        "postgres://USER:PASSWORD@HOST:5432/NAME, or sqlite:////absolute/path.sqlite3, "
        "or leave it unset for the embedded SQLite database."
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A fresh clone has no var/ yet; SQLite creates the file but not its folder.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The web, the worker and beat share one file: WAL lets readers run beside a
    # writer, and IMMEDIATE transactions take the write lock up front, so
    # writers queue on the busy timeout instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # libpq waits for ever by default: an unreachable server would hang /healthz and the
    # workers instead of failing. A `connect_timeout` in DATABASE_URL wins.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # PostgreSQL's JIT compiles a query when its estimated cost is high; for the pages'
    # queries, whose estimates run far above what they read, compiling took 350 ms of
    # a 10 ms query (docs/benchmarks.md). Options in DATABASE_URL win.
    DATABASES["default"]["OPTIONS"].setdefault("options", "-c jit=off")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

# HTTPS hardening is opt-in: `make run` serves plain HTTP on localhost, and only the
# operator knows whether TLS ends at a proxy in front. The production .env.example
# turns it on, and `manage.py check --deploy` warns while it is off.
SCOREBOARD_HTTPS = env.bool("SCOREBOARD_HTTPS", default=False)
SESSION_COOKIE_SECURE = SCOREBOARD_HTTPS
CSRF_COOKIE_SECURE = SCOREBOARD_HTTPS
SECURE_SSL_REDIRECT = SCOREBOARD_HTTPS
# Load balancers and the container health check probe over plain HTTP; the answer
# holds no secret, so it needs no redirect.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = 31536000 if SCOREBOARD_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SCOREBOARD_HTTPS
SECURE_HSTS_PRELOAD = SCOREBOARD_HTTPS
if env.bool("SCOREBOARD_BEHIND_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_HTTPONLY = True
# Sessions end after this many hours, signed in or not; a browser left open on a
# shared screen does not stay logged in for Django's default two weeks.
SESSION_COOKIE_AGE = int(env.float("SCOREBOARD_SESSION_HOURS", default=12) * 3600)
# Where admin lives; move it off the well-known /admin/ if you like.
SCOREBOARD_ADMIN_PATH = env.str("SCOREBOARD_ADMIN_PATH", default="admin/").strip("/") + "/"
if SCOREBOARD_ADMIN_PATH == "/":
    raise ImproperlyConfigured("SCOREBOARD_ADMIN_PATH must not be empty (default: admin/).")
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Scripts and styles come from our own static files only: no inline script, so
# an injected <script> in a tenant name could not run even if it reached a page.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Celery. The default broker is kombu's filesystem transport under var/broker/,
# so the demo needs nothing but Python; production points this at Redis.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
BROKER_DIR = VAR_DIR / "broker"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Fetch tasks are idempotent (one reading per attempt, enforced by the database),
# so a task lost with its worker, or with the worker's broker connection, may
# safely run again: it is acknowledged only once it has run.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# How long the worker waits for a pool process that died to report back before
# it redelivers that process's task (Celery's default is 10 s).
CELERY_WORKER_LOST_WAIT = env.float("CELERY_WORKER_LOST_WAIT", default=10.0)
# A fetch makes at most five calls (sign-in discovery, token, score, and after a 401
# a fresh token and the score again; see scoreboard.defender), each bounded by the
# connect and read timeouts. The soft limit leaves room for all five.
CELERY_TASK_SOFT_TIME_LIMIT = int(
    5 * (SCOREBOARD_HTTP_CONNECT_TIMEOUT + SCOREBOARD_HTTP_READ_TIMEOUT) + 30
)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 30
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
SCOREBOARD_DISPATCH_INTERVAL_SECONDS = env.float(
    "SCOREBOARD_DISPATCH_INTERVAL_SECONDS", default=60.0
)
if SCOREBOARD_DISPATCH_INTERVAL_SECONDS <= 0:
    raise ImproperlyConfigured("SCOREBOARD_DISPATCH_INTERVAL_SECONDS must be more than 0.")
# /healthz answers 503 when no dispatcher run finished for this long: beat, every
# worker or the broker is down, or the workers are too far behind to dispatch.
SCOREBOARD_DISPATCH_STALE_AFTER_SECONDS = max(300.0, 5 * SCOREBOARD_DISPATCH_INTERVAL_SECONDS)


def longest_retry_countdown(*, max_tries: int, base_seconds: float, max_retry_after: int) -> float:
    """The longest countdown scoreboard.fetching.retry_delay can give a fetch retry."""
    if max_tries < 2:
        return 0.0
    # Throttling waits at most max_retry_after plus 5 s of jitter; the backoff doubles
    # from base_seconds for each try before the last, plus up to 25% jitter.
    return max(max_retry_after + 5.0, base_seconds * 2 ** (max_tries - 2) * 1.25)


if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "store_processed": False,
        # Broadcast state (worker pings, purge); kombu puts it in the working
        # folder otherwise.
        "control_folder": str(BROKER_DIR / "control"),
    }
else:
    # Redis hands a message that was delivered but not acknowledged to another worker
    # after the visibility timeout. A retry sits unacknowledged in a worker for its
    # countdown, may then wait for a busy process to finish a task, and is acknowledged
    # only once it has run (acks late). The timeout outlasts all three, or a second
    # worker would run the same retry while the first still holds it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(
            longest_retry_countdown(
                max_tries=SCOREBOARD_FETCH_MAX_TRIES,
                base_seconds=SCOREBOARD_RETRY_BASE_SECONDS,
                max_retry_after=SCOREBOARD_MAX_RETRY_AFTER,
            )
            + 2 * CELERY_TASK_TIME_LIMIT
            + 300
        )
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # msal logs request details at DEBUG; keep it quiet whatever LOG_LEVEL says.
        "msal": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}
