"""The write side: claim due tenants, run fetch attempts, record what happened.

Idempotency lives in the database. A tenant is claimed by a compare-and-swap
on its `next_fetch_at`, so only one dispatcher wins it; an attempt is unique
per (tenant, due time); a reading is unique per (attempt, metric), so a task
that runs twice stores one reading; an attempt is closed by a conditional
update, so its outcome is recorded on the tenant once.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import DateTimeField, F, Q, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from scoreboard import defender
from scoreboard.defender import DefenderError, ErrorKind
from scoreboard.models import DispatcherHeartbeat, FetchAttempt, Metric, Reading
from tenants.models import Tenant

log = logging.getLogger(__name__)

OPEN_STATUSES = (
    FetchAttempt.Status.PENDING,
    FetchAttempt.Status.RUNNING,
    FetchAttempt.Status.RETRYING,
)


def _enqueue(attempt_id: int) -> None:
    from scoreboard.tasks import fetch

    fetch.delay(attempt_id)


def _enqueue_on_commit(attempt_id: int) -> None:
    # robust: a broker that refuses one message must not stop the dispatch of the
    # others; the attempt stays pending and expires with a message saying why.
    transaction.on_commit(lambda: _enqueue(attempt_id), robust=True)


# --- Dispatch -------------------------------------------------------------------


DISPATCH_BATCH = 200


def due_tenants(*, now: datetime) -> list[tuple[int, datetime | None, int]]:
    """(id, next_fetch_at as seen, interval in minutes) of every enabled tenant that is due."""
    return list(
        Tenant.objects.filter(enabled=True)
        .filter(Q(next_fetch_at__isnull=True) | Q(next_fetch_at__lte=now))
        .order_by("next_fetch_at", "pk")
        .values_list("pk", "next_fetch_at", "fetch_interval_minutes")
    )


def next_due_after(due: datetime, now: datetime, *, interval_minutes: int) -> datetime:
    """The first slot after `now` on the tenant's grid, which starts at `due`.

    Staying on the grid keeps readings evenly spaced; skipping the slots
    missed during downtime means one catch-up fetch, not a burst.
    """
    if due > now:
        return due
    interval = timedelta(minutes=interval_minutes)
    missed = (now - due) // interval
    return due + (missed + 1) * interval


def claim(
    *,
    tenant_id: int,
    seen_next_fetch_at: datetime | None,
    interval_minutes: int,
    now: datetime,
    trigger: str,
) -> FetchAttempt | None:
    """Claim one due tenant (as `due_tenants` saw it) and create its attempt.

    None if another claimer won.
    """
    with transaction.atomic():
        due = seen_next_fetch_at or now
        claimed = Tenant.objects.filter(pk=tenant_id, enabled=True)
        if seen_next_fetch_at is None:
            claimed = claimed.filter(next_fetch_at__isnull=True)
        else:
            claimed = claimed.filter(next_fetch_at=seen_next_fetch_at)
        next_due = next_due_after(due, now, interval_minutes=interval_minutes)
        if not claimed.update(next_fetch_at=next_due):
            return None
        attempt, created = FetchAttempt.objects.get_or_create(
            tenant_id=tenant_id, scheduled_for=due, defaults={"trigger": trigger}
        )
        if not created:
            return None
    return attempt


def dispatch_due_fetches(*, now: datetime | None = None) -> int:
    """Claim every due tenant, create its attempt, enqueue it. Returns how many.

    Claims are committed in batches: one commit per tenant made a large fleet
    wait on the disk once per tenant. Each claim is still its own
    compare-and-swap, so a dispatcher running beside this one loses the
    tenants this one won, and the other way round.
    """
    now = now or timezone.now()
    expire_stale_attempts(now=now)
    requeue_stalled_attempts(now=now)
    dispatched = 0
    due = due_tenants(now=now)
    for start in range(0, len(due), DISPATCH_BATCH):
        with transaction.atomic():
            for tenant_id, seen, interval in due[start : start + DISPATCH_BATCH]:
                attempt = claim(
                    tenant_id=tenant_id,
                    seen_next_fetch_at=seen,
                    now=now,
                    trigger=FetchAttempt.Trigger.SCHEDULE,
                    interval_minutes=interval,
                )
                if attempt is not None:
                    _enqueue_on_commit(attempt.pk)
                    dispatched += 1
    if dispatched:
        log.info("dispatched %d fetch(es)", dispatched)
    DispatcherHeartbeat.record()
    return dispatched


def fetch_now(*, tenant: Tenant, trigger: str = FetchAttempt.Trigger.MANUAL) -> FetchAttempt:
    """Create an attempt for right now, outside the schedule, and enqueue it."""
    with transaction.atomic():
        attempt = FetchAttempt.objects.create(
            tenant=tenant, scheduled_for=timezone.now(), trigger=trigger
        )
        _enqueue_on_commit(attempt.pk)
    return attempt


def _stall_limits() -> dict[str, timedelta]:
    """How long an open attempt may sit without progress before it is enqueued again.

    Pending: the broker may have lost the message. Running: the hard time limit
    has passed, so its worker died (a killed host, not just a killed child,
    which Celery redelivers at once). Retrying: its countdown has passed too.
    """
    hard_limit = timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    return {
        FetchAttempt.Status.PENDING: timedelta(minutes=settings.SCOREBOARD_ATTEMPT_REQUEUE_MINUTES),
        FetchAttempt.Status.RUNNING: hard_limit,
        FetchAttempt.Status.RETRYING: hard_limit
        + timedelta(seconds=settings.SCOREBOARD_MAX_RETRY_AFTER),
    }


def requeue_stalled_attempts(*, now: datetime) -> int:
    """Enqueue again the open attempts that stopped making progress.

    Safe because running an attempt twice stores one reading. An attempt is
    enqueued again once per stall period (the dispatcher runs every minute), so
    a long outage does not flood the queue.
    """
    window = timedelta(seconds=settings.SCOREBOARD_DISPATCH_INTERVAL_SECONDS)
    requeued = 0
    for status, limit in _stall_limits().items():
        stalled = FetchAttempt.objects.filter(status=status).filter(
            Q(started_at__lt=now - limit) | Q(started_at__isnull=True, created_at__lt=now - limit)
        )
        for attempt_id, created_at, started_at in stalled.values_list(
            "pk", "created_at", "started_at"
        ):
            if (now - (started_at or created_at)) % limit < window:
                _enqueue_on_commit(attempt_id)
                requeued += 1
    if requeued:
        log.warning("enqueued %d stalled attempt(s) again", requeued)
    return requeued


def prune_attempts(*, now: datetime) -> int:
    """Delete attempts older than the retention period. Readings are kept."""
    cutoff = now - timedelta(days=settings.SCOREBOARD_ATTEMPT_RETENTION_DAYS)
    old = FetchAttempt.objects.filter(created_at__lt=cutoff).exclude(status__in=OPEN_STATUSES)
    _, deleted = old.delete()
    return deleted.get(FetchAttempt._meta.label, 0)


def expire_stale_attempts(*, now: datetime) -> int:
    """Close attempts still open long after they were due, so the tenant's health says why."""
    cutoff = now - timedelta(minutes=settings.SCOREBOARD_ATTEMPT_EXPIRY_MINUTES)
    stale = FetchAttempt.objects.filter(
        status__in=OPEN_STATUSES, created_at__lt=cutoff
    ).select_related("tenant")
    expired = 0
    for attempt in stale:
        if attempt.status == FetchAttempt.Status.PENDING:
            cause = "no worker started this fetch"
        else:
            cause = "this fetch did not finish"
        error = DefenderError(
            ErrorKind.TRANSIENT,
            f"{attempt.tenant.name}: {cause} within "
            f"{settings.SCOREBOARD_ATTEMPT_EXPIRY_MINUTES} minutes. Fix: check that a Celery "
            "worker is running and can reach the broker (CELERY_BROKER_URL) and the database.",
        )
        if _finish_failed(attempt=attempt, error=error, now=now, duration_ms=None):
            expired += 1
    return expired


