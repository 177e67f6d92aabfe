"""The write side: claim due tenants, run fetch attempts, record what happened.

Idempotency lives in the database. A due tenant is claimed under a row lock
that other dispatchers skip, and moved on to its next due time in the same
transaction, so only one dispatcher wins it; an attempt is unique
per (tenant, due time); a reading is unique per (attempt, metric), so a task
that runs twice stores one reading; an attempt is closed by a conditional
update, so its outcome is recorded on the tenant once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, DateTimeField, F, Model, Q, Value, When
from django.db.models.expressions import Col
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from scoreboard import defender
from scoreboard.defender import DefenderError, ErrorKind
from scoreboard.models import DispatcherHeartbeat, FetchAttempt, Metric
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


def _enqueue_batch(attempt_ids: list[int]) -> None:
    from scoreboard.tasks import fetch_batch

    fetch_batch.delay(attempt_ids)


def _enqueue_batch_on_commit(attempt_ids: list[int]) -> None:
    # One message for the whole batch: sending is most of a dispatch's cost
    # (about 0.7 ms a message), and a worker fans it out (enqueue_each). A
    # refused or lost batch message leaves its attempts pending, and
    # requeue_stalled_attempts sends each of them again after
    # SCOREBOARD_ATTEMPT_REQUEUE_MINUTES.
    transaction.on_commit(lambda: _enqueue_batch(attempt_ids), robust=True)


def enqueue_each(*, attempt_ids: Sequence[int]) -> int:
    """Send one fetch message per attempt; returns how many the broker took.

    A refused message does not stop the others: its attempt stays pending and
    requeue_stalled_attempts sends it again. Sending an attempt twice (a batch
    redelivered after its worker died) is harmless, as running one twice is.
    """
    sent = 0
    for attempt_id in attempt_ids:
        try:
            _enqueue(attempt_id)
        except Exception:  # whatever the broker raises, the other attempts still go
            log.exception(
                "could not enqueue attempt %s; it is enqueued again after %d minutes",
                attempt_id,
                settings.SCOREBOARD_ATTEMPT_REQUEUE_MINUTES,
            )
        else:
            sent += 1
    return sent


# --- Dispatch -------------------------------------------------------------------


# Tenants claimed per transaction: large enough that the per-transaction cost
# vanishes, small enough that a second dispatcher is never kept waiting long.
DISPATCH_BATCH = 500


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


def due_tenant_ids(*, now: datetime) -> list[int]:
    """Every enabled tenant due at `now`, the longest overdue first."""
    due = Tenant.objects.filter(enabled=True).filter(
        Q(next_fetch_at__isnull=True) | Q(next_fetch_at__lte=now)
    )
    return list(due.order_by("next_fetch_at", "pk").values_list("pk", flat=True))


def claim(*, tenant_ids: Sequence[int], now: datetime, trigger: str) -> list[int]:
    """Claim those of `tenant_ids` still due at `now`; returns the ids of their new attempts.

    The claimed rows stay locked until the transaction ends and another
    claimer skips them (PostgreSQL), then finds them no longer due; on SQLite
    one writer runs at a time. A tenant that already has an attempt for its
    due time is moved on without a second one.
    """
    if not tenant_ids:
        return []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIM,
                {
                    "tenant_ids": list(tenant_ids),
                    "now": now,
                    "trigger": trigger,
                    "pending": FetchAttempt.Status.PENDING.value,
                    "created_at": timezone.now(),
                },
            )
            return [attempt_id for (attempt_id,) in cursor.fetchall()]
    return _claim_with_the_orm(tenant_ids=tenant_ids, now=now, trigger=trigger)


# One statement per batch: the ORM's four (lock, move, look for existing
# attempts, create) took about 2 s for 10,000 tenants, much of it in Python
# building the CASE and the model objects; this takes about 0.6 s, nearly all
# of it PostgreSQL writing rows and indexes (issue #6). Rows are locked by key
# alone and checked once locked (`due`), a plan that cannot go wrong when the
# statistics of next_fetch_at lag, as they always do; a row another claimer
# moved on in the meantime is read as it now is, no longer due. The next due time is
# next_due_after in SQL, to the microsecond: the first slot after `now` on the
# tenant's grid. ON CONFLICT: the tenant already has an attempt for that time.
_CLAIM = """
WITH locked AS (
    SELECT id, enabled, next_fetch_at, fetch_interval_minutes FROM tenants_tenant
    WHERE id = ANY(%(tenant_ids)s)
    FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, COALESCE(next_fetch_at, %(now)s) AS due_at, fetch_interval_minutes AS every
    FROM locked
    WHERE enabled AND (next_fetch_at IS NULL OR next_fetch_at <= %(now)s)
), moved AS (
    UPDATE tenants_tenant t
    SET next_fetch_at = due.due_at + make_interval(mins => ((div(
        (extract(epoch FROM %(now)s - due.due_at) * 1000000)::bigint,
        60000000::bigint * due.every
    ) + 1) * due.every)::integer)
    FROM due
    WHERE t.id = due.id
    RETURNING t.id, due.due_at
)
INSERT INTO scoreboard_fetchattempt
    (tenant_id, scheduled_for, trigger, status, error_kind, error, correlation_id, tries,
     created_at)
