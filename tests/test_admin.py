"""The tenant admin: what an admin sees, and what it stores."""

import logging
import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from scoreboard.models import FetchAttempt, Reading
from scoreboard.simulator import DEFAULT_CLIENT_SECRET
from tenants.models import Tenant
from tests.conftest import PLANTED_SECRET, add_readings, queries_of

ADD_URL = reverse("admin:tenants_tenant_add")
LIST_URL = reverse("admin:tenants_tenant_changelist")


def change_url(tenant: Tenant) -> str:
    return reverse("admin:tenants_tenant_change", args=[tenant.pk])


def form_data(**overrides) -> dict:
    data = {
        "name": "Adatum",
        "slug": "adatum",
        "enabled": "on",
        "tenant_id": str(uuid.uuid4()),
        "client_id": str(uuid.uuid4()),
        "credential_type": "secret",
        "client_secret": PLANTED_SECRET,
        "cloud": "commercial",
        "api_region": "",
        "fetch_interval_minutes": "60",
    }
    data.update(overrides)
    return data


def test_adding_a_tenant_stores_the_secret_encrypted(staff_client):
    response = staff_client.post(ADD_URL, form_data())
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant = Tenant.objects.get(slug="adatum")
    assert tenant.client_secret.reveal() == PLANTED_SECRET
    raw = Tenant.objects.filter(pk=tenant.pk).values_list("client_secret", flat=True)

    with connection.cursor() as cursor:
        cursor.execute("SELECT client_secret FROM tenants_tenant WHERE id = %s", [tenant.pk])
        stored = cursor.fetchone()[0]
    assert PLANTED_SECRET not in stored
    assert stored.startswith("gAAAAA")  # a Fernet token
    assert raw  # the field loads without decrypting


def test_the_secret_never_appears_in_admin_pages(staff_client, caplog):
    caplog.set_level(logging.DEBUG)
    staff_client.post(ADD_URL, form_data())
    tenant = Tenant.objects.get(slug="adatum")
    pages = [
        LIST_URL,
        change_url(tenant),
        reverse("admin:tenants_tenant_history", args=[tenant.pk]),
        reverse("admin:tenants_tenant_delete", args=[tenant.pk]),
    ]
    for url in pages:
        html = staff_client.get(url).content.decode()
        assert PLANTED_SECRET not in html, url
        assert tenant.client_secret.ciphertext not in html, url
    assert PLANTED_SECRET not in caplog.text
    for entry in LogEntry.objects.all():
        assert PLANTED_SECRET not in entry.change_message


def test_leaving_the_secret_blank_keeps_it(staff_client):
    staff_client.post(ADD_URL, form_data())
    tenant = Tenant.objects.get(slug="adatum")
    before = tenant.client_secret.ciphertext
    response = staff_client.post(
        change_url(tenant), form_data(client_secret="", name="Adatum Corp", **_ids(tenant))
    )
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert tenant.name == "Adatum Corp"
    assert tenant.client_secret.ciphertext == before
    assert tenant.client_secret.reveal() == PLANTED_SECRET


def test_a_new_secret_replaces_the_old(staff_client):
    staff_client.post(ADD_URL, form_data())
    tenant = Tenant.objects.get(slug="adatum")
    staff_client.post(change_url(tenant), form_data(client_secret="brand-new", **_ids(tenant)))
    tenant.refresh_from_db()
    assert tenant.client_secret.reveal() == "brand-new"


def _ids(tenant: Tenant) -> dict:
    return {"tenant_id": str(tenant.tenant_id), "client_id": str(tenant.client_id)}


def test_a_new_tenant_needs_a_secret(staff_client):
    response = staff_client.post(ADD_URL, form_data(client_secret=""))
    assert response.status_code == 200
    assert "Paste the client secret" in response.content.decode()
    assert not Tenant.objects.exists()


@pytest.mark.parametrize("field", ["tenant_id", "client_id"])
def test_ids_must_be_guids(staff_client, field):
    response = staff_client.post(ADD_URL, form_data(**{field: "contoso.onmicrosoft.com"}))
    assert response.status_code == 200
    assert "Enter a GUID such as" in response.content.decode()
    assert not Tenant.objects.exists()


def test_regions_exist_only_in_the_commercial_cloud(staff_client):
    response = staff_client.post(ADD_URL, form_data(cloud="gcc_high", api_region="eu"))
    assert response.status_code == 200
    assert "Regional API hosts exist only in the commercial cloud" in response.content.decode()


def test_simulator_cloud_is_offered_only_when_configured(staff_client, settings):
    settings.SCOREBOARD_SIMULATOR_URL = ""
    assert 'value="simulator"' not in staff_client.get(ADD_URL).content.decode()
    response = staff_client.post(ADD_URL, form_data(cloud="simulator"))
    assert response.status_code == 200
    assert not Tenant.objects.exists()
    settings.SCOREBOARD_SIMULATOR_URL = "https://127.0.0.1:8443"
    assert 'value="simulator"' in staff_client.get(ADD_URL).content.decode()


def test_list_shows_score_and_health(staff_client, make_tenant, sim):
    healthy = make_tenant(name="Healthy Co", last_score=612.5)
    healthy.record_success(value=612.5, measured_at=_now(), at=_now())
    failing = make_tenant(name="Broken Co")
    failing.record_failure(
        kind="auth",
        message="Broken Co: the client secret is invalid. Fix: create a new one. (AADSTS7000215)",
        at=_now(),
    )
    html = staff_client.get(LIST_URL).content.decode()
    assert "612.5" in html
    assert '<span class="health health-ok">ok</span>' in html
    assert "(1 in a row): sign-in rejected: the client secret is invalid</span>" in html


