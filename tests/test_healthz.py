"""/healthz: what a load balancer or the container check sees, healthy and not."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.db import OperationalError
from django.urls import reverse
from django.utils import timezone

from scoreboard import fetching, views
from scoreboard.models import DispatcherHeartbeat
from tests.conftest import PLANTED_SECRET

HEALTHZ = reverse("healthz")

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def broker_ready() -> None:
    # A worker or beat creates the filesystem broker's folders when it starts.
    queue = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in")
    if queue:
        os.makedirs(queue, exist_ok=True)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung broker."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for peer in accepted:
        peer.close()
    server.close()


def use_redis_at(settings, url: str) -> None:
    settings.CELERY_BROKER_URL = url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}


def test_healthy_answers_200_with_every_check_ok(client):
    DispatcherHeartbeat.record()
    response = client.get(HEALTHZ)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "database": "ok", "broker": "ok", "dispatcher": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_a_dispatcher_run_makes_a_fresh_install_healthy(client):
    before = client.get(HEALTHZ)
    assert before.status_code == 503
    assert before.json()["dispatcher"].startswith("never ran")
    fetching.dispatch_due_fetches()
    assert client.get(HEALTHZ).status_code == 200


def test_database_down_answers_503_naming_the_database(client, monkeypatch):
    down = mock.Mock()
    down.cursor.side_effect = OperationalError("connection to server failed: Connection refused")
    monkeypatch.setattr(views, "connection", down)
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["database"] == "unreachable: connection to server failed: Connection refused"
    assert body["broker"] == "ok"
    assert body["dispatcher"] == "unknown: the database is unreachable"


def test_broker_on_a_closed_port_answers_503_naming_the_broker(client, settings):
    DispatcherHeartbeat.record()
    use_redis_at(settings, f"redis://127.0.0.1:{closed_port()}/0")
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    body = response.json()
    assert body["broker"].startswith("unreachable: ")
    assert "refused" in body["broker"].lower()
    assert body["database"] == "ok"
    assert body["dispatcher"] == "ok"


def test_a_hung_broker_does_not_hang_the_health_check(client, settings, silent_server):
    use_redis_at(settings, f"redis://127.0.0.1:{silent_server}/0")
    started = time.monotonic()
    response = client.get(HEALTHZ)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.json()["broker"].startswith("unreachable: ")


def test_missing_filesystem_queue_folder_answers_503(client, settings, tmp_path):
    DispatcherHeartbeat.record()
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(tmp_path / "gone")}
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    assert response.json()["broker"] == (
        "unreachable: the queue folder (SCOREBOARD_VAR_DIR/broker/queue) is missing"
    )


def test_stale_heartbeat_answers_503_saying_how_old(client):
    DispatcherHeartbeat.objects.create(
        last_run_at=timezone.now() - timedelta(minutes=14, seconds=5)
    )
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    assert response.json() == {
        "ok": False,
        "database": "ok",
        "broker": "ok",
        "dispatcher": "last run 14 minutes ago (limit 5 minutes)",
    }


def test_stale_limit_follows_the_dispatch_interval(client, settings):
    settings.SCOREBOARD_DISPATCH_STALE_AFTER_SECONDS = 3 * 3600
    DispatcherHeartbeat.objects.create(last_run_at=timezone.now() - timedelta(hours=2))
    assert client.get(HEALTHZ).status_code == 200
    DispatcherHeartbeat.objects.update(last_run_at=timezone.now() - timedelta(hours=5))
    assert client.get(HEALTHZ).json()["dispatcher"] == "last run 5 hours ago (limit 3 hours)"


def test_each_dispatch_updates_the_one_heartbeat_row(django_assert_num_queries):
    DispatcherHeartbeat.objects.create(last_run_at=timezone.now() - timedelta(days=3))
    with django_assert_num_queries(1):
        DispatcherHeartbeat.record()
    fetching.dispatch_due_fetches()
    assert DispatcherHeartbeat.objects.count() == 1
    age = timezone.now() - DispatcherHeartbeat.objects.get().last_run_at
    assert age < timedelta(seconds=10)


def test_body_names_no_tenant_and_no_secret(client, settings, two_tenants, make_tenant):
    make_tenant(
        name="Failing Tenant Ltd",
        slug="failing-tenant",
        client_secret=PLANTED_SECRET,
        last_error="Failing Tenant Ltd: sign-in rejected",
    )
    DispatcherHeartbeat.objects.create(last_run_at=timezone.now() - timedelta(hours=1))
    use_redis_at(settings, f"redis://:{PLANTED_SECRET}@127.0.0.1:{closed_port()}/0")
    response = client.get(HEALTHZ)
    assert response.status_code == 503
    body = response.content.decode()
    forbidden = [
        *(tenant.name for tenant in two_tenants),
        *(tenant.slug for tenant in two_tenants),
        "Failing Tenant",
        PLANTED_SECRET,
        django_settings.SECRET_KEY,
        *django_settings.SCOREBOARD_ENCRYPTION_KEYS,
    ]
    for text in forbidden:
        assert text not in body
    assert set(response.json()) == {"ok", "database", "broker", "dispatcher"}


def test_needs_no_login_and_answers_plain_http_when_https_is_on(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    DispatcherHeartbeat.record()
    assert client.get(HEALTHZ).status_code == 200
    # Everything else still goes to https.
    assert client.get(reverse("login")).status_code == 301


def test_only_reads(client):
    assert client.post(HEALTHZ).status_code == 405
    assert client.head(HEALTHZ).status_code in (200, 503)