SELECT id, due_at, %(trigger)s, %(pending)s, '', '', '', 0, %(created_at)s
FROM moved
ORDER BY due_at, id
ON CONFLICT (tenant_id, scheduled_for) DO NOTHING
RETURNING id
"""


def _claim_with_the_orm(*, tenant_ids: Sequence[int], now: datetime, trigger: str) -> list[int]:
    """The claim in four statements, for SQLite: it has no UPDATE in a WITH clause."""
    with transaction.atomic():
        locked = (
            Tenant.objects.filter(pk__in=tenant_ids)
            .order_by("next_fetch_at", "pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", "enabled", "next_fetch_at", "fetch_interval_minutes")
        )
        due_at: dict[int, datetime] = {}
        moved_to: dict[datetime, list[int]] = defaultdict(list)
        for pk, enabled, seen, interval in locked:
            if not enabled or (seen is not None and seen > now):
                continue  # disabled, or claimed by another claimer since it was read
            due_at[pk] = seen or now
            moved_to[next_due_after(due_at[pk], now, interval_minutes=interval)].append(pk)
        if not due_at:
            return []
        Tenant.objects.filter(pk__in=due_at).update(
            next_fetch_at=Case(
                *(When(pk__in=pks, then=Value(at)) for at, pks in moved_to.items()),
                output_field=DateTimeField(),
            )
        )
        existing = set(
            FetchAttempt.objects.filter(
                tenant_id__in=due_at, scheduled_for__in=set(due_at.values())
            ).values_list("tenant_id", "scheduled_for")
        )
        created = FetchAttempt.objects.bulk_create(
            FetchAttempt(tenant_id=pk, scheduled_for=due, trigger=trigger)
            for pk, due in due_at.items()
            if (pk, due) not in existing
        )
        return [attempt.pk for attempt in created]


def dispatch_due_fetches(*, now: datetime | None = None) -> int:
    """Claim every due tenant, create its attempt, enqueue it. Returns how many.

    Tenants are claimed a batch per transaction: one statement (PostgreSQL)
    and one commit for many tenants, then one message that a worker fans out
    into a fetch per attempt. A dispatcher running beside this one claims only
    the tenants this one has not.
    """
    now = now or timezone.now()
    expire_stale_attempts(now=now)
    requeue_stalled_attempts(now=now)
    dispatched = 0
    due = due_tenant_ids(now=now)
    for start in range(0, len(due), DISPATCH_BATCH):
        with transaction.atomic():
            attempt_ids = claim(
                tenant_ids=due[start : start + DISPATCH_BATCH],
                now=now,
                trigger=FetchAttempt.Trigger.SCHEDULE,
            )
            if attempt_ids:
                _enqueue_batch_on_commit(attempt_ids)
        dispatched += len(attempt_ids)
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
    a long outage does not flood the queue. This is also what recovers a lost
    or refused batch message (dispatch_due_fetches): its attempts were never
    started, so they stay pending and each is sent here on its own.
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


# Every fetch runs these statements, so they are written in SQL: the ORM spent
# about 1 ms of CPU building each one, most of a fetch's CPU, and a threaded
# worker's fetches share one core through the GIL (issue #6). The SQL is plain
# enough for PostgreSQL and SQLite alike; the rarer failure paths use the ORM.
_MARK_RUNNING = (
    "UPDATE scoreboard_fetchattempt SET status = %s, tries = %s, started_at = %s "
    "WHERE id = %s AND status IN (%s, %s, %s)"
)
_INSERT_READING = (
    "INSERT INTO scoreboard_reading "
    "(tenant_id, metric, value, measured_at, fetched_at, attempt_id) "
    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (attempt_id, metric) DO NOTHING"
)
_CLOSE_OK = (
    "UPDATE scoreboard_fetchattempt SET status = %s, error_kind = '', error = '', "
    "http_status = %s, correlation_id = '', duration_ms = %s, finished_at = %s "
    "WHERE id = %s AND status IN (%s, %s, %s)"
)


# On PostgreSQL a success is stored by one statement, atomic by itself, instead of
# BEGIN, three statements and COMMIT: with 50 fetching threads each round trip
# waited about 10 ms for its turn, and the five took ~40 ms of every fetch (issue
# #6). Its last part is the tenant's success UPDATE, run only when this attempt was
# the one closed.
_FINISH_OK_POSTGRESQL = (
    f"WITH reading AS ({_INSERT_READING}), "  # noqa: S608 - our own statements, no input
    f"closed AS ({_CLOSE_OK} RETURNING tenant_id) "
    f"{Tenant.RECORD_SUCCESS_SQL}"
    "WHERE id IN (SELECT tenant_id FROM closed)"
)


def _execute(sql: str, params: Sequence[object]) -> int:
    """Run one statement; returns how many rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _db_time(value: datetime) -> object:
    """A time as the ORM would store it (SQLite keeps text in UTC)."""
    return connection.ops.adapt_datetimefield_value(value)