def _now():
    from django.utils import timezone

    return timezone.now()


def test_test_connection_shows_the_score_and_stores_nothing(staff_client, make_tenant, sim):
    tenant = make_tenant(name="Probe Co")
    response = staff_client.post(
        LIST_URL, {"action": "test_connection", "_selected_action": [tenant.pk]}, follow=True
    )
    html = response.content.decode()
    assert "Probe Co: connection works. Secure score" in html
    assert not Reading.objects.exists()
    assert not FetchAttempt.objects.exists()
    tenant.refresh_from_db()
    assert tenant.last_success_at is None


def test_test_connection_shows_the_classified_error(staff_client, make_tenant, sim):
    tenant = make_tenant(name="Wrong Secret Co", client_secret=PLANTED_SECRET)
    response = staff_client.post(
        LIST_URL, {"action": "test_connection", "_selected_action": [tenant.pk]}, follow=True
    )
    html = response.content.decode()
    assert "Sign-in rejected: Wrong Secret Co: the client secret is invalid." in html
    assert PLANTED_SECRET not in html
    tenant.refresh_from_db()
    assert tenant.consecutive_failures == 0  # a test stores nothing


def test_fetch_now_queues_an_attempt_that_stores_a_reading(
    staff_client, make_tenant, sim, django_capture_on_commit_callbacks
):
    tenant = make_tenant(client_secret=DEFAULT_CLIENT_SECRET)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            LIST_URL, {"action": "fetch_now", "_selected_action": [tenant.pk]}, follow=True
        )
    assert "Queued a fetch for 1 tenant(s)" in response.content.decode()
    attempt = FetchAttempt.objects.get(tenant=tenant)
    assert (attempt.trigger, attempt.status) == ("manual", "ok")
    assert Reading.objects.get(tenant=tenant).attempt == attempt


def test_fetch_health_lists_failing_tenants_with_what_support_needs(staff_client, make_tenant, sim):
    from scoreboard import fetching
    from scoreboard.models import FetchAttempt

    make_tenant(name="Fine Co")
    broken = make_tenant(name="Forbidden Co")
    sim.set_fault(str(broken.tenant_id), "forbidden")
    attempt = FetchAttempt.objects.create(tenant=broken, scheduled_for=_now())
    fetching.run_attempt(attempt_id=attempt.pk)
    broken.refresh_from_db()
    assert len(broken.last_error_correlation_id) == 36
    html = staff_client.get(reverse("admin:tenants_fetchhealth_changelist")).content.decode()
    assert "Forbidden Co" in html
    assert "Fine Co" not in html
    assert "missing permission" in html
    assert broken.last_error_correlation_id in html
    assert "Score.Read.All" in html


def test_fetch_health_is_for_staff_only(client, make_tenant):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("plain", password="pw-plain-1")
    client.force_login(user)
    response = client.get(reverse("admin:tenants_fetchhealth_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_admin_pages_show_a_banner_while_the_simulator_is_on(staff_client, settings):
    settings.SCOREBOARD_SIMULATOR_URL = "https://127.0.0.1:8443"
    html = staff_client.get(reverse("admin:index")).content.decode()
    assert 'id="simulator-banner"' in html
    assert "Unset it in production" in html
    settings.SCOREBOARD_SIMULATOR_URL = ""
    assert 'id="simulator-banner"' not in staff_client.get(reverse("admin:index")).content.decode()


def test_the_simulator_is_announced_at_start_when_debug_is_off(settings, caplog):
    from django.apps import apps

    settings.SCOREBOARD_SIMULATOR_URL = "https://127.0.0.1:8443"
    settings.DEBUG = False
    apps.get_app_config("scoreboard").ready()
    assert "SCOREBOARD_SIMULATOR_URL is set" in caplog.text


def test_nothing_an_admin_enters_points_a_tenant_at_another_host(staff_client, settings):
    """Tenant id and client id are GUIDs, cloud and region are choices: no URL to enter."""
    settings.SCOREBOARD_SIMULATOR_URL = ""
    for field, value in [
        ("tenant_id", "evil.example.com"),
        ("tenant_id", "../../evil.example.com/x"),
        ("client_id", "https://evil.example.com"),
        ("cloud", "https://evil.example.com"),
        ("cloud", "simulator"),
        ("api_region", "evil.example.com"),
    ]:
        response = staff_client.post(ADD_URL, form_data(**{field: value}))
        assert response.status_code == 200, (field, value)
    assert not Tenant.objects.exists()


ADMIN_LISTS = [
    "admin:tenants_tenant_changelist",
    "admin:tenants_fetchhealth_changelist",
    "admin:scoreboard_fetchattempt_changelist",
    "admin:scoreboard_reading_changelist",
]


@pytest.mark.parametrize("name", ADMIN_LISTS)
def test_admin_lists_run_as_many_queries_for_many_tenants_as_for_few(
    staff_client, make_tenant, name
):
    def add(count: int) -> None:
        for _ in range(count):
            tenant = make_tenant(name=f"Listed {Tenant.objects.count():03}")
            add_readings(tenant, hours=3)
            FetchAttempt.objects.create(tenant=tenant, scheduled_for=timezone.now())

    add(3)
    few = queries_of(staff_client, reverse(name))
    add(30)
    assert queries_of(staff_client, reverse(name)) == few