# --- Running an attempt -----------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    attempt: FetchAttempt
    score: defender.Score | None = None
    reading: Reading | None = None
    error: DefenderError | None = None
    retry_in: float | None = None  # seconds; set when the attempt should be tried again

    @property
    def ok(self) -> bool:
        return self.error is None


def retry_delay(*, error: DefenderError, tries: int) -> float | None:
    """Seconds to wait before the next try, or None when the attempt should fail now."""
    if not error.retryable or tries >= settings.SCOREBOARD_FETCH_MAX_TRIES:
        return None
    if error.kind == ErrorKind.THROTTLED:
        wait = error.retry_after if error.retry_after is not None else defender.DEFAULT_RETRY_AFTER
        if wait > settings.SCOREBOARD_MAX_RETRY_AFTER:
            return None
        # Never sooner than asked; a little later spreads the tenants that were
        # throttled together.
        return wait + random.uniform(0, min(5.0, 0.1 * wait + 0.5))
    base = settings.SCOREBOARD_RETRY_BASE_SECONDS * 2 ** (tries - 1)
    return base * random.uniform(0.75, 1.25)


def run_attempt(*, attempt_id: int) -> Outcome:
    """One try of an attempt: read the score and record the reading or the error.

    Safe to call again for the same attempt: a finished attempt is left alone,
    and the database refuses a second reading.
    """
    attempt = FetchAttempt.objects.select_related("tenant").get(pk=attempt_id)
    if attempt.is_finished:
        return Outcome(attempt=attempt)
    now = timezone.now()
    # started_at is the start of the latest try: what the stall detection watches.
    FetchAttempt.objects.filter(pk=attempt.pk, status__in=OPEN_STATUSES).update(
        status=FetchAttempt.Status.RUNNING, tries=attempt.tries + 1, started_at=now
    )
    attempt.tries += 1
    started = time.monotonic()
    try:
        score = defender.read_secure_score(defender.Credential.from_tenant(attempt.tenant))
        error = None
    except DefenderError as raised:
        error = raised
    except SoftTimeLimitExceeded:
        error = DefenderError(
            ErrorKind.TRANSIENT,
            f"{attempt.tenant.name}: the fetch took longer than the task time limit "
            f"({settings.CELERY_TASK_SOFT_TIME_LIMIT} s) and was stopped.",
        )
    if error is not None:
        duration_ms = int((time.monotonic() - started) * 1000)
        delay = retry_delay(error=error, tries=attempt.tries)
        if delay is not None:
            _mark_retrying(attempt=attempt, error=error, duration_ms=duration_ms)
            return Outcome(attempt=attempt, error=error, retry_in=delay)
        _finish_failed(attempt=attempt, error=error, now=timezone.now(), duration_ms=duration_ms)
        return Outcome(attempt=attempt, error=error)
    duration_ms = int((time.monotonic() - started) * 1000)
    reading = _finish_ok(attempt=attempt, score=score, duration_ms=duration_ms)
    return Outcome(attempt=attempt, score=score, reading=reading)


