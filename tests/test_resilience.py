"""Failures on both sides, against real worker and beat processes and the simulator.

Each test checks the outcome a user relies on: a clear status, a bounded
retry, no reading lost and none duplicated, and other tenants unaffected.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise

import pytest
from django.db import connection
from django.utils import timezone

from scoreboard.models import FetchAttempt, Reading
from tenants.models import Tenant
from tests.processes import Processes, child_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FAST = {
    "CELERY_WORKER_LOST_WAIT": "1",
    "SCOREBOARD_FETCH_MAX_TRIES": "3",
    "SCOREBOARD_HTTP_CONNECT_TIMEOUT": "1",
    "SCOREBOARD_HTTP_READ_TIMEOUT": "1",
}


@pytest.fixture
def processes(sim, tmp_path) -> Iterator[Processes]:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    running = Processes(child_env(sim, var_dir, **FAST), tmp_path)
    running.purge()
    try:
        yield running
    finally:
        running.stop()
        connection.close()


def finished(tenants) -> bool:
    open_or_missing = [
        t
        for t in tenants
        if not FetchAttempt.objects.filter(tenant=t, status__in=["ok", "failed"]).exists()
    ]
    return not open_or_missing


def only_attempt(tenant) -> FetchAttempt:
    attempts = list(FetchAttempt.objects.filter(tenant=tenant))
    assert len(attempts) == 1, f"{tenant.name}: {len(attempts)} attempts"
    return attempts[0]


def gaps(sim, tenant) -> list[float]:
    times = sim.stats()[str(tenant.tenant_id)]["score_times"]
    return [later - earlier for earlier, later in pairwise(times)]


def test_every_fault_ends_in_its_outcome_and_spares_the_other_tenants(sim, make_tenant, processes):
    faults = {
        "healthy-a": None,
        "healthy-b": None,
        "throttled-once": ("throttle", {"retry_after": 2, "count": 1}),
        "error-500-twice": ("error_500", {"count": 2}),
        "error-503-always": ("error_503", {}),
        "reset-once": ("reset", {"count": 1}),
        "slow-once": ("slow", {"delay": 2, "count": 1}),
        "token-revoked": ("unauthorized", {"count": 1}),
        "wrong-secret": ("invalid_secret", {}),
        "no-permission": ("forbidden", {}),
        "no-licence": ("disabled_feature", {}),
        "html-page": ("html", {}),
        "null-score": ("null_score", {}),
        "far-future": ("future_time", {}),
    }
    tenants = {}
    for slug, fault in faults.items():
        tenant = make_tenant(name=slug.replace("-", " ").title(), slug=slug)
        tenants[slug] = tenant
        if fault:
            kind, options = fault
            sim.set_fault(str(tenant.tenant_id), kind, **options)

    processes.worker(concurrency=4)
    # Two beats by mistake: the claim still makes one attempt per due time.
    processes.beat("beat-1")
    processes.beat("beat-2")
    wait_for(
        lambda: finished(tenants.values()),
        timeout=120,
        processes=processes,
        what="every attempt to finish",
    )

    expected = {
        "healthy-a": ("ok", "", 1),
        "healthy-b": ("ok", "", 1),
        "throttled-once": ("ok", "", 2),
        "error-500-twice": ("ok", "", 3),
        "error-503-always": ("failed", "transient", 3),
        "reset-once": ("ok", "", 2),
        "slow-once": ("ok", "", 2),
        "token-revoked": ("ok", "", 1),
        "wrong-secret": ("failed", "auth", 1),
        "no-permission": ("failed", "permission", 1),
        "no-licence": ("failed", "config", 1),
        "html-page": ("failed", "bad_response", 1),
        "null-score": ("failed", "bad_response", 1),
        "far-future": ("failed", "bad_response", 1),
    }
    for slug, (status, kind, tries) in expected.items():
        attempt = only_attempt(tenants[slug])
        assert (attempt.status, attempt.error_kind, attempt.tries) == (status, kind, tries), slug
        readings = Reading.objects.filter(tenant=tenants[slug]).count()
        assert readings == (1 if status == "ok" else 0), slug
        tenant = Tenant.objects.get(pk=tenants[slug].pk)
        assert tenant.last_error_kind == kind, slug
        assert tenant.consecutive_failures == (0 if status == "ok" else 1), slug

    # Throttling: waited at least Retry-After, and not much more.
    assert 2.0 <= gaps(sim, tenants["throttled-once"])[0] < 5.0
    # Exponential backoff with jitter (base 1 s): waits of at least 0.75 s, then at
    # least 1.5 s; the broker's delivery adds a little, never much.
    first, second = gaps(sim, tenants["error-503-always"])
    assert 0.75 <= first < 6
    assert 1.5 <= second < 7
    # A revoked token is dropped and fetched again once.
    assert sim.stats()[str(tenants["token-revoked"].tenant_id)]["token"] == 2
    # Configuration errors are not retried: one sign-in, no API call.
    wrong = sim.stats()[str(tenants["wrong-secret"].tenant_id)]
    assert wrong["token"] == 1
    assert wrong["score"] == 0
    # Bad answers are kept, trimmed, for the admin to see.
    html_error = only_attempt(tenants["html-page"]).error
    assert "It began: '<" in html_error
    assert len(html_error) < 600
    logs = processes.output()
    assert "Traceback" not in logs


def pool_children(worker: subprocess.Popen) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(worker.pid)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


def test_a_worker_killed_mid_fetch_delivers_again_and_stores_one_reading(
    sim, make_tenant, processes
):
    tenant = make_tenant(name="Killed Co", next_fetch_at=timezone.now() + timedelta(days=1))
    sim.set_fault(str(tenant.tenant_id), "slow", delay=0.8)
    worker = processes.worker(concurrency=1)
    processes.beat()
    kills = 20
    for round_number in range(kills):
        before = sim.stats().get(str(tenant.tenant_id), {}).get("score", 0)
        Tenant.objects.filter(pk=tenant.pk).update(next_fetch_at=timezone.now())
        # The fetch is in flight: the simulator has the request and is answering slowly.
        wait_for(
            lambda before=before: (
                sim.stats().get(str(tenant.tenant_id), {}).get("score", 0) > before
            ),
            timeout=30,
            processes=processes,
            what=f"round {round_number}: the fetch to start",
        )
        children = pool_children(worker)
        assert len(children) == 1, children
        os.kill(children[0], signal.SIGKILL)
        wait_for(
            lambda n=round_number + 1: (
                FetchAttempt.objects.filter(tenant=tenant, status="ok").count() == n
            ),
            timeout=30,
            processes=processes,
            what=f"round {round_number}: the attempt to complete after the kill",
        )
    attempts = FetchAttempt.objects.filter(tenant=tenant)
    assert attempts.count() == kills
    assert Reading.objects.filter(tenant=tenant).count() == kills
    for attempt in attempts:
        assert attempt.status == "ok"
        assert attempt.tries >= 2  # the killed try and the one that completed
        assert attempt.readings.count() == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A Redis server of the test's own, so the test can stop it and start it again."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; the broker outage test needs it.")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        pytest.fail("the private redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def test_the_broker_going_away_loses_and_duplicates_nothing(
    sim, make_tenant, tmp_path, client, django_user_model
):
    redis = PrivateRedis(tmp_path)
    redis.start()
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    running = Processes(child_env(sim, var_dir, CELERY_BROKER_URL=redis.url, **FAST), tmp_path)
    try:
        tenants = [make_tenant(name=f"Outage {n}", slug=f"outage-{n}") for n in range(3)]
        running.worker(concurrency=2)
        running.beat()
        wait_for(
            lambda: Reading.objects.filter(tenant__in=tenants).count() == 3,
            timeout=60,
            processes=running,
            what="the first readings",
        )
        redis.stop()
        # The tenants fall due while the broker is away.
        Tenant.objects.filter(pk__in=[t.pk for t in tenants]).update(next_fetch_at=timezone.now())
        staff = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-ops-1")
        client.force_login(staff)
        time.sleep(3)
        assert client.get("/").status_code == 200  # pages never need the broker
        assert client.get("/tenants/outage-0/").status_code == 200
        redis.start()
        wait_for(
            lambda: Reading.objects.filter(tenant__in=tenants).count() == 6,
            timeout=90,
            processes=running,
            what="the readings after the broker came back",
        )
        time.sleep(3)  # room for a duplicate to show itself, if there were one
        for tenant in tenants:
            attempts = FetchAttempt.objects.filter(tenant=tenant)
            assert attempts.count() == 2
            assert set(attempts.values_list("status", flat=True)) == {"ok"}
            assert Reading.objects.filter(tenant=tenant).count() == 2
    finally:
        running.stop()
        redis.stop()
        connection.close()
