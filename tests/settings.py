"""Settings for the test suite: the project's settings with test values filled in.

DATABASE_URL and CELERY_BROKER_URL still come from the environment, so the
same suite runs on SQLite + the filesystem broker and on PostgreSQL + Redis.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-that-is-long-enough-for-the-check-0123")
# A fixed key so a test can encrypt with it and a child process can decrypt.
os.environ.setdefault("SCOREBOARD_ENCRYPTION_KEYS", "Z5w0E2o7m6xJY6h1a5X7Kt4Q3QO2kI6g1m1bW4zS0dA=")
os.environ.setdefault("SCOREBOARD_RETRY_BASE_SECONDS", "0.2")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")

from scoreboard.settings import *  # noqa: F403
from scoreboard.settings import STORAGES

# Tests render pages without running collectstatic first.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Unit tests run tasks in-process; the end-to-end tests start real workers.
CELERY_TASK_ALWAYS_EAGER = True
# Threads of the live server close their connection after each request, so the
# test database can be dropped at the end.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