def _mark_retrying(*, attempt: FetchAttempt, error: DefenderError, duration_ms: int) -> None:
    FetchAttempt.objects.filter(pk=attempt.pk, status__in=OPEN_STATUSES).update(
        status=FetchAttempt.Status.RETRYING,
        error_kind=error.kind,
        error=str(error),
        http_status=error.http_status,
        correlation_id=error.correlation_id,
        duration_ms=duration_ms,
    )
    log.warning("attempt %s for tenant %s will be retried: %s", attempt.pk, attempt.tenant, error)


def _finish_ok(*, attempt: FetchAttempt, score: defender.Score, duration_ms: int) -> Reading | None:
    now = timezone.now()
    with transaction.atomic():
        try:
            with transaction.atomic():
                reading = Reading.objects.create(
                    tenant_id=attempt.tenant_id,
                    metric=Metric.SECURE_SCORE,
                    value=score.value,
                    measured_at=score.measured_at,
                    fetched_at=now,
                    attempt=attempt,
                )
        except IntegrityError:
            # A duplicate delivery of this attempt already stored its reading.
            reading = None
        closed = FetchAttempt.objects.filter(pk=attempt.pk, status__in=OPEN_STATUSES).update(
            status=FetchAttempt.Status.OK,
            error_kind="",
            error="",
            http_status=200,
            correlation_id="",
            duration_ms=duration_ms,
            finished_at=now,
        )
        if closed:
            attempt.tenant.record_success(value=score.value, measured_at=score.measured_at, at=now)
    attempt.status = FetchAttempt.Status.OK
    return reading


THROTTLED_SLOWDOWN_CAP = timedelta(hours=24)


def _slow_down(tenant: Tenant, *, now: datetime) -> None:
    """A tenant throttled to the end of an attempt waits longer each time, up to a day.

    It is slowed, never dropped: the first success puts it back on its interval.
    """
    interval = timedelta(minutes=tenant.fetch_interval_minutes)
    doublings = min(tenant.consecutive_failures, 6)
    wait = min(interval * 2**doublings, THROTTLED_SLOWDOWN_CAP)
    later = Value(now + wait, output_field=DateTimeField())
    Tenant.objects.filter(pk=tenant.pk).update(
        next_fetch_at=Greatest(Coalesce(F("next_fetch_at"), later), later)
    )


def _finish_failed(
    *, attempt: FetchAttempt, error: DefenderError, now: datetime, duration_ms: int | None
) -> bool:
    with transaction.atomic():
        closed = FetchAttempt.objects.filter(pk=attempt.pk, status__in=OPEN_STATUSES).update(
            status=FetchAttempt.Status.FAILED,
            error_kind=error.kind,
            error=str(error),
            http_status=error.http_status,
            correlation_id=error.correlation_id,
            duration_ms=duration_ms,
            finished_at=now,
        )
        if closed:
            attempt.tenant.record_failure(
                kind=error.kind, message=str(error), at=now, correlation_id=error.correlation_id
            )
            if error.kind == ErrorKind.THROTTLED:
                _slow_down(attempt.tenant, now=now)
    if closed:
        attempt.status = FetchAttempt.Status.FAILED
        log.warning("attempt %s for tenant %s failed: %s", attempt.pk, attempt.tenant, error)
    return bool(closed)
