"""The real thing: a Celery worker and beat, as separate processes, fetch from the simulator.

The broker is whatever CELERY_BROKER_URL says (Redis in CI, the filesystem
transport by default); the database is the test database.
"""

from collections.abc import Iterator

import pytest
from django.db import connection

from scoreboard.models import FetchAttempt, Reading
from tenants.models import Tenant
from tests.conftest import PLANTED_SECRET
from tests.processes import Processes, child_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def celery_processes(sim, tmp_path) -> Iterator[Processes]:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    processes = Processes(child_env(sim, var_dir), tmp_path)
    processes.purge()
    try:
        yield processes
    finally:
        processes.stop()
        connection.close()


def test_worker_and_beat_fetch_scores_and_record_a_wrong_secret(celery_processes, make_tenant):
    good = make_tenant(name="Good Co")
    other = make_tenant(name="Other Co")
    wrong = make_tenant(name="Wrong Secret Co", client_secret=PLANTED_SECRET)

    celery_processes.worker()
    celery_processes.beat()

    def settled() -> bool:
        return (
            Reading.objects.filter(tenant__in=[good, other]).count() == 2
            and Tenant.objects.get(pk=wrong.pk).consecutive_failures > 0
        )

    wait_for(settled, timeout=90, processes=celery_processes, what="readings and the auth error")

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
