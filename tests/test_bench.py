"""The daily rollup gives the raw readings' numbers, the CSV export, and `manage.py bench`."""

import csv
import io
import json
import statistics
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Max, Min, Sum
from django.db.models.functions import TruncDate
from psycopg import pq

from scoreboard import history
from scoreboard.models import DailyScore, Metric, Reading
from tenants.models import Tenant
from tests.conftest import add_readings

NOW = datetime(2026, 6, 15, 13, 30, tzinfo=UTC)


def raw_days(tenant: Tenant) -> dict:
    rows = (
        Reading.objects.filter(tenant=tenant, metric=Metric.SECURE_SCORE)
        .annotate(day=TruncDate("measured_at", tzinfo=UTC))
        .values("day")
        .annotate(n=Count("id"), total=Sum("value"), low=Min("value"), high=Max("value"))
    )
    return {row["day"]: (row["n"], row["total"], row["low"], row["high"]) for row in rows}


def rolled_days(tenant: Tenant) -> dict:
    return {
        row.day: (row.count, row.total, row.low, row.high)
        for row in DailyScore.objects.filter(tenant=tenant)
    }


def assert_rollup_matches(tenant: Tenant) -> None:
    raw, rolled = raw_days(tenant), rolled_days(tenant)
    assert rolled.keys() == raw.keys()
    for day, (n, total, low, high) in raw.items():
        assert rolled[day][0] == n
        assert rolled[day][1] == pytest.approx(total)
        assert rolled[day][2:] == (low, high)


@pytest.mark.django_db(transaction=True)
def test_rollup_follows_every_insert_and_delete(make_tenant):
    tenant = make_tenant()
    add_readings(tenant, hours=75, end=NOW)  # bulk_create, as the demo's backfill does
    Reading.objects.create(  # one at a time, as a fetch does
        tenant=tenant, value=123.0, measured_at=NOW + timedelta(minutes=5), fetched_at=NOW
    )
    assert_rollup_matches(tenant)
    assert len(rolled_days(tenant)) == 4

    # Deleting the day's lowest reading recounts that day; emptying a day removes it.
    Reading.objects.filter(tenant=tenant, value=123.0).delete()
    first_day = min(raw_days(tenant))
    Reading.objects.filter(tenant=tenant, measured_at__date=first_day).delete()
    assert_rollup_matches(tenant)
    assert first_day not in rolled_days(tenant)

    tenant.delete()
    assert not DailyScore.objects.exists()


def test_rebuild_counts_the_days_again(make_tenant):
    tenant = make_tenant()
    add_readings(tenant, hours=50, end=NOW)
    DailyScore.objects.filter(tenant=tenant).update(count=1, total=0)
    DailyScore.rebuild(tenant_ids=[tenant.pk])
    assert_rollup_matches(tenant)


def raw_daily_means(tenant: Tenant, start: datetime, end: datetime) -> list[list]:
    means: dict[datetime, list[float]] = {}
    for reading in Reading.objects.filter(
        tenant=tenant, measured_at__gte=start, measured_at__lt=end
    ):
        day = reading.measured_at.replace(hour=0, minute=0, second=0, microsecond=0)
        means.setdefault(day, []).append(reading.value)
    return [[history._iso(day), round(statistics.fmean(v), 2)] for day, v in sorted(means.items())]


def test_long_ranges_count_only_the_readings_inside_the_range(make_tenant):
    # The range starts and ends mid-day: those days come from the readings, not the rollup.
    tenant = make_tenant()
    add_readings(tenant, hours=40 * 24, end=NOW)
    period = history.Period("30d", NOW - timedelta(days=30), NOW)
    sparks = raw_daily_means(tenant, period.start, period.end)
    lines = history.trend_data(tenants=Tenant.objects.all(), period=period)["tenants"]
    assert lines[0]["points"] == sparks

    chart = history.tenant_chart(tenant=tenant, period=period)
    assert chart["bucket"] == "day"
    assert [[p[0], p[2]] for p in chart["points"]] == sparks
    first_day = Reading.objects.filter(
        tenant=tenant,
        measured_at__gte=period.start,
        measured_at__lt=datetime(2026, 5, 17, tzinfo=UTC),
    ).values_list("value", flat=True)
    assert len(first_day) == 11  # 13:30 to 23:30
    assert chart["points"][0][1] == round(min(first_day), 2)
    assert chart["points"][0][3] == round(max(first_day), 2)


def test_sparklines_are_the_daily_means_of_the_last_30_days(make_tenant):
    tenant = make_tenant()
    add_readings(tenant, hours=40 * 24, end=NOW)
    quiet = make_tenant(name="Quiet", slug="quiet")
    add_readings(quiet, hours=24, end=NOW - timedelta(days=20, hours=13, minutes=30))
    sparks = json.loads(history.sparklines(tenants=Tenant.objects.all(), now=NOW))
    assert sparks["start"] == "2026-05-17"
    first = datetime(2026, 5, 17, tzinfo=UTC)
    means = raw_daily_means(tenant, first, NOW + timedelta(days=1))
    assert len(means) == 30
    pairs = sparks["values"][tenant.slug]
    days = dict(zip(pairs[0::2], pairs[1::2], strict=True))  # in any order
    assert sorted(days) == list(range(30))
    assert [days[day] / 100 for day in range(30)] == pytest.approx(
        [mean for _, mean in means], abs=0.006
    )
    # Days without readings are left out: the quiet tenant read on 2026-05-25 only.
    assert sparks["values"]["quiet"] == [8, 50115]


