from datetime import date, datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import connection, models
from django.db.models.functions import Coalesce
from django.utils import timezone

from tenants import clouds
from tenants.crypto import EncryptedTextField

EXPIRY_WARNING_DAYS = 14


class Tenant(models.Model):
    """A Defender for Endpoint tenant and the app credential used to read it."""

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(
        max_length=80, unique=True, help_text="The tenant's address in Scoreboard's pages."
    )
    tenant_id = models.UUIDField(
        "Tenant ID",
        help_text="Directory (tenant) ID from Entra ID > Overview, a GUID.",
    )
    client_id = models.UUIDField(
        "Client ID",
        help_text="Application (client) ID of the app registration, a GUID.",
    )

    class CredentialType(models.TextChoices):
        SECRET = "secret", "Client secret"
        CERTIFICATE = "certificate", "Certificate"

    credential_type = models.CharField(
        max_length=12, choices=CredentialType.choices, default=CredentialType.SECRET
    )
    client_secret = EncryptedTextField(
        blank=True, help_text="Stored encrypted; never shown again once saved."
    )
    certificate = models.TextField(
        blank=True, default="", help_text="The app registration's certificate (public, PEM)."
    )
    private_key = EncryptedTextField(
        blank=True, help_text="The certificate's private key (PEM), stored encrypted."
    )
    credential_expires_at = models.DateField(
        "credential expires",
        null=True,
        blank=True,
        help_text="When the secret or certificate expires (read from a certificate). "
        f"Health warns {EXPIRY_WARNING_DAYS} days before.",
    )
    cloud = models.CharField(max_length=20, choices=clouds.CLOUD_CHOICES, default="commercial")
    api_region = models.CharField(
        "API region",
        max_length=8,
        choices=clouds.REGION_CHOICES,
        blank=True,
        default="",
        help_text="Commercial cloud only: a regional API host keeps calls in that geography.",
    )
    enabled = models.BooleanField(default=True)
    fetch_interval_minutes = models.PositiveIntegerField(
        default=60,
        validators=[MinValueValidator(5), MaxValueValidator(7 * 24 * 60)],
        help_text="How often the score is read: 5 minutes to 7 days.",
    )
    next_fetch_at = models.DateTimeField(null=True, blank=True, db_index=True)

    # Health, written by scoreboard.fetching after every finished attempt.
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error_kind = models.CharField(max_length=20, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    last_error_correlation_id = models.CharField(
        "correlation id", max_length=100, blank=True, default=""
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    # The newest reading, kept here so lists of tenants need no join over readings.
    last_score = models.FloatField(null=True, blank=True)
    last_measured_at = models.DateTimeField(null=True, blank=True)

    # Who may see this tenant's history besides staff (see tenants.access).
    viewers = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="viewable_tenants",
        help_text="Users who may see this tenant's scores (staff see every tenant).",
    )
    viewer_groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="viewable_tenants",
        help_text="Groups whose members may see this tenant's scores.",
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant_id", "client_id"], name="tenant_unique_credential"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors = {}
        if self.api_region and self.cloud != "commercial":
            errors["api_region"] = "Regional API hosts exist only in the commercial cloud."
        if self.cloud == clouds.SIMULATOR and not clouds.simulator_enabled():
            errors["cloud"] = (
                "The simulator cloud is available only when SCOREBOARD_SIMULATOR_URL is set."
            )
        if errors:
            raise ValidationError(errors)

    @property
    def is_failing(self) -> bool:
        return self.consecutive_failures > 0

    @property
    def last_error_summary(self) -> str:
        """The cause in a few words: the first sentence of the stored error, without the name."""
        text = self.last_error.removeprefix(f"{self.name}: ")
        return text.split(". ")[0].rstrip(".")

    def credential_warning(self, today: date | None = None) -> str:
        """A warning when the secret or certificate expires soon (or did)."""
        if self.credential_expires_at is None:
            return ""
        today = today or timezone.now().date()
        what = "certificate" if self.credential_type == "certificate" else "client secret"
        days = (self.credential_expires_at - today).days
        if days < 0:
            return f"the {what} expired on {self.credential_expires_at:%Y-%m-%d}"
        if days <= EXPIRY_WARNING_DAYS:
            return (
                f"the {what} expires on {self.credential_expires_at:%Y-%m-%d} "
                f"(in {days} day{'s' if days != 1 else ''}): create a new one"
            )
        return ""

    # The UPDATE a success makes, with its parameters in `success_params` order. A late
    # retry must not replace a newer score with an older one: both CASEs compare the
    # row's old last_measured_at. Written in SQL: every fetch runs it, and the ORM
    # spent about 1.7 ms of CPU building it (issue #6); fetching folds it into the
    # statement that stores a reading on PostgreSQL.
    RECORD_SUCCESS_SQL = (
        "UPDATE tenants_tenant SET last_success_at = %s, consecutive_failures = 0, "
        "failing_since = NULL, last_error_kind = '', last_error = '', "
        "last_error_correlation_id = '', "
        "last_score = CASE WHEN last_measured_at IS NULL OR last_measured_at <= %s "
        "THEN %s ELSE last_score END, "
        "last_measured_at = CASE WHEN last_measured_at IS NULL OR last_measured_at <= %s "
        "THEN %s ELSE last_measured_at END "
    )

    @staticmethod
    def success_params(*, value: float, measured_at: datetime, at: datetime) -> list:
        when, now = (connection.ops.adapt_datetimefield_value(t) for t in (measured_at, at))
        return [now, when, float(value), when, when]

    def record_success(self, *, value: float, measured_at: datetime, at: datetime) -> None:
        """Store the outcome of a successful attempt on this row, in one UPDATE."""
        with connection.cursor() as cursor:
            cursor.execute(
                self.RECORD_SUCCESS_SQL + "WHERE id = %s",
                [*self.success_params(value=value, measured_at=measured_at, at=at), self.pk],
            )
        self.recorded_success(at=at)

    def recorded_success(self, *, at: datetime) -> None:
        """What a success leaves on this instance, once its UPDATE has run."""
        self.last_success_at = at
        self.consecutive_failures = 0
        self.failing_since = None
        self.last_error_kind = self.last_error = self.last_error_correlation_id = ""

    def record_failure(
        self, *, kind: str, message: str, at: datetime, correlation_id: str = ""
    ) -> None:
        """Store the outcome of a failed attempt on this row, in one UPDATE."""
        Tenant.objects.filter(pk=self.pk).update(
            last_error_at=at,
            last_error_kind=kind,
            last_error=message,
            last_error_correlation_id=correlation_id,
            consecutive_failures=models.F("consecutive_failures") + 1,
            failing_since=Coalesce(models.F("failing_since"), models.Value(at)),
        )
        # The counter and the start of the failure run were computed by the database.
        self.refresh_from_db(fields=["consecutive_failures", "failing_since"])
        self.last_error_at = at
        self.last_error_kind = kind
        self.last_error = message
        self.last_error_correlation_id = correlation_id


class FetchHealth(Tenant):
    """The tenants whose fetches fail, as admin's "Fetch health" page lists them."""

    class Meta:
        proxy = True
        verbose_name = "fetch health"
        verbose_name_plural = "fetch health"
