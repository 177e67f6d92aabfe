from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from scoreboard import defender, fetching
from tenants import certificates, clouds
from tenants.models import FetchHealth, Tenant

GUID_ERROR = "Enter a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47 (Entra ID shows it)."
TEST_CONNECTION_LIMIT = 10


class TenantForm(forms.ModelForm):
    # Inputs that never render a value: the stored secret or key cannot be read
    # back from the page, and leaving them blank keeps what is stored.
    client_secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The client secret's Value from the app registration. Stored encrypted and "
        "never shown again; leave blank to keep the stored one.",
    )
    private_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 4, "autocomplete": "off", "spellcheck": "false"}),
        help_text="For a certificate credential: the private key (PEM, unencrypted). Stored "
        "encrypted and never shown again; leave blank to keep the stored one.",
    )

    class Meta:
        model = Tenant
        fields = [
            "name",
            "slug",
            "enabled",
            "tenant_id",
            "client_id",
            "cloud",
            "api_region",
            "credential_type",
            "client_secret",
            "certificate",
            "private_key",
            "credential_expires_at",
            "fetch_interval_minutes",
            "viewers",
            "viewer_groups",
        ]
        widgets = {
            "certificate": forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
            "credential_type": forms.RadioSelect,
        }
        error_messages = {
            "tenant_id": {"invalid": GUID_ERROR},
            "client_id": {"invalid": GUID_ERROR},
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial.pop("client_secret", None)
        self.initial.pop("private_key", None)
        cloud_field = self.fields["cloud"]
        choices = clouds.available_choices()
        if self.instance.pk and self.instance.cloud not in dict(choices):
            # Keep a row's current value visible even when its cloud was switched off.
            choices = choices + [c for c in clouds.CLOUD_CHOICES if c[0] == self.instance.cloud]
        cloud_field.choices = choices
        if self.instance.pk and self.instance.client_secret:
            self.fields["client_secret"].help_text = (
                "A secret is stored (encrypted). Leave blank to keep it, or paste a new Value "
                "to replace it."
            )
        if self.instance.pk and self.instance.private_key:
            self.fields["private_key"].help_text = (
                "A private key is stored (encrypted). Leave blank to keep it, or paste a new "
                "one to replace it."
            )

    def _kept(self, name: str, message: str):
        """The new value of a write-only field, or the stored one when left blank."""
        new = self.cleaned_data.get(name, "")
        if new:
            return new
        stored = getattr(self.instance, name) if self.instance.pk else None
        if stored:
            return stored  # the SealedSecret: stored value unchanged
        if self.cleaned_data.get("credential_type", Tenant.CredentialType.SECRET) == name_type(
            name
        ):
            raise forms.ValidationError(message)
        return ""

    def clean_client_secret(self):
        return self._kept(
            "client_secret",
            "Paste the client secret's Value from the app registration (Certificates & secrets).",
        )

    def clean_private_key(self):
        return self._kept(
            "private_key", "Paste the certificate's private key (PEM) for a certificate credential."
        )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("credential_type") != Tenant.CredentialType.CERTIFICATE:
            return cleaned
        pem = (cleaned.get("certificate") or "").strip()
        if not pem:
            self.add_error("certificate", "Paste the certificate (PEM) uploaded to the app.")
            return cleaned
        try:
            certificate = certificates.load(pem)
        except ValueError as problem:
            self.add_error("certificate", str(problem))
            return cleaned
        key = cleaned.get("private_key")
        if isinstance(key, str) and key:
            try:
                certificates.check_key(certificate, key)
            except ValueError as problem:
                self.add_error("private_key", str(problem))
                return cleaned
        cleaned["certificate"] = pem
        # The certificate knows when it expires; no need to type it.
        cleaned["credential_expires_at"] = certificate.not_valid_after_utc.date()
        self.instance.credential_expires_at = cleaned["credential_expires_at"]
        return cleaned


def name_type(field: str) -> str:
    """The credential type a write-only field belongs to."""
    return (
        Tenant.CredentialType.CERTIFICATE
        if field == "private_key"
        else Tenant.CredentialType.SECRET
    )


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["name", "cloud", "enabled", "score", "last_success", "health"]
    list_filter = ["enabled", "cloud", "last_error_kind"]
    search_fields = ["name", "slug", "tenant_id", "client_id"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["viewers", "viewer_groups"]
    actions = ["test_connection", "fetch_now"]
    readonly_fields = [
        "thumbprint",
        "next_fetch_at",
        "last_score",
        "last_measured_at",
        "last_success_at",
        "last_error_at",
        "last_error_kind",
        "last_error",
        "last_error_correlation_id",
        "consecutive_failures",
        "failing_since",
    ]
    fieldsets = [
        (None, {"fields": ["name", "slug", "enabled"]}),
        (
            "Credential (app registration)",
            {
                "fields": [
                    "tenant_id",
                    "client_id",
                    "cloud",
                    "api_region",
                    "credential_type",
                    "client_secret",
                    "certificate",
                    "thumbprint",
                    "private_key",
                    "credential_expires_at",
                ]
            },
        ),
        ("Schedule", {"fields": ["fetch_interval_minutes", "next_fetch_at"]}),
        (
            "Access",
            {
                "fields": ["viewers", "viewer_groups"],
                "description": "Staff see every tenant; these users and groups see this one.",
            },
        ),
        (
            "Health",
            {
                "fields": [
                    "last_score",
                    "last_measured_at",
                    "last_success_at",
                    "consecutive_failures",
                    "failing_since",
                    "last_error_at",
                    "last_error_kind",
                    "last_error",
                    "last_error_correlation_id",
                ]
            },
        ),
    ]

    @admin.display(description="Certificate thumbprint (SHA-1, as Entra ID shows it)")
    def thumbprint(self, tenant: Tenant) -> str:
        if not tenant.certificate:
            return "—"
        try:
            return certificates.thumbprint(certificates.load(tenant.certificate))
        except ValueError:
            return "the stored certificate cannot be read"

    @admin.display(description="Last score", ordering="last_score")
    def score(self, tenant: Tenant) -> str:
        return "—" if tenant.last_score is None else f"{tenant.last_score:g}"

    @admin.display(description="Last success", ordering="last_success_at")
    def last_success(self, tenant: Tenant) -> str:
        if tenant.last_success_at is None:
            return "never"
        return timezone.localtime(tenant.last_success_at).strftime("%Y-%m-%d %H:%M UTC")

    @admin.display(description="Health", ordering="consecutive_failures")
    def health(self, tenant: Tenant) -> str:
        if not tenant.enabled:
            return format_html('<span class="health health-off">{}</span>', "disabled")
        if tenant.is_failing:
            since = timezone.localtime(tenant.failing_since).strftime("%Y-%m-%d %H:%M UTC")
            kind = defender.ErrorKind(tenant.last_error_kind).label
            return format_html(
                '<span class="health health-failing" title="{}">failing since {} ({} in a row): '
                "{}: {}</span>",
                tenant.last_error,
                since,
                tenant.consecutive_failures,
                kind,
                tenant.last_error_summary,
            )
        warning = tenant.credential_warning()
        if warning:
            return format_html('<span class="health health-warning">{}</span>', warning)
        if tenant.last_success_at is None:
            return format_html('<span class="health">{}</span>', "waiting for first fetch")
        return format_html('<span class="health health-ok">{}</span>', "ok")

    @admin.action(description="Test connection (sign in and read the score now, store nothing)")
    def test_connection(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        if queryset.count() > TEST_CONNECTION_LIMIT:
            self.message_user(
                request,
                f"Test at most {TEST_CONNECTION_LIMIT} tenants at a time: each test waits "
                "for Microsoft's answer.",
                messages.WARNING,
            )
            return
        for tenant in queryset:
            try:
                score = defender.check_connection(tenant)
            except defender.DefenderError as error:
                self.message_user(
                    request, f"{error.kind.label.capitalize()}: {error}", messages.ERROR
                )
            else:
                measured = score.measured_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                self.message_user(
                    request,
                    f"{tenant.name}: connection works. Secure score {score.value:g} "
                    f"(measured {measured}). Nothing was stored.",
                    messages.SUCCESS,
                )

    @admin.action(description="Fetch now (queue a fetch and store the reading)")
    def fetch_now(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
        count = 0
        for tenant in queryset:
            fetching.fetch_now(tenant=tenant)
            count += 1
        self.message_user(
            request,
            f"Queued a fetch for {count} tenant(s). The result appears under Health once a "
            "worker has run it.",
            messages.SUCCESS,
        )


@admin.register(FetchHealth)
class FetchHealthAdmin(admin.ModelAdmin):
    """Failing tenants, worst first: what broke, since when, and what support needs."""

    list_display = [
        "name",
        "error_kind",
        "failing_since",
        "consecutive_failures",
        "last_error_at",
        "last_error",
        "last_error_correlation_id",
    ]
    list_display_links = ["name"]
    list_filter = ["last_error_kind", "cloud"]
    search_fields = ["name", "slug", "last_error", "last_error_correlation_id"]
    ordering = ["-consecutive_failures", "failing_since"]
    actions = None

    def get_queryset(self, request: HttpRequest) -> QuerySet[FetchHealth]:
        return super().get_queryset(request).filter(consecutive_failures__gt=0, enabled=True)

    @admin.display(description="Error", ordering="last_error_kind")
    def error_kind(self, tenant: FetchHealth) -> str:
        return defender.ErrorKind(tenant.last_error_kind).label if tenant.last_error_kind else ""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
