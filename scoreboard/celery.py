"""The Celery app. Beat has one entry: the dispatcher, every minute."""

import logging
import os

from celery import Celery
from celery.signals import beat_init
from django.conf import settings
from kombu import Connection

log = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scoreboard.settings")

app = Celery("scoreboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["scoreboard"])


@app.on_after_configure.connect
def _schedule_dispatcher(sender: Celery, **kwargs) -> None:
    interval = settings.SCOREBOARD_DISPATCH_INTERVAL_SECONDS
    sender.conf.beat_schedule = {
        "dispatch-due-fetches": {
            "task": "scoreboard.tasks.dispatch_due_fetches",
            "schedule": interval,
            # A dispatch still queued when the next one is due is superseded by it. The
            # floor leaves a broker's delivery time (the filesystem one polls each second).
            "options": {"expires": max(1.0, interval - 5)},
        },
        "prune-fetch-attempts": {
            "task": "scoreboard.tasks.prune_fetch_attempts",
            "schedule": 24 * 3600.0,
            "options": {"expires": 3600.0},
        },
        # Keeps the fleet chart's closed days computed, so no page view has to.
        "refresh-fleet-days": {
            "task": "scoreboard.tasks.refresh_fleet_days",
            "schedule": 3600.0,
            "options": {"expires": 3000.0},
        },
    }
    # kombu's filesystem transport needs its folders to exist before anyone starts.
    for folder in ("data_folder_in", "processed_folder", "control_folder"):
        path = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(folder)
        if path:
            os.makedirs(path, exist_ok=True)


@beat_init.connect
def _dispatch_at_start(sender, **kwargs) -> None:
    # Beat's first interval would otherwise pass before anything is fetched; the
    # claim (a locked tenant is skipped, a claimed one is no longer due) makes an
    # extra dispatch harmless.
    app.send_task("scoreboard.tasks.dispatch_due_fetches")


def broker_status(*, timeout: float) -> str:
    """Return "ok", or why the broker cannot take tasks, within about `timeout` seconds.

    /healthz shows the answer to anyone, so it never holds the broker's password.
    """
    url = settings.CELERY_BROKER_URL
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    if url.startswith("filesystem://"):
        folder = options["data_folder_in"]
        if not os.path.isdir(folder):
            log.warning("broker queue folder %s does not exist", folder)
            return "unreachable: the queue folder (SCOREBOARD_VAR_DIR/broker/queue) is missing"
        if not os.access(folder, os.W_OK | os.X_OK):
            log.warning("broker queue folder %s is not writable", folder)
            return "unreachable: the queue folder (SCOREBOARD_VAR_DIR/broker/queue) is not writable"
        return "ok"
    short = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    try:
        with Connection(
            url, connect_timeout=timeout, transport_options={**options, **short}
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as error:  # whatever stops a connection, the broker cannot take tasks
        log.warning("broker unreachable: %s", error)
        said = " ".join(str(error).split()) or type(error).__name__
        password = Connection(url).password
        if password:
            said = said.replace(password, "***")
        return f"unreachable: {said[:200]}"
    return "ok"
