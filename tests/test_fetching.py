"""The write side: claims, attempts, readings and tenant health."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from scoreboard import fetching
from scoreboard.defender import ErrorKind
from scoreboard.models import DailyScore, FetchAttempt, Reading
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
    # The refused second reading is not counted in the day's rollup either.
    assert DailyScore.objects.get(tenant=tenant).count == 1


def test_an_attempt_loads_as_the_orm_loads_it(make_tenant):
    tenant = make_tenant(credential_expires_at=timezone.now().date(), last_score=512.5)
    attempt = attempt_for(tenant)
    FetchAttempt.objects.filter(pk=attempt.pk).update(started_at=timezone.now(), tries=2)
    expected = FetchAttempt.objects.select_related("tenant").get(pk=attempt.pk)
    loaded = fetching._load_attempt(attempt.pk)
    fields = [f.attname for f in FetchAttempt._meta.concrete_fields]
    assert [getattr(loaded, f) for f in fields] == [getattr(expected, f) for f in fields]
    fields = [f.attname for f in Tenant._meta.concrete_fields]
    assert [getattr(loaded.tenant, f) for f in fields] == [
        getattr(expected.tenant, f) for f in fields
    ]
    assert loaded.tenant.client_secret.reveal() == expected.tenant.client_secret.reveal()


def test_running_a_deleted_attempt_says_it_does_not_exist(db):
    with pytest.raises(FetchAttempt.DoesNotExist):
        fetching.run_attempt(attempt_id=999_999)


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
    batches = []
    monkeypatch.setattr(fetching, "_enqueue_batch", batches.append)
    now = timezone.now()
    due = make_tenant(next_fetch_at=now - timedelta(minutes=1))
    never = make_tenant(next_fetch_at=None)
    later = make_tenant(next_fetch_at=now + timedelta(minutes=5))
    off = make_tenant(next_fetch_at=now - timedelta(minutes=1), enabled=False)
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.dispatch_due_fetches(now=now) == 2
    attempts = FetchAttempt.objects.order_by("pk")
    assert sorted(a.tenant_id for a in attempts) == sorted([due.pk, never.pk])
    assert [sorted(batch) for batch in batches] == [[a.pk for a in attempts]]  # one message
    for attempt in attempts:
        assert (attempt.status, attempt.trigger, attempt.tries) == ("pending", "schedule", 0)
        assert (attempt.error_kind, attempt.error, attempt.started_at) == ("", "", None)
        assert now <= attempt.created_at <= timezone.now()
    assert FetchAttempt.objects.get(tenant=due).scheduled_for == now - timedelta(minutes=1)
    assert FetchAttempt.objects.get(tenant=never).scheduled_for == now  # due now
    for tenant in (due, never):
        tenant.refresh_from_db()
        assert tenant.next_fetch_at > now
    assert not FetchAttempt.objects.filter(tenant__in=[later, off]).exists()
    # A second dispatch in the same minute finds nothing due.
    assert fetching.dispatch_due_fetches(now=now) == 0


@pytest.mark.parametrize("interval", [5, 60, 24 * 60, 7 * 24 * 60])
@pytest.mark.parametrize(
    "overdue",
    [
        None,
        timedelta(0),
        timedelta(microseconds=1),
        timedelta(minutes=5) - timedelta(microseconds=1),
        timedelta(minutes=5),
        timedelta(minutes=60, microseconds=1),
        timedelta(days=3, minutes=10, seconds=7, microseconds=123457),
        timedelta(days=400),
    ],
)
def test_a_claimed_tenant_moves_to_the_next_slot_on_its_grid(make_tenant, interval, overdue):
    now = timezone.now()
    seen = None if overdue is None else now - overdue
    tenant = make_tenant(next_fetch_at=seen, fetch_interval_minutes=interval)
    (attempt_id,) = fetching.claim(tenant_ids=[tenant.pk], now=now, trigger="schedule")
    tenant.refresh_from_db()
    due = now if seen is None else seen
    assert tenant.next_fetch_at == fetching.next_due_after(due, now, interval_minutes=interval)
    assert FetchAttempt.objects.get(pk=attempt_id).scheduled_for == due


def test_after_downtime_one_catch_up_fetch_and_the_grid_is_kept(make_tenant, monkeypatch):
    monkeypatch.setattr(fetching, "_enqueue_batch", lambda attempt_ids: None)
    now = timezone.now()
    slot = now - timedelta(days=3, minutes=10)
    tenant = make_tenant(next_fetch_at=slot, fetch_interval_minutes=60)
    assert fetching.dispatch_due_fetches(now=now) == 1
    assert FetchAttempt.objects.filter(tenant=tenant).count() == 1
    tenant.refresh_from_db()
    assert now < tenant.next_fetch_at <= now + timedelta(minutes=60)
    assert (tenant.next_fetch_at - slot) % timedelta(minutes=60) == timedelta(0)


def test_a_claimer_that_read_the_due_list_before_another_claimed_gets_nothing(make_tenant):
    now = timezone.now()
    slot = now - timedelta(minutes=1)
    tenants = [make_tenant(next_fetch_at=slot, fetch_interval_minutes=60) for _ in range(3)]
    ids = fetching.due_tenant_ids(now=now)
    assert ids == [tenant.pk for tenant in tenants]
    first = fetching.claim(tenant_ids=ids, now=now, trigger="schedule")
    claimed = FetchAttempt.objects.filter(pk__in=first)
    assert sorted(claimed.values_list("tenant_id", flat=True)) == ids
    assert fetching.claim(tenant_ids=ids, now=now, trigger="schedule") == []
    assert FetchAttempt.objects.count() == 3
    for tenant in tenants:
        tenant.refresh_from_db()
        assert tenant.next_fetch_at == slot + timedelta(minutes=60)  # moved once


def test_a_tenant_disabled_after_the_due_list_was_read_is_not_claimed(make_tenant):
    now = timezone.now()
    tenant = make_tenant(next_fetch_at=now - timedelta(minutes=1))
    ids = fetching.due_tenant_ids(now=now)
    Tenant.objects.filter(pk=tenant.pk).update(enabled=False)
    assert fetching.claim(tenant_ids=ids, now=now, trigger="schedule") == []
    assert not FetchAttempt.objects.exists()


def test_a_tenant_that_already_has_an_attempt_for_its_due_time_gets_no_second(
    make_tenant, monkeypatch, django_capture_on_commit_callbacks
):
    batches = []
    monkeypatch.setattr(fetching, "_enqueue_batch", batches.append)
    now = timezone.now()
    slot = now - timedelta(minutes=1)
    done = make_tenant(next_fetch_at=slot, fetch_interval_minutes=60)
    earlier = FetchAttempt.objects.create(tenant=done, scheduled_for=slot)
    other = make_tenant(next_fetch_at=slot)
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.dispatch_due_fetches(now=now) == 1
    assert list(FetchAttempt.objects.filter(tenant=done)) == [earlier]
    assert batches == [[FetchAttempt.objects.get(tenant=other).pk]]
    done.refresh_from_db()
    assert done.next_fetch_at == slot + timedelta(minutes=60)  # moved on all the same


def test_dispatch_works_through_every_batch_and_says_how_many(
    make_tenant, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    batches = []
    monkeypatch.setattr(fetching, "_enqueue_batch", batches.append)
    monkeypatch.setattr(fetching, "DISPATCH_BATCH", 2)
    now = timezone.now()
    tenants = [make_tenant(next_fetch_at=now - timedelta(minutes=n)) for n in range(1, 6)]
    with django_capture_on_commit_callbacks(execute=True), caplog.at_level("INFO"):
        assert fetching.dispatch_due_fetches(now=now) == 5
    assert "dispatched 5 fetch(es)" in caplog.messages
    attempts = FetchAttempt.objects.filter(trigger="schedule")
    assert sorted(attempts.values_list("tenant_id", flat=True)) == sorted(t.pk for t in tenants)
    assert [len(batch) for batch in batches] == [2, 2, 1]  # one message per batch
    sent = [attempt_id for batch in batches for attempt_id in batch]
    assert sorted(sent) == sorted(attempts.values_list("pk", flat=True))
    assert not Tenant.objects.filter(next_fetch_at__lte=now).exists()


@pytest.mark.django_db(transaction=True)
def test_messages_are_sent_only_once_the_claim_is_committed(make_tenant, monkeypatch):
    sent = []

    def enqueue_batch(attempt_ids: list[int]) -> None:
        # What a worker would see on receiving the message.
        sent.append((attempt_ids, connection.in_atomic_block))
        assert FetchAttempt.objects.filter(pk__in=attempt_ids).count() == len(attempt_ids)

    monkeypatch.setattr(fetching, "_enqueue_batch", enqueue_batch)
    monkeypatch.setattr(fetching, "DISPATCH_BATCH", 1)
    real_claim = fetching.claim
    calls = iter(range(1, 100))

    def second_batch_fails(**kwargs):
        claimed = real_claim(**kwargs)
        if next(calls) == 2:
            raise DatabaseError("disk full")  # after the batch's rows were written
        return claimed

    monkeypatch.setattr(fetching, "claim", second_batch_fails)
    now = timezone.now()
    first = make_tenant(next_fetch_at=now - timedelta(minutes=2))
    second = make_tenant(next_fetch_at=now - timedelta(minutes=1))
    with pytest.raises(DatabaseError):
        fetching.dispatch_due_fetches(now=now)
    committed = FetchAttempt.objects.get()
    assert committed.tenant_id == first.pk
    assert sent == [([committed.pk], False)]  # nothing for the batch that rolled back
    second.refresh_from_db()
    assert second.next_fetch_at == now - timedelta(minutes=1)  # still due next time


def test_a_refused_batch_message_does_not_stop_the_others(
    make_tenant, monkeypatch, django_capture_on_commit_callbacks
):
    sent = []

    def enqueue_batch(attempt_ids: list[int]) -> None:
        if not sent:
            sent.append(None)
            raise ConnectionError("broker refused the message")
        sent.append(attempt_ids)

    monkeypatch.setattr(fetching, "_enqueue_batch", enqueue_batch)
    monkeypatch.setattr(fetching, "DISPATCH_BATCH", 1)
    now = timezone.now()
    for _ in range(3):
        make_tenant(next_fetch_at=now - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.dispatch_due_fetches(now=now) == 3
    assert len(sent) == 3  # the refused one, then the two others
    assert FetchAttempt.objects.filter(status="pending").count() == 3


def test_a_lost_batch_message_is_sent_again_attempt_by_attempt(
    make_tenant, monkeypatch, settings, caplog, django_capture_on_commit_callbacks
):
    settings.SCOREBOARD_ATTEMPT_REQUEUE_MINUTES = 10

    def refused(attempt_ids: list[int]) -> None:
        raise ConnectionError("broker refused the message")

    monkeypatch.setattr(fetching, "_enqueue_batch", refused)
    enqueued = []
    monkeypatch.setattr(fetching, "_enqueue", enqueued.append)
    now = timezone.now()
    for _ in range(3):
        make_tenant(next_fetch_at=now - timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.dispatch_due_fetches(now=now) == 3
    assert "broker refused the message" in caplog.text  # logged, not raised
    assert enqueued == []
    pending = sorted(FetchAttempt.objects.filter(status="pending").values_list("pk", flat=True))
    assert len(pending) == 3
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.requeue_stalled_attempts(now=now + timedelta(minutes=9)) == 0
        later = timezone.now() + timedelta(minutes=10, seconds=10)
        assert fetching.requeue_stalled_attempts(now=later) == 3
    assert sorted(enqueued) == pending


def test_a_batch_sends_a_fetch_per_attempt_past_a_refused_one(make_tenant, monkeypatch, caplog):
    from scoreboard import tasks

    sent = []

    def enqueue(attempt_id: int) -> None:
        if attempt_id == 2:
            raise ConnectionError("broker refused the message")
        sent.append(attempt_id)

    monkeypatch.setattr(fetching, "_enqueue", enqueue)
    assert tasks.fetch_batch.apply(args=[[1, 2, 3]]).get() == 2
    assert sent == [1, 3]
    assert "could not enqueue attempt 2" in caplog.text
    assert "broker refused the message" in caplog.text


def test_a_batch_run_twice_stores_one_reading_per_attempt(
    sim, make_tenant, monkeypatch, django_capture_on_commit_callbacks
):
    from scoreboard import tasks

    batches, fetched = [], []

    def fetch(attempt_id: int) -> None:
        fetched.append(tasks.fetch.apply(args=[attempt_id]).get())

    monkeypatch.setattr(fetching, "_enqueue_batch", batches.append)
    monkeypatch.setattr(fetching, "_enqueue", fetch)
    now = timezone.now()
    tenants = [make_tenant(next_fetch_at=now - timedelta(minutes=1)) for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        assert fetching.dispatch_due_fetches(now=now) == 3
    (batch,) = batches
    # As if the worker died after sending the fetches, before acknowledging the batch.
    tasks.fetch_batch.apply(args=[batch])
    tasks.fetch_batch.apply(args=[batch])
    assert fetched == ["ok"] * 6
    for tenant in tenants:
        attempt = FetchAttempt.objects.get(tenant=tenant)
        assert (attempt.status, attempt.tries) == ("ok", 1)
        assert list(Reading.objects.filter(tenant=tenant).values_list("attempt", flat=True)) == [
            attempt.pk
        ]


def _in_another_transaction(work, *, hold) -> tuple[threading.Thread, list]:
    """Run `work` in a transaction on another thread's connection and keep it open
    through `hold`; returns once `work` is done, with the thread and its errors."""
    holding, errors = threading.Event(), []

    def run() -> None:
        try:
            with transaction.atomic():
                work()
                holding.set()
                hold()
        except Exception as exc:  # surfaced by the caller: a thread's exception is otherwise lost
            errors.append(exc)
            holding.set()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    holding.wait(timeout=10)
    return thread, errors


@pytest.mark.django_db(transaction=True)
def test_a_dispatcher_running_while_another_holds_a_batch_claims_only_the_rest(
    make_tenant, monkeypatch
):
    monkeypatch.setattr(fetching, "_enqueue_batch", lambda attempt_ids: None)
    monkeypatch.setattr(fetching, "DISPATCH_BATCH", 4)
    now = timezone.now()
    tenants = [make_tenant(next_fetch_at=now - timedelta(minutes=1)) for _ in range(12)]
    held = []

    def claim_five() -> None:
        ids = fetching.due_tenant_ids(now=now)[:5]
        held.extend(fetching.claim(tenant_ids=ids, now=now, trigger="schedule"))

    # The other dispatcher starts while this one holds its batch.
    thread, errors = _in_another_transaction(claim_five, hold=lambda: time.sleep(0.5))
    dispatched = fetching.dispatch_due_fetches(now=now)
    thread.join()
    assert errors == []
    assert (len(held), dispatched) == (5, 7)
    for tenant in tenants:
        assert FetchAttempt.objects.filter(tenant=tenant).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_claim_skips_the_tenants_another_claim_holds_without_waiting(make_tenant):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: the second claim waits its turn")
    now = timezone.now()
    tenants = [make_tenant(next_fetch_at=now - timedelta(minutes=1)) for _ in range(4)]
    release = threading.Event()
    released_in_time = []

    def claim_two() -> None:
        fetching.claim(tenant_ids=[t.pk for t in tenants[:2]], now=now, trigger="schedule")

    thread, errors = _in_another_transaction(
        claim_two, hold=lambda: released_in_time.append(release.wait(timeout=10))
    )
    claimed = fetching.claim(tenant_ids=[t.pk for t in tenants], now=now, trigger="schedule")
    release.set()
    thread.join()
    assert (errors, released_in_time) == ([], [True])  # the second claim did not wait
    claimed_attempts = FetchAttempt.objects.filter(pk__in=claimed)
    assert sorted(a.tenant_id for a in claimed_attempts) == [t.pk for t in tenants[2:]]
    assert FetchAttempt.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_racing_claim_each_tenant_once(make_tenant, monkeypatch):
    monkeypatch.setattr(fetching, "_enqueue_batch", lambda attempt_ids: None)
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


def test_a_late_success_with_an_older_reading_keeps_the_newer_score(make_tenant):
    from scoreboard.defender import Score

    tenant = make_tenant()
    now = timezone.now()
    newer, late = attempt_for(tenant), attempt_for(tenant)
    fetching._finish_ok(attempt=newer, score=Score(500.0, now), duration_ms=1)
    older = Score(400.0, now - timedelta(hours=1))
    fetching._finish_ok(attempt=late, score=older, duration_ms=1)
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert (tenant.last_score, tenant.last_measured_at) == (500.0, now)
    assert FetchAttempt.objects.get(pk=late.pk).status == "ok"
    assert Reading.objects.filter(tenant=tenant).count() == 2


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