def _columns(model: type[Model], alias: str) -> str:
    names = (connection.ops.quote_name(f.column) for f in model._meta.concrete_fields)
    return ", ".join(f"{alias}.{name}" for name in names)


# The column names come from the models, never from input.
_SELECT_ATTEMPT = (
    f"SELECT {_columns(FetchAttempt, 'a')}, {_columns(Tenant, 't')} "  # noqa: S608
    "FROM scoreboard_fetchattempt a JOIN tenants_tenant t ON t.id = a.tenant_id WHERE a.id = %s"
)
_ATTEMPT_COLUMNS = len(FetchAttempt._meta.concrete_fields)
# On PostgreSQL an open attempt is marked running and read with its tenant in one
# round trip; under 50 fetching threads each round trip waits its turn (issue #6).
_START_ATTEMPT_POSTGRESQL = (
    "WITH a AS (UPDATE scoreboard_fetchattempt "  # noqa: S608 - model columns only
    "SET status = %s, tries = tries + 1, started_at = %s "
    "WHERE id = %s AND status IN (%s, %s, %s) RETURNING *) "
    f"SELECT {_columns(FetchAttempt, 'a')}, {_columns(Tenant, 't')} "
    "FROM a JOIN tenants_tenant t ON t.id = a.tenant_id"
)


ModelT = TypeVar("ModelT", bound=Model)


