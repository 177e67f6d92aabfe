"""The Celery app. Beat has one entry: the dispatcher, every minute."""

import os

from celery import Celery
from celery.signals import beat_init
from django.conf import settings

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
            # A dispatch still queued when the next one is due is superseded by it.
            "options": {"expires": max(1.0, interval - 5)},
        },
        "prune-fetch-attempts": {
            "task": "scoreboard.tasks.prune_fetch_attempts",
            "schedule": 24 * 3600.0,
            "options": {"expires": 3600.0},
        },
    }
    # kombu's filesystem transport needs its folders to exist before anyone starts.
    for folder in ("data_folder_in", "processed_folder"):
        path = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get(folder)
        if path:
            os.makedirs(path, exist_ok=True)


@beat_init.connect
def _dispatch_at_start(sender, **kwargs) -> None:
    # Beat's first interval would otherwise pass before anything is fetched; the
    # compare-and-swap claim makes an extra dispatch harmless.
    app.send_task("scoreboard.tasks.dispatch_due_fetches")
