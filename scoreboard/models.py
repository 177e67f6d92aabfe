from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

from scoreboard.defender import ErrorKind


class Metric(models.TextChoices):
    SECURE_SCORE = "secure_score", "Secure Score for Devices"


class Reading(models.Model):
    """One score as the API reported it. Kept forever: this is the history."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="readings")
    metric = models.CharField(max_length=32, choices=Metric.choices, default=Metric.SECURE_SCORE)
    value = models.FloatField()
    measured_at = models.DateTimeField(help_text="The time the API reported with the score.")
    fetched_at = models.DateTimeField()
    # Null for readings imported without an attempt (the demo's backfill).
    attempt = models.ForeignKey(
        "FetchAttempt", null=True, blank=True, on_delete=models.SET_NULL, related_name="readings"
    )

    class Meta:
        ordering = ["-measured_at"]
        indexes = [
            models.Index(fields=["tenant", "metric", "measured_at"], name="reading_tenant_time"),
        ]
        constraints = [
            # A retried or redelivered task can never store a second reading.
            models.UniqueConstraint(fields=["attempt", "metric"], name="reading_once_per_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.metric}={self.value} at {self.measured_at:%Y-%m-%d %H:%M}"


class FetchAttempt(models.Model):
    """One scheduled (or requested) read of a tenant's score, with its outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        RETRYING = "retrying", "Retrying"
        OK = "ok", "OK"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule", "Schedule"
        MANUAL = "manual", "Fetch now"
        COMMAND = "command", "fetch_scores command"

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, related_name="fetch_attempts"
    )
    scheduled_for = models.DateTimeField()
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.SCHEDULE)
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    error_kind = models.CharField(max_length=20, choices=ErrorKind.choices, blank=True, default="")
    error = models.TextField(blank=True, default="")
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    correlation_id = models.CharField(max_length=100, blank=True, default="")
    tries = models.PositiveSmallIntegerField(default=0)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-scheduled_for"]
        constraints = [
            # One attempt per tenant per due time, however many dispatchers run.
            models.UniqueConstraint(
                fields=["tenant", "scheduled_for"], name="attempt_once_per_due_time"
            ),
        ]
        indexes = [models.Index(fields=["created_at"], name="attempt_created")]

    def __str__(self) -> str:
        return f"{self.tenant_id} @ {self.scheduled_for:%Y-%m-%d %H:%M} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.OK, self.Status.FAILED)


class DispatcherHeartbeat(models.Model):
    """When the dispatcher last finished a run: one row, overwritten by every run.

    /healthz reads it to tell whether beat, a worker and the broker are working together.
    """

    ONLY_ROW = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=ONLY_ROW)
    last_run_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"dispatcher last ran at {self.last_run_at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def record(cls) -> None:
        # One INSERT ... ON CONFLICT DO UPDATE: no read first, so concurrent
        # dispatchers never race to create the row.
        cls.objects.bulk_create(
            [cls(id=cls.ONLY_ROW, last_run_at=timezone.now())],
            update_conflicts=True,
            unique_fields=["id"],
            update_fields=["last_run_at"],
        )

    @classmethod
    def status(cls, *, now: datetime, limit: timedelta) -> str:
        """Return "ok" if a run finished within `limit` of `now`, else what is wrong, in words."""
        last = cls.objects.filter(id=cls.ONLY_ROW).values_list("last_run_at", flat=True).first()
        if last is None:
            return "never ran (beat, a worker and the broker must all be running)"
        age = now - last
        if age <= limit:
            return "ok"
        return f"last run {cls._span(age)} ago (limit {cls._span(limit)})"

    @staticmethod
    def _span(duration: timedelta) -> str:
        seconds = int(duration.total_seconds())
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds >= 2 * size:
                return f"{seconds // size} {unit}s"
        return f"{seconds} seconds"


class DailyScore(models.Model):
    """One tenant's readings of one metric on one UTC day, summed up: the rollup long ranges read.

    Database triggers keep it (migration 0003): every reading inserted, however it is
    inserted, adds to its day in the same transaction; a deleted reading has its day
    counted again from the readings. The mean of a day is `total / count`, exactly the
    mean of its readings; `rebuild` recounts days from the readings after a bulk load.
    """

    tenant = models.ForeignKey(
        "tenants.Tenant", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    metric = models.CharField(max_length=32, choices=Metric.choices, default=Metric.SECURE_SCORE)
    day = models.DateField()
    count = models.PositiveIntegerField()
    total = models.FloatField()
    low = models.FloatField()
    high = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "metric", "day"], name="daily_score_once_per_day"
            ),
        ]
        indexes = [models.Index(fields=["metric", "day"], name="daily_score_day")]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.metric} on {self.day}: {self.count} readings"

    @property
    def mean(self) -> float:
        return self.total / self.count

    @classmethod
    def rebuild(cls, *, tenant_ids: list[int]) -> None:
        """Count the tenants' days again from their readings (after a bulk load or a repair)."""
        from django.db import connection, transaction

        table, readings = cls._meta.db_table, Reading._meta.db_table
        day = (
            "(measured_at AT TIME ZONE 'UTC')::date"
            if connection.vendor == "postgresql"
            else "date(measured_at)"
        )
        marks = ", ".join(["%s"] * len(tenant_ids))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {table} WHERE tenant_id IN ({marks})", tenant_ids)  # noqa: S608
            cursor.execute(
                f"""
                INSERT INTO {table} (tenant_id, metric, day, count, total, low, high)
                SELECT tenant_id, metric, {day}, count(*), sum(value), min(value), max(value)
                FROM {readings} WHERE tenant_id IN ({marks})
                GROUP BY tenant_id, metric, {day}
                """,  # noqa: S608 - table names and the day expression are constants
                tenant_ids,
            )


class FleetDay(models.Model):
    """The spread of every tenant's daily mean on one closed UTC day: the fleet chart's band.

    Days before today are kept here so a year of the band is 365 small rows, not a
    percentile over 365,000 rollup rows on every page. A trigger on DailyScore
    (migration 0006) marks a day in StaleFleetDay whenever any tenant's day changes;
    `history` computes marked and missing days again before it reads them, so the
    band always matches the readings. Days without readings are kept with
    `tenants` 0 so they are not computed again.
    """

    metric = models.CharField(max_length=32, choices=Metric.choices, default=Metric.SECURE_SCORE)
    day = models.DateField()
    tenants = models.PositiveIntegerField()
    p10 = models.FloatField(null=True)
    median = models.FloatField(null=True)
    p90 = models.FloatField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["metric", "day"], name="fleet_day_once"),
        ]

    def __str__(self) -> str:
        return f"{self.metric} on {self.day}: {self.tenants} tenants"


class StaleFleetDay(models.Model):
    """A day whose FleetDay must be computed again: written by a trigger on DailyScore."""

    metric = models.CharField(max_length=32, choices=Metric.choices, default=Metric.SECURE_SCORE)
    day = models.DateField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["metric", "day"], name="stale_fleet_day_once"),
        ]

    def __str__(self) -> str:
        return f"{self.metric} on {self.day}"


class LoginFailure(models.Model):
    """A failed login, kept a day for the throttle in scoreboard.login."""

    username = models.CharField(max_length=150)
    address = models.GenericIPAddressField(null=True, blank=True)
    at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["username", "at"], name="login_failure_user"),
            models.Index(fields=["address", "at"], name="login_failure_address"),
            models.Index(fields=["at"], name="login_failure_at"),
        ]

    def __str__(self) -> str:
        return f"{self.username} from {self.address} at {self.at:%Y-%m-%d %H:%M}"
