"""The write side: claims, attempts, readings and tenant health."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from scoreboard import fetching
from scoreboard.defender import ErrorKind
from scoreboard.models import FetchAttempt, Reading
from tenants.models import Tenant


def attempt_for(tenant) -> FetchAttempt:
    return FetchAttempt.objects.create(tenant=tenant, scheduled_for=timezone.now())


def run_to_the_end(attempt: FetchAttempt) -> fetching.Outcome:
    while True:
        outcome = fetching.run_attempt(attempt_id=attempt.pk)
        if outcome.retry_in is None:
            return outcome


def test_a_successful_attempt_stores_one_reading_and_marks_the_tenant_healthy(sim, make_tenant):
    tenant = make_tenant()
    outcome = fetching.run_attempt(attempt_id=attempt_for(tenant).pk)
    assert outcome.ok
    reading = Reading.objects.get(tenant=tenant)
    assert reading.metric == "secure_score"
    assert reading.attempt_id == outcome.attempt.pk
    tenant.refresh_from_db()
    assert tenant.last_score == reading.value
    assert tenant.last_measured_at == reading.measured_at
    assert tenant.last_success_at is not None
    assert tenant.consecutive_failures == 0
    attempt = FetchAttempt.objects.get(pk=outcome.attempt.pk)
    assert attempt.status == "ok"
    assert attempt.tries == 1
    assert attempt.http_status == 200
    assert attempt.duration_ms is not None


def test_running_the_same_attempt_twice_stores_one_reading(sim, make_tenant):
    tenant = make_tenant()
    attempt = attempt_for(tenant)
    fetching.run_attempt(attempt_id=attempt.pk)
    fetching.run_attempt(attempt_id=attempt.pk)
    assert Reading.objects.filter(tenant=tenant).count() == 1


def test_a_redelivered_attempt_that_fetches_again_stores_no_duplicate(sim, make_tenant):
    tenant = make_tenant()
    attempt = attempt_for(tenant)
    fetching.run_attempt(attempt_id=attempt.pk)
    # As if the worker died after storing the reading but before closing the attempt.
    FetchAttempt.objects.filter(pk=attempt.pk).update(status="running")
    outcome = fetching.run_attempt(attempt_id=attempt.pk)
    assert outcome.ok
    assert Reading.objects.filter(tenant=tenant).count() == 1
    assert FetchAttempt.objects.get(pk=attempt.pk).status == "ok"


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("invalid_secret", "auth"),
        ("expired_secret", "auth"),
        ("app_not_found", "config"),
        ("unknown_tenant", "config"),
        ("forbidden", "permission"),
        ("disabled_feature", "config"),
        ("malformed_json", "bad_response"),
        ("negative_score", "bad_response"),
        ("error_503", "transient"),
        ("throttle", "throttled"),
    ],
)
def test_each_error_kind_lands_on_the_tenant(sim, make_tenant, fault, kind):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), fault, retry_after=0)
    outcome = run_to_the_end(attempt_for(tenant))
    assert not outcome.ok
    tenant.refresh_from_db()
    assert tenant.last_error_kind == kind
    assert tenant.consecutive_failures == 1
    assert tenant.failing_since is not None
    assert tenant.last_error.startswith(f"{tenant.name}: ")
    assert not Reading.objects.filter(tenant=tenant).exists()
    attempt = FetchAttempt.objects.get(pk=outcome.attempt.pk)
    assert (attempt.status, attempt.error_kind) == ("failed", kind)


def test_configuration_errors_are_not_retried(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "invalid_secret")
    outcome = fetching.run_attempt(attempt_id=attempt_for(tenant).pk)
    assert outcome.retry_in is None
    assert FetchAttempt.objects.get(pk=outcome.attempt.pk).tries == 1


def test_transient_errors_are_retried_a_bounded_number_of_times(sim, make_tenant, settings):
    settings.SCOREBOARD_FETCH_MAX_TRIES = 3
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "error_500")
    attempt = attempt_for(tenant)
    delays = []
    while True:
        outcome = fetching.run_attempt(attempt_id=attempt.pk)
        if outcome.retry_in is None:
            break
        delays.append(outcome.retry_in)
        assert FetchAttempt.objects.get(pk=attempt.pk).status == "retrying"
    assert len(delays) == 2
    base = settings.SCOREBOARD_RETRY_BASE_SECONDS
    assert 0.75 * base <= delays[0] <= 1.25 * base
    assert 1.5 * base <= delays[1] <= 2.5 * base  # doubled
    attempt.refresh_from_db()
    assert (attempt.status, attempt.error_kind, attempt.tries) == ("failed", "transient", 3)


def test_throttled_attempt_waits_at_least_retry_after(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "throttle", retry_after=9, count=1)
    attempt = attempt_for(tenant)
    outcome = fetching.run_attempt(attempt_id=attempt.pk)
    assert 9 <= outcome.retry_in <= 9 * 1.1 + 0.5
    assert fetching.run_attempt(attempt_id=attempt.pk).ok


def test_a_failure_then_a_success_clears_the_health(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "forbidden")
    run_to_the_end(attempt_for(tenant))
    run_to_the_end(attempt_for(tenant))
    tenant.refresh_from_db()
    assert tenant.consecutive_failures == 2
    sim.clear_faults(str(tenant.tenant_id))
    assert run_to_the_end(attempt_for(tenant)).ok
    tenant.refresh_from_db()
    assert (tenant.consecutive_failures, tenant.last_error_kind, tenant.failing_since) == (
        0,
        "",
        None,
    )


def test_dispatch_claims_due_tenants_and_moves_their_next_fetch(
    make_tenant, monkeypatch, django_capture_on_commit_callbacks
):
    enqueued = []
    monkeypatch.setattr(fetching, "_enqueue", enqueued.append)
    now = timezone.now()
    due = make_tenant(next_fetch_at=now - timedelta(minutes=1))
    never = make_tenant(next_fetch_at=None)
    later = make_tenant(next_fetch_at=now + timedelta(minutes=5))
    off = make_tenant(next_fetch_at=now - timedelta(minutes=1), enabled=False)
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.dispatch_due_fetches(now=now) == 2
    assert sorted(a.tenant_id for a in FetchAttempt.objects.all()) == sorted([due.pk, never.pk])
    assert len(enqueued) == 2
    for tenant in (due, never):
        tenant.refresh_from_db()
        assert tenant.next_fetch_at > now
    assert not FetchAttempt.objects.filter(tenant__in=[later, off]).exists()
    # A second dispatch in the same minute finds nothing due.
    assert fetching.dispatch_due_fetches(now=now) == 0


def test_after_downtime_one_catch_up_fetch_and_the_grid_is_kept(make_tenant, monkeypatch):
    monkeypatch.setattr(fetching, "_enqueue", lambda attempt_id: None)
    now = timezone.now()
    slot = now - timedelta(days=3, minutes=10)
    tenant = make_tenant(next_fetch_at=slot, fetch_interval_minutes=60)
    assert fetching.dispatch_due_fetches(now=now) == 1
    assert FetchAttempt.objects.filter(tenant=tenant).count() == 1
    tenant.refresh_from_db()
    assert now < tenant.next_fetch_at <= now + timedelta(minutes=60)
    assert (tenant.next_fetch_at - slot) % timedelta(minutes=60) == timedelta(0)


def test_a_stale_claim_loses(make_tenant):
    now = timezone.now()
    tenant = make_tenant(next_fetch_at=now - timedelta(minutes=1))
    seen = tenant.next_fetch_at
    first = fetching.claim(
        tenant_id=tenant.pk,
        seen_next_fetch_at=seen,
        interval_minutes=60,
        now=now,
        trigger="schedule",
    )
    second = fetching.claim(
        tenant_id=tenant.pk,
        seen_next_fetch_at=seen,
        interval_minutes=60,
        now=now,
        trigger="schedule",
    )
    assert first is not None
    assert second is None
    assert FetchAttempt.objects.filter(tenant=tenant).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_racing_claim_each_tenant_once(make_tenant, monkeypatch):
    monkeypatch.setattr(fetching, "_enqueue", lambda attempt_id: None)
    now = timezone.now()
    tenants = [make_tenant(next_fetch_at=now - timedelta(minutes=1)) for _ in range(30)]
    barrier = threading.Barrier(2)
    counts, errors = [], []

    def dispatcher() -> None:
        try:
            barrier.wait()
            counts.append(fetching.dispatch_due_fetches(now=now))
        except Exception as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(counts) == len(tenants)
    for tenant in tenants:
        assert FetchAttempt.objects.filter(tenant=tenant).count() == 1


def test_attempts_no_worker_started_expire_with_a_clear_message(make_tenant, settings):
    tenant = make_tenant()
    attempt = attempt_for(tenant)
    FetchAttempt.objects.filter(pk=attempt.pk).update(
        created_at=timezone.now() - timedelta(minutes=61)
    )
    assert fetching.expire_stale_attempts(now=timezone.now()) == 1
    attempt.refresh_from_db()
    assert attempt.status == "failed"
    tenant.refresh_from_db()
    assert tenant.last_error_kind == ErrorKind.TRANSIENT
    assert "Celery worker is running" in tenant.last_error


def test_fetch_now_creates_and_enqueues_an_attempt(
    make_tenant, monkeypatch, django_capture_on_commit_callbacks
):
    enqueued = []
    monkeypatch.setattr(fetching, "_enqueue", enqueued.append)
    tenant = make_tenant()
    with django_capture_on_commit_callbacks(execute=True):
        attempt = fetching.fetch_now(tenant=tenant)
    assert enqueued == [attempt.pk]
    assert attempt.trigger == "manual"


def test_late_older_reading_does_not_replace_the_newer_score(make_tenant):
    tenant = make_tenant()
    now = timezone.now()
    tenant.record_success(value=500, measured_at=now, at=now)
    tenant.record_success(value=400, measured_at=now - timedelta(hours=1), at=now)
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.last_score == 500


def test_attempts_no_worker_started_are_enqueued_again_once_per_period(
    make_tenant, monkeypatch, settings, django_capture_on_commit_callbacks
):
    enqueued = []
    monkeypatch.setattr(fetching, "_enqueue", enqueued.append)
    settings.SCOREBOARD_ATTEMPT_REQUEUE_MINUTES = 10
    attempt = attempt_for(make_tenant())
    created = timezone.now() - timedelta(minutes=10, seconds=20)
    FetchAttempt.objects.filter(pk=attempt.pk).update(created_at=created)
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.requeue_stalled_attempts(now=timezone.now()) == 1
        # The next dispatcher run, a minute later, leaves it alone.
        later = timezone.now() + timedelta(minutes=1)
        assert fetching.requeue_stalled_attempts(now=later) == 0
    assert enqueued == [attempt.pk]


def test_pruning_deletes_old_attempts_and_keeps_every_reading(sim, make_tenant, settings):
    settings.SCOREBOARD_ATTEMPT_RETENTION_DAYS = 90
    tenant = make_tenant()
    old, recent = attempt_for(tenant), attempt_for(tenant)
    for attempt in (old, recent):
        fetching.run_attempt(attempt_id=attempt.pk)
    FetchAttempt.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=91))
    assert fetching.prune_attempts(now=timezone.now()) == 1
    assert list(FetchAttempt.objects.values_list("pk", flat=True)) == [recent.pk]
    assert Reading.objects.filter(tenant=tenant).count() == 2
    assert Reading.objects.filter(attempt__isnull=True).count() == 1


def test_a_fetch_stopped_by_the_soft_time_limit_is_a_transient_failure(
    make_tenant, monkeypatch, sim
):
    from celery.exceptions import SoftTimeLimitExceeded

    def too_slow(credential):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(fetching.defender, "read_secure_score", too_slow)
    outcome = fetching.run_attempt(attempt_id=attempt_for(make_tenant()).pk)
    assert outcome.error.kind == ErrorKind.TRANSIENT
    assert "longer than the task time limit" in str(outcome.error)
    assert outcome.retry_in is not None


def test_a_tenant_throttled_to_the_end_is_slowed_not_dropped(sim, make_tenant):
    tenant = make_tenant(fetch_interval_minutes=60)
    sim.set_fault(str(tenant.tenant_id), "throttle", retry_after=0)
    run_to_the_end(attempt_for(tenant))
    tenant.refresh_from_db()
    assert tenant.enabled
    first_wait = tenant.next_fetch_at - timezone.now()
    assert timedelta(minutes=119) < first_wait <= timedelta(minutes=120)
    run_to_the_end(attempt_for(tenant))
    tenant.refresh_from_db()
    assert timedelta(minutes=239) < tenant.next_fetch_at - timezone.now() <= timedelta(hours=4)
    sim.clear_faults()
    assert run_to_the_end(attempt_for(tenant)).ok


def test_an_attempt_whose_worker_died_is_enqueued_again(
    make_tenant, monkeypatch, settings, django_capture_on_commit_callbacks
):
    enqueued = []
    monkeypatch.setattr(fetching, "_enqueue", enqueued.append)
    attempt = attempt_for(make_tenant())
    limit = settings.CELERY_TASK_TIME_LIMIT + 60
    FetchAttempt.objects.filter(pk=attempt.pk).update(
        status="running", started_at=timezone.now() - timedelta(seconds=limit + 20)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.requeue_stalled_attempts(now=timezone.now()) == 1
    assert enqueued == [attempt.pk]


@pytest.mark.django_db(transaction=True)
def test_a_database_error_during_a_fetch_is_retried_and_leaves_nothing_half_written(
    sim, make_tenant, monkeypatch
):
    from django.db import OperationalError

    from scoreboard import tasks

    real_finish = fetching._finish_ok
    failures = iter([True])

    def flaky_finish(**kwargs):
        if next(failures, False):
            with transaction.atomic():
                Reading.objects.create(
                    tenant=kwargs["attempt"].tenant,
                    value=1,
                    measured_at=timezone.now(),
                    fetched_at=timezone.now(),
                    attempt=kwargs["attempt"],
                )
                raise OperationalError("server closed the connection unexpectedly")
        return real_finish(**kwargs)

    monkeypatch.setattr(fetching, "_finish_ok", flaky_finish)
    monkeypatch.setattr(tasks.random, "uniform", lambda a, b: 0.0)  # no real wait
    tenant = make_tenant()
    attempt = attempt_for(tenant)
    result = tasks.fetch.apply(args=[attempt.pk])
    assert result.get() == "ok"
    reading = Reading.objects.get(tenant=tenant)  # the half-written one was rolled back
    assert reading.value != 1
    attempt.refresh_from_db()
    assert (attempt.status, attempt.tries) == ("ok", 2)
