"""Shared fixtures: the simulator over real HTTPS, tenants on it, and users."""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from scoreboard import defender, simulator
from tenants.models import Tenant

PLANTED_SECRET = "planted-Secret-7f3a9c1e"  # a secret we can grep for; never accepted


@pytest.fixture(scope="session")
def simulator_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[simulator.Simulator]:
    cert_dir = Path(tmp_path_factory.mktemp("simulator"))
    with simulator.Simulator(cert_dir=cert_dir).start() as server:
        yield server


@pytest.fixture
def sim(simulator_server: simulator.Simulator, settings) -> Iterator[simulator.Simulator]:
    """The simulator, with the settings that point the simulator cloud at it."""
    settings.SCOREBOARD_SIMULATOR_URL = simulator_server.url
    settings.SCOREBOARD_CA_BUNDLE = str(simulator_server.cert_path)
    defender.reset()
    simulator_server.clear_faults()
    simulator_server.reset_stats()
    yield simulator_server
    simulator_server.clear_faults()
    defender.reset()


@pytest.fixture
def make_tenant(db) -> Callable[..., Tenant]:
    counter = iter(range(1, 10_000))

    def make(**fields) -> Tenant:
        n = next(counter)
        values = {
            "name": f"Tenant {n}",
            "slug": f"tenant-{n}",
            "tenant_id": uuid.uuid4(),
            "client_id": uuid.uuid4(),
            "client_secret": simulator.DEFAULT_CLIENT_SECRET,
            "cloud": "simulator",
            "next_fetch_at": timezone.now(),
        }
        values.update(fields)
        return Tenant.objects.create(**values)

    return make


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-staff-1")


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client


@pytest.fixture
def two_tenants(make_tenant) -> tuple[Tenant, Tenant]:
    """Tenant A (granted to the viewer) and tenant B (granted to nobody)."""
    return make_tenant(name="Alpha Corp", slug="alpha"), make_tenant(name="Beta Corp", slug="beta")


@pytest.fixture
def viewer(db, two_tenants):
    user = get_user_model().objects.create_user("viewer", password="pw-viewer-1")
    two_tenants[0].viewers.add(user)
    return user


@pytest.fixture
def outsider(db):
    return get_user_model().objects.create_user("outsider", password="pw-outsider-1")


def add_readings(tenant: Tenant, *, hours: int, end=None, start_value: float = 500.0) -> None:
    """Hourly readings ending now (or at `end`), rising by 0.1 an hour."""
    from datetime import timedelta

    from scoreboard.models import Reading

    end = end or timezone.now()
    Reading.objects.bulk_create(
        Reading(
            tenant=tenant,
            value=start_value + 0.1 * h,
            measured_at=end - timedelta(hours=hours - h),
            fetched_at=end - timedelta(hours=hours - h),
        )
        for h in range(hours)
    )


def queries_of(client, url: str, **params) -> int:
    """How many SQL statements one GET of `url` runs (the response must be 200)."""
    from django.db import connection

    statements = []

    def count(run, sql, *args):
        statements.append(sql)
        return run(sql, *args)

    with connection.execute_wrapper(count):
        assert client.get(url, params).status_code == 200
    return len(statements)
