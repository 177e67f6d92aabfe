"""One planted secret, looked for everywhere a user or an operator can see output."""

import logging

from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from scoreboard import fetching
from scoreboard.models import FetchAttempt
from tenants.models import Tenant
from tests.conftest import PLANTED_SECRET, add_readings


def test_the_secret_appears_nowhere(settings, sim, staff_client, make_tenant, caplog):
    for logger in ("", "msal", "urllib3", "django", "scoreboard"):
        caplog.set_level(logging.DEBUG, logger=logger)
    settings.DEBUG = False
    # Entered through admin like a real one, then used by a fetch that fails on it.
    staff_client.post(
        reverse("admin:tenants_tenant_add"),
        {
            "name": "Leak Co",
            "slug": "leak-co",
            "enabled": "on",
            "tenant_id": "0b0e5c1a-1111-4222-8333-944445555666",
            "client_id": "7c7e5c1a-1111-4222-8333-944445555666",
            "cloud": "simulator",
            "api_region": "",
            "credential_type": "secret",
            "client_secret": PLANTED_SECRET,
            "fetch_interval_minutes": "60",
        },
    )
    tenant = Tenant.objects.get(slug="leak-co")
    add_readings(tenant, hours=3)
    attempt = FetchAttempt.objects.create(tenant=tenant, scheduled_for=tenant.created_at)
    fetching.run_attempt(attempt_id=attempt.pk)
    tenant.refresh_from_db()
    assert tenant.last_error_kind == "auth"  # the planted secret was really used

    seen = [
        staff_client.get(reverse("admin:tenants_tenant_changelist")).content,
        staff_client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk])).content,
        staff_client.get(reverse("admin:tenants_tenant_history", args=[tenant.pk])).content,
        staff_client.get(reverse("admin:tenants_fetchhealth_changelist")).content,
        staff_client.get(reverse("admin:scoreboard_fetchattempt_changelist")).content,
        staff_client.get(reverse("overview")).content,
        staff_client.get(reverse("tenant_detail", args=["leak-co"])).content,
        b"".join(staff_client.get(reverse("export_csv")).streaming_content),
        staff_client.get("/no-such-page/").content,  # the 404 page
        Client().get(reverse("healthz")).content,
    ]
    stored = [tenant.last_error, *FetchAttempt.objects.values_list("error", flat=True)]
    stored += [entry.change_message for entry in LogEntry.objects.all()]
    for output in seen:
        assert PLANTED_SECRET.encode() not in output
    for text in stored:
        assert PLANTED_SECRET not in text
    assert PLANTED_SECRET not in caplog.text
    assert caplog.text  # logging was on at DEBUG


def test_a_crash_page_shows_no_secret(settings, make_tenant, monkeypatch):
    """With DEBUG off a server error answers Django's plain 500 page, nothing more."""
    from scoreboard import views

    settings.DEBUG = False
    make_tenant(slug="crash-co", client_secret=PLANTED_SECRET)

    def crash(**kwargs):
        Tenant.objects.get(slug="crash-co").client_secret.reveal()
        raise RuntimeError("boom")

    monkeypatch.setattr(views.history, "overview_rows", crash)
    client = Client(raise_request_exception=False)
    client.force_login(
        get_user_model().objects.create_superuser("crash", "crash@example.com", "pw-crash-1")
    )
    response = client.get(reverse("overview"))
    assert response.status_code == 500
    assert PLANTED_SECRET.encode() not in response.content
