from django.db import models

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