def test_fleet_band_is_the_spread_of_the_tenants_daily_means(make_tenant):
    tenants = [make_tenant(name=f"Fleet {n:02}") for n in range(12)]
    for n, tenant in enumerate(tenants):
        add_readings(tenant, hours=5 * 24, end=NOW, start_value=100 * n)
    period = history.Period("7d", NOW - timedelta(days=7), NOW)
    band = history.fleet_band(tenants=Tenant.objects.all(), period=period, bucket="day")
    for moment, p10, median, p90 in band:
        day = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        means = sorted(
            statistics.fmean(
                Reading.objects.filter(
                    tenant=tenant,
                    measured_at__gte=max(day, period.start),
                    measured_at__lt=min(day + timedelta(days=1), period.end),
                ).values_list("value", flat=True)
            )
            for tenant in tenants
        )
        expected = [round(history.percentile(means, f), 2) for f in (0.1, 0.5, 0.9)]
        assert [p10, median, p90] == pytest.approx(expected, abs=0.011)


def test_csv_export_streams_the_rows_with_formulas_neutralised(make_tenant):
    add_readings(make_tenant(name="=SUM(A1)", slug="-formula"), hours=3, end=NOW)
    add_readings(make_tenant(name="Plain Co", slug="plain"), hours=2, end=NOW)
    body = b"".join(history.export_csv(tenants=Tenant.objects.all(), period=None)).decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == history.EXPORT_HEADER
    assert [row[:2] for row in rows[1:]] == [["'=SUM(A1)", "'-formula"]] * 3 + [
        ["Plain Co", "plain"]
    ] * 2
    exported = history.export_rows(tenants=Tenant.objects.all(), period=None)
    assert [[row[4], float(row[5]), row[6]] for row in rows[1:]] == [
        [measured_at, value, fetched_at] for *_, measured_at, value, fetched_at in exported
    ]


@pytest.mark.django_db(transaction=True)
def test_an_export_the_client_leaves_half_way_frees_the_connection(make_tenant, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the COPY is PostgreSQL's")
    add_readings(make_tenant(slug="first"), hours=40, end=NOW)
    add_readings(make_tenant(slug="second"), hours=40, end=NOW)
    monkeypatch.setattr(history, "EXPORT_CHUNK_BYTES", 1)  # a chunk a line
    chunks = history.export_csv(tenants=Tenant.objects.all(), period=None)
    assert next(chunks).startswith(b"tenant_name,")
    assert b",first," in next(chunks)  # in the middle of the first tenant's COPY
    chunks.close()  # what the server does when the client hangs up
    assert connection.connection.info.transaction_status == pq.TransactionStatus.IDLE
    assert Reading.objects.count() == 80


@pytest.mark.django_db(transaction=True)
def test_a_copy_failing_half_way_raises_and_frees_the_connection(make_tenant, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the COPY is PostgreSQL's")
    make_tenant(slug="only")
    # Two lines, then the database fails on the third.
    failing = (
        "COPY (SELECT %(name)s, %(slug)s, %(azure_id)s, 1 / (3 - n) FROM generate_series(1, 5) n"
        " WHERE %(tenant)s > 0 AND %(metric)s <> '' {period}) TO STDOUT WITH (FORMAT csv)"
    )
    monkeypatch.setattr(history, "_EXPORT_COPY_SQL", failing)
    with pytest.raises(psycopg.errors.DivisionByZero):
        b"".join(history.export_csv(tenants=Tenant.objects.all(), period=None))
    assert connection.connection.info.transaction_status == pq.TransactionStatus.IDLE
    assert Tenant.objects.count() == 1


def test_bench_command_measures_the_pages_and_writes_json(db, tmp_path, capsys):
    target = tmp_path / "figures.json"
    call_command(
        "bench",
        tenants=12,
        days=3,
        per_day=24,
        runs=1,
        only=["overview", "tenant", "fleet"],
        json=target,
    )
    printed = capsys.readouterr().out
    assert "| overview page, server time |" in printed
    data = json.loads(target.read_text())
    assert data["size"]["readings"] == 12 * 3 * 24
    figure = data["figures"]["overview page, server time"]
    assert set(figure) >= {"value", "unit", "limit", "ratio", "target", "meets_target"}
    assert figure["unit"] == "ms"
    assert figure["limit"] > 0
    assert figure["ratio"] == pytest.approx(figure["value"] / figure["limit"], rel=0.01)
    assert Reading.objects.filter(tenant__slug__startswith="bench-").count() == 12 * 3 * 24
    assert DailyScore.objects.aggregate(n=Sum("count"))["n"] == 12 * 3 * 24

    # A second run reuses the data set.
    call_command("bench", tenants=12, days=3, per_day=24, runs=1, only=["tenant"])
    assert "reusing" in capsys.readouterr().err
