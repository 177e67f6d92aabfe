"""The real thing: a Celery worker and beat, as separate processes, fetch from the simulator.

The broker is whatever CELERY_BROKER_URL says (Redis in CI, the filesystem
transport by default); the database is the test database.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from scoreboard.models import FetchAttempt, Reading
from tenants.models import Tenant
from tests.conftest import PLANTED_SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

BASE_DIR = Path(settings.BASE_DIR)
CELERY = str(Path(sys.executable).parent / "celery")


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def child_env(sim, var_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "SCOREBOARD_RETRY_BASE_SECONDS")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="scoreboard.settings",
        DEBUG="false",
        SECRET_KEY=os.environ["SECRET_KEY"],
        SCOREBOARD_ENCRYPTION_KEYS=",".join(settings.SCOREBOARD_ENCRYPTION_KEYS),
        DATABASE_URL=database_url(),
        SCOREBOARD_SIMULATOR_URL=sim.url,
        SCOREBOARD_CA_BUNDLE=str(sim.cert_path),
        SCOREBOARD_VAR_DIR=str(var_dir),
        SCOREBOARD_DISPATCH_INTERVAL_SECONDS="1",
        SCOREBOARD_RETRY_BASE_SECONDS="1",
    )
    return env


class Processes:
    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [CELERY, "-A", "scoreboard", *args],
            cwd=BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append((name, process))

    def output(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + (self.logs / f"{name}.log").read_text()[-3000:]
            for name, _ in self.running
        )

    def stop(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def celery_processes(sim, tmp_path) -> Iterator[Processes]:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    env = child_env(sim, var_dir)
    # Tasks left in a shared broker by an earlier run would only add noise.
    subprocess.run(
        [CELERY, "-A", "scoreboard", "purge", "-f"],
        cwd=BASE_DIR,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    processes = Processes(env, tmp_path)
    try:
        yield processes
    finally:
        processes.stop()
        connection.close()


def wait_for(condition, *, timeout: float, processes: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s\n{processes.output()}")


def test_worker_and_beat_fetch_scores_and_record_a_wrong_secret(celery_processes, make_tenant):
    good = make_tenant(name="Good Co")
    other = make_tenant(name="Other Co")
    wrong = make_tenant(name="Wrong Secret Co", client_secret=PLANTED_SECRET)

    celery_processes.start("worker", "worker", "-l", "info", "-c", "2", "--without-mingle")
    celery_processes.start("beat", "beat", "-l", "info")

    def settled() -> bool:
        return (
            Reading.objects.filter(tenant__in=[good, other]).count() == 2
            and Tenant.objects.get(pk=wrong.pk).consecutive_failures > 0
        )

    wait_for(settled, timeout=90, processes=celery_processes)

    for tenant in (good, other):
        reading = Reading.objects.get(tenant=tenant)
        assert reading.attempt.status == FetchAttempt.Status.OK
        assert reading.attempt.trigger == FetchAttempt.Trigger.SCHEDULE
        tenant.refresh_from_db()
        assert tenant.last_score == reading.value
        assert tenant.next_fetch_at > reading.fetched_at
    wrong.refresh_from_db()
    assert wrong.last_error_kind == "auth"
    assert "the client secret is invalid" in wrong.last_error
    assert not Reading.objects.filter(tenant=wrong).exists()
    logs = celery_processes.output()
    assert PLANTED_SECRET not in logs
    assert "Traceback" not in logs
