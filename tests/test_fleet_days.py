"""The fleet band's closed days are stored (FleetDay) and always match the readings."""

from datetime import UTC, date, datetime, timedelta

import pytest

from scoreboard import history, tasks
from scoreboard.models import FleetDay, Reading, StaleFleetDay
from tenants.models import Tenant
from tests.conftest import add_readings

NOW = datetime(2026, 6, 15, 13, 30, tzinfo=UTC)
WEEK = history.Period("7d", NOW - timedelta(days=7), NOW)


@pytest.fixture
def fleet(make_tenant):
    tenants = [make_tenant(name=f"Fleet {n:02}", slug=f"fleet-{n:02}") for n in range(12)]
    for n, tenant in enumerate(tenants):
        add_readings(tenant, hours=6 * 24, end=NOW, start_value=40.0 * n)
    return tenants


def band(tenants=None):
    tenants = tenants if tenants is not None else Tenant.objects.all()
    return history.fleet_band(tenants=tenants, period=WEEK, bucket="day", now=NOW)


def live_band(tenants=None):
    tenants = tenants if tenants is not None else Tenant.objects.all()
    return history._live_fleet_band(tenants=tenants, period=WEEK, bucket="day")


def test_closed_days_are_stored_once_and_match_the_rollup(fleet):
    first = band()
    assert first == live_band()
    # The whole days before today are stored; the part days and today are not.
    stored = FleetDay.objects.filter(tenants__gt=0).values_list("day", flat=True)
    assert sorted(stored) == [date(2026, 6, d) for d in range(9, 15)]
    assert set(FleetDay.objects.values_list("tenants", flat=True)) == {12}
    assert not StaleFleetDay.objects.filter(day__lt=NOW.date()).exists()
    assert history.refresh_fleet_days(first=date(2026, 6, 9), stop=date(2026, 6, 15)) == 0


def test_a_changed_past_day_is_computed_again(fleet, django_assert_max_num_queries):
    expected = band()
    with django_assert_max_num_queries(8):  # nothing changed: nothing computed
        again = band()
    assert again == expected == live_band()
    # A late reading far below everyone drags a middle tenant's day to the bottom.
    Reading.objects.create(
        tenant=fleet[6],
        value=-9000.0,
        measured_at=datetime(2026, 6, 12, 6, tzinfo=UTC),
        fetched_at=NOW,
    )
    assert StaleFleetDay.objects.filter(day=date(2026, 6, 12)).exists()
    after = band()
    assert after == live_band()
    changed = [old[0] for old, new in zip(expected, after, strict=True) if old != new]
    assert changed == ["2026-06-12T00:00:00Z"]


def test_a_deleted_tenant_leaves_the_stored_band(fleet):
    band()
    fleet[-1].delete()
    fleet[-2].delete()
    assert band() == live_band()
    assert set(FleetDay.objects.filter(tenants__gt=0).values_list("tenants", flat=True)) == {10}


def test_a_band_over_some_tenants_is_computed_from_their_days_only(fleet):
    everyone = band()
    some = Tenant.objects.filter(slug__in=["fleet-00", "fleet-01", "fleet-02"])
    theirs = band(some)
    assert theirs == live_band(some)
    assert theirs != everyone
    assert max(point[3] for point in theirs) < 40.0 * 3


@pytest.mark.django_db
def test_the_hourly_task_computes_the_days_up_to_yesterday(fleet):
    computed = tasks.refresh_fleet_days()
    stored = FleetDay.objects.filter(tenants=12).values_list("day", flat=True)
    assert date(2026, 6, 9) in stored and date(2026, 6, 15) in stored
    assert computed == FleetDay.objects.count()
    assert tasks.refresh_fleet_days() == 0


def test_a_custom_range_through_today_matches_the_rollup(fleet):
    # Whole days only: from a midnight to the midnight after today.
    period = history.Period(
        "custom", datetime(2026, 6, 10, tzinfo=UTC), datetime(2026, 6, 16, tzinfo=UTC)
    )
    tenants = Tenant.objects.all()
    stored = history.fleet_band(tenants=tenants, period=period, bucket="day", now=NOW)
    live = history._live_fleet_band(tenants=tenants, period=period, bucket="day")
    assert stored == live
    assert [point[0][:10] for point in stored] == [f"2026-06-{d}" for d in range(10, 16)]


def test_todays_readings_after_the_range_end_stay_out(fleet):
    # Read from the rollup while nothing follows the end; from the readings once something does.
    before = band()
    assert before == live_band()
    Reading.objects.create(
        tenant=fleet[6], value=-9000.0, measured_at=NOW + timedelta(hours=2), fetched_at=NOW
    )
    assert band() == live_band() == before