class _Conversions(threading.local):
    """Per model, the ORM's conversions of the values a database returns.

    They belong to a thread's database connection, hence one set per thread.
    """

    def __init__(self) -> None:
        self.by_model: dict[type[Model], list[tuple[int, Col, list[Any]]]] = {}

    def instance(self, model: type[ModelT], values: Sequence[object]) -> ModelT:
        steps = self.by_model.get(model)
        if steps is None:
            steps = self.by_model[model] = []
            for index, field in enumerate(model._meta.concrete_fields):
                column = field.get_col(model._meta.db_table)
                found = connection.ops.get_db_converters(column) + column.get_db_converters(
                    connection
                )
                if found:
                    steps.append((index, column, found))
        converted = list(values)
        for index, column, converters in steps:
            for convert in converters:
                converted[index] = convert(converted[index], column, connection)
        names = [f.attname for f in model._meta.concrete_fields]
        return model.from_db(connection.alias, names, converted)


_conversions = _Conversions()


def _load_attempt(attempt_id: int) -> FetchAttempt:
    """What select_related("tenant").get(pk=attempt_id) gives, for a quarter of its CPU."""
    with connection.cursor() as cursor:
        cursor.execute(_SELECT_ATTEMPT, [attempt_id])
        row = cursor.fetchone()
    if row is None:
        raise FetchAttempt.DoesNotExist(f"fetch attempt {attempt_id} does not exist")
    return _attempt_from_row(row)


def _attempt_from_row(row: Sequence[object]) -> FetchAttempt:
    attempt = _conversions.instance(FetchAttempt, row[:_ATTEMPT_COLUMNS])
    attempt.tenant = _conversions.instance(Tenant, row[_ATTEMPT_COLUMNS:])
    return attempt


def _start_attempt(attempt_id: int) -> FetchAttempt:
    """The attempt, marked running for one more try if it is still open.

    started_at is the start of the latest try: what the stall detection watches.
    A finished attempt comes back as it is, unchanged.
    """
    now = _db_time(timezone.now())
    running = FetchAttempt.Status.RUNNING.value
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_START_ATTEMPT_POSTGRESQL, [running, now, attempt_id, *OPEN_STATUSES])
            row = cursor.fetchone()
        return _load_attempt(attempt_id) if row is None else _attempt_from_row(row)
    attempt = _load_attempt(attempt_id)
    if not attempt.is_finished:
        _execute(_MARK_RUNNING, [running, attempt.tries + 1, now, attempt.pk, *OPEN_STATUSES])
        attempt.tries += 1
    return attempt


def run_attempt(*, attempt_id: int) -> Outcome:
    """One try of an attempt: read the score and record the reading or the error.

    Safe to call again for the same attempt: a finished attempt is left alone,
    and the database refuses a second reading.
    """
    attempt = _start_attempt(attempt_id)
    if attempt.is_finished:
        return Outcome(attempt=attempt)
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
    _finish_ok(attempt=attempt, score=score, duration_ms=duration_ms)
    return Outcome(attempt=attempt, score=score)


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


def _finish_ok(*, attempt: FetchAttempt, score: defender.Score, duration_ms: int) -> None:
    now = timezone.now()
    measured_at, at = _db_time(score.measured_at), _db_time(now)
    # ON CONFLICT: a duplicate delivery of this attempt already stored its reading.
    reading = [
        attempt.tenant_id,
        Metric.SECURE_SCORE.value,
        score.value,
        measured_at,
        at,
        attempt.pk,
    ]
    close = [FetchAttempt.Status.OK.value, 200, duration_ms, at, attempt.pk, *OPEN_STATUSES]
    if connection.vendor == "postgresql":
        success = Tenant.success_params(value=score.value, measured_at=score.measured_at, at=now)
        if _execute(_FINISH_OK_POSTGRESQL, [*reading, *close, *success]):
            attempt.tenant.recorded_success(at=now)
    else:
        with transaction.atomic():
            _execute(_INSERT_READING, reading)
            if _execute(_CLOSE_OK, close):
                attempt.tenant.record_success(
                    value=score.value, measured_at=score.measured_at, at=now
                )
    attempt.status = FetchAttempt.Status.OK


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
