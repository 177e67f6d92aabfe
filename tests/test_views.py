"""The dashboard pages and the CSV export, as each kind of user sees them."""

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from scoreboard.models import FetchAttempt
from tenants.models import Tenant
from tests.conftest import add_readings, queries_of

OVERVIEW = reverse("overview")
EXPORT = reverse("export_csv")
# Spelled out, not imported: the columns are what auditors' spreadsheets rely on.
CSV_HEADER = [
    "tenant_name",
    "tenant_slug",
    "azure_tenant_id",
    "metric",
    "measured_at",
    "value",
    "fetched_at",
]


def tenant_url(slug: str) -> str:
    return reverse("tenant_detail", args=[slug])


def json_data(response, element_id: str):
    html = response.content.decode()
    start = html.index(f'<script id="{element_id}" type="application/json">')
    start = html.index(">", start) + 1
    return json.loads(html[start : html.index("</script>", start)])


def export_rows(response) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


# --- Access: every URL, every kind of user ------------------------------------------


@pytest.mark.parametrize("url", [OVERVIEW, tenant_url("alpha"), EXPORT])
def test_anonymous_users_are_sent_to_log_in(client, two_tenants, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_outsider_sees_no_tenant_anywhere(client, outsider, two_tenants):
    add_readings(two_tenants[0], hours=5)
    client.force_login(outsider)
    overview = client.get(OVERVIEW)
    assert overview.status_code == 200
    assert "No tenant is shared with you yet" in overview.content.decode()
    assert "Alpha Corp" not in overview.content.decode()
    assert client.get(tenant_url("alpha")).status_code == 404
    assert client.get(tenant_url("beta")).status_code == 404
    refused = client.get(EXPORT, {"tenant": "alpha"})
    assert refused.status_code == 400
    unknown = client.get(EXPORT, {"tenant": "no-such"})
    # An existing slug the outsider may not see answers exactly like a missing one.
    assert refused.content.decode().replace("alpha", "X") == unknown.content.decode().replace(
        "no-such", "X"
    )
    assert export_rows(client.get(EXPORT)) == [CSV_HEADER]


def test_viewer_sees_only_granted_tenants(client, viewer, two_tenants):
    alpha, beta = two_tenants
    add_readings(alpha, hours=3)
    add_readings(beta, hours=3)
    client.force_login(viewer)
    html = client.get(OVERVIEW).content.decode()
    assert "Alpha Corp" in html
    assert "Beta Corp" not in html
    assert client.get(tenant_url("alpha")).status_code == 200
    assert client.get(tenant_url("beta")).status_code == 404
    rows = export_rows(client.get(EXPORT))
    assert {row[1] for row in rows[1:]} == {"alpha"}
    assert client.get(EXPORT, {"tenant": "beta"}).status_code == 400


def test_group_grants_work_like_user_grants(client, outsider, two_tenants):
    from django.contrib.auth.models import Group

    group = Group.objects.create(name="Beta team")
    group.user_set.add(outsider)
    two_tenants[1].viewer_groups.add(group)
    client.force_login(outsider)
    assert client.get(tenant_url("beta")).status_code == 200
    assert client.get(tenant_url("alpha")).status_code == 404


def test_staff_see_every_tenant(staff_client, two_tenants):
    html = staff_client.get(OVERVIEW).content.decode()
    assert "Alpha Corp" in html
    assert "Beta Corp" in html
    assert staff_client.get(tenant_url("beta")).status_code == 200


# --- Overview -------------------------------------------------------------------------


def test_overview_empty_state_tells_staff_how_to_add_a_tenant(staff_client):
    html = staff_client.get(OVERVIEW).content.decode()
    assert "No tenants yet" in html
    assert reverse("admin:tenants_tenant_add") in html


def test_overview_rows_show_latest_score_changes_and_health(staff_client, make_tenant):
    now = timezone.now()
    rising = make_tenant(name="Rising Co", slug="rising")
    add_readings(rising, hours=31 * 24, start_value=400)  # +0.1 an hour
    rising.record_success(value=474.3, measured_at=now - timedelta(minutes=5), at=now)
    failing = make_tenant(name="Failing Co")
    failing.record_failure(
        kind="permission",
        message="Failing Co: the app may not read the score (HTTP 403 Forbidden). Fix: ...",
        at=now,
    )
    stale = make_tenant(name="Stale Co")
    stale.record_success(value=300, measured_at=now - timedelta(hours=3), at=now)
    make_tenant(name="Waiting Co", slug="waiting")

    response = staff_client.get(OVERVIEW)
    html = response.content.decode()
    assert "474.30" in html
    assert "Last successful fetch" in html
    assert f'datetime="{now.isoformat()}"' in html  # when the last fetch succeeded
    assert '<span class="delta up">▲ 16.70</span>' in html  # 474.3 - (400 + 0.1 * 576)
    assert '<span class="badge failing"' in html
    assert "failing: missing permission" in html
    assert "the app may not read the score (HTTP 403 Forbidden)" in html
    assert '<span class="badge stale"' in html
    assert '<span class="badge waiting">waiting for first reading</span>' in html
    sparks = json_data(response, "sparkline-data")
    assert sparks["start"] == str(now.date() - timedelta(days=29))
    assert sorted(sparks["values"]["rising"][0::2]) == list(range(30))  # a mean every day
    assert sparks["values"]["waiting"] == []


def test_a_drop_is_shown_in_red(staff_client, make_tenant):
    now = timezone.now()
    tenant = make_tenant(name="Dropping Co")
    add_readings(tenant, hours=8 * 24, start_value=600)
    tenant.record_success(value=550, measured_at=now, at=now)
    html = staff_client.get(OVERVIEW).content.decode()
    assert '<span class="delta down">▼ ' in html


def test_overview_chart_compares_tenants_up_to_ten(staff_client, make_tenant):
    for n in range(3):
        add_readings(make_tenant(name=f"Co {n}"), hours=40 * 24)
    data = json_data(staff_client.get(OVERVIEW, {"range": "30d"}), "trend-data")
    assert data["mode"] == "tenants"
    assert data["bucket"] == "day"
    assert [line["name"] for line in data["tenants"]] == ["Co 0", "Co 1", "Co 2"]
    assert 30 <= len(data["tenants"][0]["points"]) <= 31


def test_overview_short_range_draws_raw_readings(staff_client, make_tenant):
    add_readings(make_tenant(name="Co"), hours=10 * 24)
    data = json_data(staff_client.get(OVERVIEW, {"range": "7d"}), "trend-data")
    assert data["bucket"] == "raw"
    assert 7 * 24 - 1 <= len(data["tenants"][0]["points"]) <= 7 * 24 + 1


def test_more_than_ten_tenants_show_the_fleet_band_and_picked_tenants(staff_client, make_tenant):
    tenants = [make_tenant(name=f"Fleet {n:02}", slug=f"fleet-{n:02}") for n in range(12)]
    for n, tenant in enumerate(tenants):
        add_readings(tenant, hours=3 * 24, start_value=100 * n)
    response = staff_client.get(OVERVIEW, {"range": "30d", "pick": ["fleet-00", "nobody"]})
    data = json_data(response, "trend-data")
    assert data["mode"] == "fleet"
    assert data["fleet"]["count"] == 12
    assert [line["name"] for line in data["tenants"]] == ["Fleet 00"]
    day = data["fleet"]["points"][1]
    p10, median, p90 = day[1:]
    assert p10 < median < p90
    # Every tenant rises alike from 100 * n, so the band is the spread of 0..1100.
    assert median - p10 == pytest.approx(440, abs=0.01)
    assert p90 - p10 == pytest.approx(880, abs=0.01)
    assert 'name="pick" value="fleet-00"' in response.content.decode()


def test_overview_queries_do_not_grow_with_tenants(staff_client, make_tenant):
    def add(count: int) -> None:
        for _ in range(count):
            add_readings(make_tenant(name=f"Q {Tenant.objects.count()}"), hours=48)
        # The first view after new readings computes the fleet band's changed days.
        assert staff_client.get(OVERVIEW).status_code == 200

    add(15)
    fifteen = queries_of(staff_client, OVERVIEW)
    add(30)
    assert queries_of(staff_client, OVERVIEW) == fifteen <= 15


def test_bad_range_answers_400_with_a_message(staff_client, two_tenants):
    response = staff_client.get(OVERVIEW, {"start": "2026-13-45"})
    assert response.status_code == 400
    assert "start must be a date written YYYY-MM-DD" in response.content.decode()
    response = staff_client.get(OVERVIEW, {"start": "2026-05-02", "end": "2026-05-01"})
    assert response.status_code == 400
    assert "is after the end date" in response.content.decode()
    response = staff_client.get(OVERVIEW, {"range": "5 years"})
    assert "Unknown range" in response.content.decode()


def test_hostile_names_stay_text_in_the_page_and_the_chart_data(staff_client, make_tenant):
    name = "</script><script>alert(1)</script>"
    add_readings(make_tenant(name=name, slug="evil"), hours=3)
    response = staff_client.get(OVERVIEW)
    html = response.content.decode()
    assert "<script>alert(1)" not in html
    assert json_data(response, "trend-data")["tenants"][0]["name"] == name


# --- Tenant page ------------------------------------------------------------------------


def test_tenant_page_shows_raw_readings_for_short_ranges(staff_client, make_tenant):
    tenant = make_tenant(name="Short Co", slug="short")
    add_readings(tenant, hours=100)
    response = staff_client.get(tenant_url("short"), {"range": "7d"})
    chart = json_data(response, "tenant-chart-data")
    assert chart["bucket"] == "raw"
    assert len(chart["points"]) == 100
    html = response.content.decode()
    assert "Page 1 of 2 (100 readings)" in html
    assert f"{EXPORT}?tenant=short&amp;start=" in html


def test_tenant_page_shows_a_daily_band_for_long_ranges(staff_client, make_tenant):
    tenant = make_tenant(name="Long Co", slug="long")
    add_readings(tenant, hours=180 * 24)
    chart = json_data(staff_client.get(tenant_url("long"), {"range": "1y"}), "tenant-chart-data")
    assert chart["bucket"] == "day"
    assert 180 <= len(chart["points"]) <= 181
    day = chart["points"][5]
    assert day[1] < day[2] < day[3]  # min < mean < max


def test_tenant_page_lists_recent_attempts_with_their_errors(staff_client, make_tenant):
    tenant = make_tenant(name="Err Co", slug="err")
    FetchAttempt.objects.create(
        tenant=tenant,
        scheduled_for=timezone.now(),
        status="failed",
        error_kind="auth",
        error="Err Co: the client secret is invalid.",
        http_status=401,
        tries=1,
    )
    html = staff_client.get(tenant_url("err")).content.decode()
    assert "sign-in rejected</strong>: Err Co: the client secret is invalid." in html


def test_unknown_tenant_page_is_404(staff_client):
    assert staff_client.get(tenant_url("nope")).status_code == 404


# --- CSV export ---------------------------------------------------------------------------


def test_export_has_a_header_every_column_and_a_descriptive_name(staff_client, make_tenant):
    tenant = make_tenant(name="Export Co", slug="export")
    add_readings(tenant, hours=48)
    today = timezone.now().date()
    start = today - timedelta(days=1)
    response = staff_client.get(
        EXPORT, {"tenant": "export", "start": str(start), "end": str(today)}
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert (
        response["Content-Disposition"]
        == f'attachment; filename="scoreboard-export-{start}-to-{today}.csv"'
    )
    rows = export_rows(response)
    assert rows[0] == CSV_HEADER
    first = rows[1]
    assert first[:4] == ["Export Co", "export", str(tenant.tenant_id), "secure_score"]
    # UTC without a zone designator, the form spreadsheets read as a date.
    measured = datetime.strptime(first[4], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    oldest = tenant.readings.filter(measured_at__date__gte=start).order_by("measured_at").first()
    assert measured == oldest.measured_at.replace(microsecond=0)  # the stored time, in UTC
    assert float(first[5]) >= 500
    assert all(start.isoformat() <= row[4][:10] <= today.isoformat() for row in rows[1:])
    assert [row[4] for row in rows[1:]] == sorted(row[4] for row in rows[1:])


def test_export_without_dates_has_everything(staff_client, make_tenant):
    add_readings(make_tenant(slug="all-a"), hours=30)
    add_readings(make_tenant(slug="all-b"), hours=20)
    response = staff_client.get(EXPORT)
    assert response["Content-Disposition"].endswith('scoreboard-all-tenants-all-time.csv"')
    assert len(export_rows(response)) == 1 + 50


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tenant": "nope"}, "No tenant 'nope' among the tenants you may see."),
        ({"start": "yesterday"}, "start must be a date written YYYY-MM-DD"),
        ({"end": "2026-02-30"}, "end must be a date written YYYY-MM-DD"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "is after the end date"),
    ],
)
def test_export_bad_parameters_answer_400_with_a_message(staff_client, db, params, message):
    response = staff_client.get(EXPORT, params)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_export_neutralises_formulas_but_keeps_numbers(staff_client, make_tenant):
    add_readings(make_tenant(name="=HYPERLINK(1)", slug="formula"), hours=2)
    rows = export_rows(staff_client.get(EXPORT))
    assert rows[1][0] == "'=HYPERLINK(1)"
    assert float(rows[1][5]) == 500.0


@pytest.mark.parametrize("tenant_count", [1, 15])
def test_tenant_page_queries_do_not_grow_with_tenants(
    staff_client, make_tenant, django_assert_max_num_queries, tenant_count
):
    tenants = [make_tenant(name=f"Q {n}", slug=f"q-{n}") for n in range(tenant_count)]
    for tenant in tenants:
        add_readings(tenant, hours=20 * 24)
    for preset in ("7d", "all"):
        with django_assert_max_num_queries(11):
            assert staff_client.get(tenant_url("q-0"), {"range": preset}).status_code == 200


@pytest.mark.parametrize("tenant_count", [3, 12, 40])
def test_overview_queries_stay_flat_for_every_range(
    staff_client, make_tenant, django_assert_max_num_queries, tenant_count
):
    for n in range(tenant_count):
        add_readings(make_tenant(name=f"R {n}", slug=f"r-{n}"), hours=10 * 24)
    for preset in ("7d", "30d", "1y", "all"):
        params = {"range": preset, "pick": ["r-0", "r-1"]}
        # The first view of a range computes the fleet band's closed days (FleetDay).
        assert staff_client.get(OVERVIEW, params).status_code == 200
        with django_assert_max_num_queries(19):
            response = staff_client.get(OVERVIEW, params)
            assert response.status_code == 200


def test_overview_rows_carry_the_tenant_columns_they_show(make_tenant):
    from scoreboard import history

    now = timezone.now()
    tenant = make_tenant(name="Columns Co", slug="columns")
    tenant.record_success(value=612.5, measured_at=now - timedelta(minutes=5), at=now)
    tenant.record_failure(kind="auth", message="Columns Co: the secret expired. Fix it.", at=now)
    tenant.refresh_from_db()
    (row,) = history.overview_rows(tenants=Tenant.objects.all(), now=now)
    for field in history.OverviewTenant.FIELDS:
        assert getattr(row.tenant, field) == getattr(tenant, field), field
    assert row.tenant.last_error_summary == tenant.last_error_summary == "the secret expired"
    assert row.health == history.health_of(tenant, now=now)
