"""The read side: overview rows, chart series and export rows.

Views read readings through this module only. Long ranges are aggregated in
the database (per-day or per-week buckets), never in Python over every row,
and the number of queries does not grow with the number of tenants.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db import connections, transaction
from django.db.models import Count, Max, Min, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import TruncDay, TruncWeek

from scoreboard.defender import ErrorKind
from scoreboard.models import DailyScore, FleetDay, Metric, Reading, StaleFleetDay
from tenants.models import Tenant

PRESETS: dict[str, int | None] = {"7d": 7, "30d": 30, "90d": 90, "1y": 365, "all": None}
DEFAULT_PRESET = "30d"
RAW_SPAN = timedelta(days=8)  # shorter ranges chart every reading
WEEKLY_SPAN = timedelta(days=800)  # longer ranges chart weekly buckets
RAW_READINGS_LIMIT = 400  # a tenant chart with more readings than this shows a daily band
MAX_COMPARED = 10  # tenants drawn one line each; more and the fleet band is drawn
SPARKLINE_DAYS = 30
STALE_INTERVALS = 2


class InvalidPeriod(ValueError):
    """The requested range cannot be understood; the message says why."""


@dataclass(frozen=True)
class Period:
    key: str  # a preset key, or "custom"
    start: datetime
    end: datetime  # exclusive

    @property
    def start_date(self) -> date:
        return self.start.date()

    @property
    def last_date(self) -> date:
        """The last day included, as people write a range (inclusive)."""
        return (self.end - timedelta(microseconds=1)).date()

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def _parse_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidPeriod(
            f"{name} must be a date written YYYY-MM-DD, not {value[:40]!r}."
        ) from None


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def parse_period(
    params: Mapping[str, str],
    *,
    now: datetime,
    earliest: Callable[[], datetime | None],
) -> Period:
    """The range asked for by `range` (a preset) or `start`/`end` (YYYY-MM-DD, UTC days).

    Dates win over a preset; one date alone is completed with today or the
    first reading. `earliest` is asked only when the range needs it ("all", or
    a missing start date), so the common presets cost no query.
    """
    start_text = (params.get("start") or "").strip()
    end_text = (params.get("end") or "").strip()
    if start_text or end_text:
        if start_text:
            start = _parse_date(start_text, "start")
        else:
            start = (earliest() or now - timedelta(days=30)).date()
        last = _parse_date(end_text, "end") if end_text else now.date()
        if start > last:
            raise InvalidPeriod(f"The start date {start} is after the end date {last}: swap them.")
        return Period("custom", _midnight(start), _midnight(last + timedelta(days=1)))
    key = (params.get("range") or DEFAULT_PRESET).strip()
    if key not in PRESETS:
        raise InvalidPeriod(
            f"Unknown range {key[:20]!r}: choose one of {', '.join(PRESETS)} or give dates."
        )
    days = PRESETS[key]
    if days is None:
        start = earliest() or now - timedelta(days=30)
        return Period(key, min(start, now - timedelta(days=1)), now)
    return Period(key, now - timedelta(days=days), now)


def earliest_reading(tenants: QuerySet[Tenant]) -> datetime | None:
    # One index probe per tenant: a MIN over all their readings would read them all.
    first = Subquery(
        Reading.objects.filter(tenant=OuterRef("pk"), metric=Metric.SECURE_SCORE)
        .order_by("measured_at")
        .values("measured_at")[:1]
    )
    return tenants.order_by().annotate(first=first).aggregate(earliest=Min("first"))["earliest"]


def bucket_for(span: timedelta) -> str:
    if span <= RAW_SPAN:
        return "raw"
    if span <= WEEKLY_SPAN:
        return "day"
    return "week"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sheet_time(moment: datetime) -> str:
    """UTC as ISO 8601 without a zone designator (2026-11-03T09:15:58).

    Spreadsheets read this form as a date and time; with a trailing Z or an
    offset LibreOffice and Excel keep it as text. The columns are UTC by
    definition (README).
    """
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _in_period(period: Period) -> QuerySet[Reading]:
    return Reading.objects.filter(
        metric=Metric.SECURE_SCORE, measured_at__gte=period.start, measured_at__lt=period.end
    )


# Long ranges read the daily rollup (DailyScore) for the whole UTC days of the range
# and the raw readings only for the part days at either end, so every bucket holds
# exactly the readings of the range, as if it had been summed from the readings.


def _whole_days(period: Period) -> tuple[datetime, datetime]:
    """The first and the end (exclusive) of the whole UTC days inside the period."""
    first = _midnight(period.start.date())
    if first < period.start:
        first += timedelta(days=1)
    end = _midnight(period.end.date())
    return first, max(first, end)


Stats = list  # [count, total, low, high]


def _bucket_stats(
    *,
    tenants: QuerySet[Tenant] | Iterable[int],
    period: Period,
    bucket: str,
    rollup_from: datetime | None = None,
) -> dict[tuple[int, datetime], Stats]:
    """Per (tenant id, day or week start): the count, sum, minimum and maximum of its readings.

    `rollup_from` leaves out the whole days before it (the caller has them elsewhere).
    """
    first, end = _whole_days(period)
    rolled = DailyScore.objects.filter(
        metric=Metric.SECURE_SCORE,
        tenant_id__in=tenants,
        day__gte=max(first, rollup_from or first).date(),
        day__lt=end.date(),
    )
    if bucket == "week":
        rolled = (
            rolled.annotate(bucket=TruncWeek("day"))
            .values("tenant_id", "bucket")
            .annotate(n=Sum("count"), total=Sum("total"), low=Min("low"), high=Max("high"))
            .values_list("tenant_id", "bucket", "n", "total", "low", "high")
        )
    else:  # one rollup row is one bucket already
        rolled = rolled.values_list("tenant_id", "day", "count", "total", "low", "high")
    rolled = rolled.order_by()
    trunc = TruncWeek if bucket == "week" else TruncDay

    def part(start: datetime, stop: datetime) -> QuerySet:
        return (
            Reading.objects.filter(
                metric=Metric.SECURE_SCORE,
                tenant_id__in=tenants,
                measured_at__gte=start,
                measured_at__lt=stop,
            )
            .annotate(bucket=trunc("measured_at", tzinfo=UTC))
            .values("tenant_id", "bucket")
            .annotate(n=Count("id"), total=Sum("value"), low=Min("value"), high=Max("value"))
            .values_list("tenant_id", "bucket", "n", "total", "low", "high")
            .order_by()
        )

    # Two plain ranges, not one OR: SQLite would scan every reading for the OR.
    ends = part(period.start, first).union(part(end, period.end), all=True)
    stats: dict[tuple[int, datetime], Stats] = {}
    for tenant_id, day, n, total, low, high in rolled:
        stats[(tenant_id, _midnight(day))] = [n, total, low, high]
    for tenant_id, moment, n, total, low, high in ends:
        key = (tenant_id, moment.astimezone(UTC))
        if key in stats:
            known = stats[key]
            stats[key] = [known[0] + n, known[1] + total, min(known[2], low), max(known[3], high)]
        else:
            stats[key] = [n, total, low, high]
    return stats


def _mean(stats: Stats) -> float:
    return stats[1] / stats[0]


# --- Overview -------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    status: str  # ok, stale, failing, waiting, off
    label: str
    detail: str = ""


def health_of(tenant: Tenant | OverviewTenant, *, now: datetime) -> Health:
    if not tenant.enabled:
        return Health("off", "disabled")
    if tenant.consecutive_failures:
        kind = ErrorKind(tenant.last_error_kind).label if tenant.last_error_kind else "error"
        return Health("failing", f"failing: {kind}", tenant.last_error_summary)
    warning = tenant.credential_warning(now.date())
    if warning:
        return Health("expiring", "credential expiring", warning)
    last = tenant.last_measured_at
    if last is None:
        return Health("waiting", "waiting for first reading")
    allowed = timedelta(minutes=tenant.fetch_interval_minutes * STALE_INTERVALS)
    if now - last > allowed:
        return Health("stale", "stale", f"no reading for more than {STALE_INTERVALS} intervals")
    return Health("ok", "ok")


@dataclass(frozen=True)
class OverviewRow:
    tenant: OverviewTenant
    latest: float | None
    change_7d: float | None
    change_30d: float | None
    health: Health


def _value_at(moment: datetime) -> Subquery:
    """The last reading at or before `moment`, per tenant: one index probe each."""
    return Subquery(
        Reading.objects.filter(
            tenant=OuterRef("pk"), metric=Metric.SECURE_SCORE, measured_at__lte=moment
        )
        .order_by("-measured_at")
        .values("value")[:1]
    )


class OverviewTenant:
    """The columns of a tenant an overview row shows, without a model instance each.

    A thousand Tenant instances cost about 25 ms of CPU to build; the row needs a
    dozen plain values and the two Tenant methods that health_of asks for.
    """

    FIELDS = (
        "pk",
        "name",
        "slug",
        "enabled",
        "credential_type",
        "credential_expires_at",
        "fetch_interval_minutes",
        "last_success_at",
        "last_error_kind",
        "last_error",
        "consecutive_failures",
        "last_score",
        "last_measured_at",
    )
    __slots__ = FIELDS
    credential_warning = Tenant.credential_warning
    last_error_summary = Tenant.last_error_summary

    def __init__(self, values: tuple) -> None:
        # One unpacking, in FIELDS order: a setattr loop was a third of the rows' CPU.
        (
            self.pk,
            self.name,
            self.slug,
            self.enabled,
            self.credential_type,
            self.credential_expires_at,
            self.fetch_interval_minutes,
            self.last_success_at,
            self.last_error_kind,
            self.last_error,
            self.consecutive_failures,
            self.last_score,
            self.last_measured_at,
        ) = values

    def __str__(self) -> str:
        return self.name


def overview_rows(*, tenants: QuerySet[Tenant], now: datetime) -> list[OverviewRow]:
    values = (
        tenants.annotate(
            value_7d=_value_at(now - timedelta(days=7)),
            value_30d=_value_at(now - timedelta(days=30)),
        )
        .order_by("name")
        .values_list(*OverviewTenant.FIELDS, "value_7d", "value_30d")
    )
    rows = []
    for *columns, value_7d, value_30d in values:
        tenant = OverviewTenant(columns)
        latest = tenant.last_score

        def change(before: float | None, latest: float | None = latest) -> float | None:
            return None if latest is None or before is None else latest - before

        rows.append(
            OverviewRow(
                tenant=tenant,
                latest=latest,
                change_7d=change(value_7d),
                change_30d=change(value_30d),
                health=health_of(tenant, now=now),
            )
        )
    return rows


def sparklines(
    *, tenants: QuerySet[Tenant], now: datetime, slugs: Mapping[int, str] | None = None
) -> str:
    """Daily means of the last 30 UTC days, today's so far included, per tenant slug, as JSON.

    {"start": "2026-11-04", "days": 30, "values": {slug: [day, hundredths, ...]}}: pairs
    of a day's index from `start` and its mean in hundredths of a point (51234 for
    512.34), in no particular order; days without readings are left out. Read from the
    rollup alone; on PostgreSQL the database writes each tenant's list, so a thousand
    tenants cost one query and no per-day work in Python. Whole numbers and no
    ordering halve the database's work: printing floats and sorting each tenant's
    days were most of it.
    """
    first = now.date() - timedelta(days=SPARKLINE_DAYS - 1)
    if slugs is None:  # the overview passes the ones its rows have read
        slugs = dict(tenants.values_list("pk", "slug"))
    tenant_sql, tenant_params = tenants.order_by().values("pk").query.sql_with_params()
    connection = connections[tenants.db]
    where = (
        f"FROM {DailyScore._meta.db_table} WHERE metric = %s AND day >= %s AND day <= %s "
        f"AND tenant_id IN ({tenant_sql})"
    )
    params = [Metric.SECURE_SCORE, first, now.date(), *tenant_params]
    lists: dict[int, str] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT tenant_id, string_agg((day - %s) || ',' || "
                f"round(total / count * 100)::integer, ',') {where} GROUP BY tenant_id",
                [first, *params],
            )
            lists = dict(cursor.fetchall())
        else:
            cursor.execute(
                f"SELECT tenant_id, julianday(day) - julianday(%s), total / count {where}",
                [first, *params],
            )
            pairs: dict[int, list] = defaultdict(list)
            for tenant_id, day, mean in cursor.fetchall():
                pairs[tenant_id] += [int(day), round(mean * 100)]
            lists = {pk: json.dumps(values)[1:-1] for pk, values in pairs.items()}
    values = ",".join(f"{json.dumps(slug)}:[{lists.get(pk, '')}]" for pk, slug in slugs.items())
    return f'{{"start":"{first.isoformat()}","days":{SPARKLINE_DAYS},"values":{{{values}}}}}'


# --- Charts -----------------------------------------------------------------------


def _tenant_lines(tenants: Iterable[Tenant], period: Period, bucket: str) -> list[dict]:
    chosen = {tenant.pk: tenant for tenant in tenants}
    points: dict[int, list[list]] = defaultdict(list)
    readings = _in_period(period).filter(tenant_id__in=chosen)
    if bucket == "raw":
        rows = readings.order_by("tenant_id", "measured_at").values_list(
            "tenant_id", "measured_at", "value"
        )
        for tenant_id, measured_at, value in rows:
            points[tenant_id].append([_iso(measured_at), value])
    else:
        stats = _bucket_stats(tenants=list(chosen), period=period, bucket=bucket)
        for tenant_id, moment in sorted(stats):
            points[tenant_id].append([_iso(moment), round(_mean(stats[tenant_id, moment]), 2)])
    return [
        {"name": tenant.name, "slug": tenant.slug, "points": points[tenant.pk]}
        for tenant in sorted(chosen.values(), key=lambda t: t.name.lower())
    ]


def percentile(ordered: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _spread(ordered: list[float]) -> tuple[float, float, float]:
    """p10, median and p90 of sorted values: the fleet band at one bucket."""
    return tuple(percentile(ordered, fraction) for fraction in (0.1, 0.5, 0.9))


def fleet_band(
    *,
    tenants: QuerySet[Tenant],
    period: Period,
    bucket: str,
    now: datetime | None = None,
    count: int | None = None,
) -> list[list]:
    """Per bucket: [time, p10, median, p90] over the tenants' bucket means.

    The daily band over every tenant reads its closed days from FleetDay and
    computes only the part days at either end and today; a band over some
    tenants (a viewer's), or by week, is computed from the rollup. `count` is
    the number of `tenants`, when the caller knows it.
    """
    count = tenants.count() if count is None else count
    if bucket != "day" or count != Tenant.objects.count():
        return _live_fleet_band(tenants=tenants, period=period, bucket=bucket)
    now = now or datetime.now(UTC)
    first, end = _whole_days(period)
    stored_end = max(first, min(end, _midnight(now.date())))
    stored = stored_fleet_band(first=first.date(), stop=stored_end.date())
    # A range that ends part way through its last day, with no reading after its end
    # that day (the presets end now), holds all of that day's readings: the rollup's
    # row for the day is exact, and cheaper than summing the day's raw readings.
    day_end = _midnight(period.end.date()) + timedelta(days=1)
    if (
        period.end != _midnight(period.end.date())
        and not Reading.objects.filter(
            metric=Metric.SECURE_SCORE, measured_at__gte=period.end, measured_at__lt=day_end
        ).exists()
    ):
        period = Period(period.key, period.start, day_end)
    # The rest in one query: the part days at either end, and today (and later) whole.
    live = _live_fleet_band(tenants=tenants, period=period, bucket=bucket, rollup_from=stored_end)
    return sorted(stored + live)


def stored_fleet_band(*, first: date, stop: date, metric: str = Metric.SECURE_SCORE) -> list[list]:
    """The band of the closed days first..stop (exclusive) over every tenant, from FleetDay.

    Days marked stale, or never computed, are computed again first, so the
    band always matches the rollup. Costs two small queries when nothing changed.
    """
    if first >= stop:
        return []
    in_range = {"metric": metric, "day__gte": first, "day__lt": stop}
    stored = FleetDay.objects.filter(**in_range).order_by("day")
    rows = list(stored.values_list("day", "tenants", "p10", "median", "p90"))
    wanted = (stop - first).days
    if len(rows) < wanted or StaleFleetDay.objects.filter(**in_range).exists():
        refresh_fleet_days(first=first, stop=stop, metric=metric)
        rows = list(stored.values_list("day", "tenants", "p10", "median", "p90"))
    return [
        [_iso(_midnight(day)), round(p10, 2), round(median, 2), round(p90, 2)]
        for day, count, p10, median, p90 in rows
        if count
    ]


def refresh_fleet_days(*, first: date, stop: date, metric: str = Metric.SECURE_SCORE) -> int:
    """Compute FleetDay again for the stale or missing days first..stop; returns how many.

    The stale marks are taken (deleted) in the same transaction that stores the
    new rows: a day changed meanwhile is marked again by the trigger and
    computed next time.
    """
    in_range = {"metric": metric, "day__gte": first, "day__lt": stop}
    db = FleetDay.objects.db
    with transaction.atomic(using=db), connections[db].cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {StaleFleetDay._meta.db_table} "  # noqa: S608 - a constant table name
            "WHERE metric = %s AND day >= %s AND day < %s RETURNING day",
            [metric, first, stop],
        )
        todo = {_as_date(day) for (day,) in cursor.fetchall()}
        known = set(FleetDay.objects.filter(**in_range).values_list("day", flat=True))
        todo |= {first + timedelta(days=n) for n in range((stop - first).days)} - known
        if not todo:
            return 0
        spreads = _fleet_day_spreads(cursor, metric=metric, days=sorted(todo))
        FleetDay.objects.bulk_create(
            [
                FleetDay(metric=metric, day=day, tenants=count, p10=p10, median=median, p90=p90)
                for day in sorted(todo)
                for count, p10, median, p90 in [spreads.get(day, (0, None, None, None))]
            ],
            batch_size=500,
            update_conflicts=True,
            unique_fields=["metric", "day"],
            update_fields=["tenants", "p10", "median", "p90"],
        )
    return len(todo)


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def _fleet_day_spreads(cursor, *, metric: str, days: list[date]) -> dict[date, tuple]:
    """Per day: (tenants, p10, median, p90) of the tenants' daily means in the rollup."""
    table = DailyScore._meta.db_table
    if cursor.db.vendor == "postgresql":
        cursor.execute(
            "SELECT day, count(*), "  # noqa: S608 - a constant table name
            "percentile_cont(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP (ORDER BY total / count) "
            f"FROM {table} WHERE metric = %s AND day = ANY(%s) GROUP BY day",
            [metric, days],
        )
        return {day: (count, *spread) for day, count, spread in cursor.fetchall()}
    wanted = set(days)
    cursor.execute(
        f"SELECT day, total / count FROM {table} "  # noqa: S608 - a constant table name
        "WHERE metric = %s AND day >= %s AND day <= %s ORDER BY day",
        [metric, days[0], days[-1]],
    )
    means: dict[date, list[float]] = defaultdict(list)
    for day, mean in cursor.fetchall():
        day = _as_date(day)
        if day in wanted:
            means[day].append(mean)
    spreads = {}
    for day, values in means.items():
        values.sort()
        spreads[day] = (len(values), *_spread(values))
    return spreads


def _live_fleet_band(
    *, tenants: QuerySet[Tenant], period: Period, bucket: str, rollup_from: datetime | None = None
) -> list[list]:
    """The band computed from the rollup and the raw part days, for these tenants only."""
    if connections[tenants.db].vendor == "postgresql":
        return _fleet_band_postgresql(
            tenants=tenants, period=period, bucket=bucket, rollup_from=rollup_from
        )
    per_bucket: dict[datetime, list[float]] = defaultdict(list)
    stats = _bucket_stats(tenants=tenants, period=period, bucket=bucket, rollup_from=rollup_from)
    for (_, moment), one in stats.items():
        per_bucket[moment].append(_mean(one))
    band = []
    for moment in sorted(per_bucket):
        values = sorted(per_bucket[moment])
        band.append([_iso(moment)] + [round(value, 2) for value in _spread(values)])
    return band


# Per tenant and bucket on PostgreSQL: the rollup's whole days plus the part days at either
# end, summed. The dashboard's all-tenant queries build on it and aggregate in the database.
_PER_TENANT_SQL = """
WITH parts AS (
    SELECT tenant_id, date_trunc(%(unit)s, day::timestamp) AS bucket, count AS n, total
    FROM scoreboard_dailyscore
    WHERE metric = %(metric)s AND day >= %(first_day)s AND day < %(end_day)s
      AND tenant_id IN ({tenants})
    UNION ALL
    SELECT tenant_id, date_trunc(%(unit)s, measured_at AT TIME ZONE 'UTC'), count(*), sum(value)
    FROM (
        -- Two ranges, not one OR: each is an index-only scan of reading_metric_time,
        -- where the OR made a bitmap scan that read every reading's table page.
        SELECT tenant_id, measured_at, value FROM scoreboard_reading
        WHERE metric = %(metric)s AND measured_at >= %(start)s AND measured_at < %(first)s
        UNION ALL
        SELECT tenant_id, measured_at, value FROM scoreboard_reading
        WHERE metric = %(metric)s AND measured_at >= %(end)s AND measured_at < %(stop)s
    ) part_days
    WHERE tenant_id IN ({tenants})
    GROUP BY 1, 2
), per_tenant AS ({per_tenant})
"""
# Daily buckets: the whole days and the part days never share a bucket, so each part is a
# bucket already. Weekly ones are summed over their parts.
_DAILY_MEANS = "SELECT tenant_id, bucket, total / n AS mean FROM parts"
_SUMMED_MEANS = "SELECT tenant_id, bucket, sum(total) / sum(n) AS mean FROM parts GROUP BY 1, 2"

_FLEET_BAND_SQL = """
SELECT bucket, percentile_cont(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP (ORDER BY mean)
FROM per_tenant GROUP BY bucket ORDER BY bucket
"""


def _per_tenant_rows(
    select: str,
    *,
    tenants: QuerySet[Tenant],
    period: Period,
    bucket: str,
    rollup_from: datetime | None = None,
) -> list[tuple]:
    first, end = _whole_days(period)
    tenant_sql, tenant_params = tenants.order_by().values("pk").query.sql_with_params()
    # The tenant subquery's own %s placeholders become named ones, used twice.
    names = {f"tenant_{n}": value for n, value in enumerate(tenant_params)}
    tenant_sql = tenant_sql % tuple(f"%({name})s" for name in names)
    params = {
        "unit": "week" if bucket == "week" else "day",
        "metric": Metric.SECURE_SCORE,
        "first_day": max(first, rollup_from or first).date(),
        "end_day": end.date(),
        "start": period.start,
        "first": first,
        "end": end,
        "stop": period.end,
        **names,
    }
    with connections[tenants.db].cursor() as cursor:
        per_tenant = _SUMMED_MEANS if bucket == "week" else _DAILY_MEANS
        cursor.execute(
            _PER_TENANT_SQL.format(tenants=tenant_sql, per_tenant=per_tenant) + select, params
        )
        return cursor.fetchall()


def _fleet_band_postgresql(
    *, tenants: QuerySet[Tenant], period: Period, bucket: str, rollup_from: datetime | None = None
) -> list[list]:
    """The fleet band in one query: the rollup and the part days, percentiles in the database."""
    rows = _per_tenant_rows(
        _FLEET_BAND_SQL, tenants=tenants, period=period, bucket=bucket, rollup_from=rollup_from
    )
    return [
        [_iso(moment.replace(tzinfo=UTC)), *(round(value, 2) for value in percentiles)]
        for moment, percentiles in rows
    ]


def trend_data(*, tenants: QuerySet[Tenant], period: Period, picked: Iterable[Tenant] = ()) -> dict:
    """The overview chart: one line per tenant, or the fleet band plus picked tenants."""
    total = tenants.count()
    fleet_mode = total > MAX_COMPARED
    bucket = bucket_for(period.span)
    if fleet_mode:
        lines_for = list(picked)[:MAX_COMPARED]
        # The band is made of bucket means: raw readings would give a band per hour.
        fleet_bucket = "day" if bucket == "raw" else bucket
        fleet = {
            "count": total,
            "points": fleet_band(tenants=tenants, period=period, bucket=fleet_bucket, count=total),
        }
    else:
        lines_for = list(tenants)
        fleet = None
    return {
        "mode": "fleet" if fleet_mode else "tenants",
        "start": _iso(period.start),
        "end": _iso(period.end),
        "bucket": bucket,
        "tenants": _tenant_lines(lines_for, period, bucket),
        "fleet": fleet,
    }


def tenant_chart(*, tenant: Tenant, period: Period) -> dict:
    """One tenant: every reading for short ranges, a min/mean/max band for long ones."""
    readings = _in_period(period).filter(tenant=tenant)
    data = {"name": tenant.name, "start": _iso(period.start), "end": _iso(period.end)}
    # Counting stops past the limit: two years of readings need not all be counted.
    if readings[: RAW_READINGS_LIMIT + 1].count() <= RAW_READINGS_LIMIT:
        rows = readings.order_by("measured_at").values_list("measured_at", "value")
        return {**data, "bucket": "raw", "points": [[_iso(m), v] for m, v in rows]}
    bucket = "week" if period.span > WEEKLY_SPAN else "day"
    stats = _bucket_stats(tenants=[tenant.pk], period=period, bucket=bucket)
    points = [
        [_iso(moment), round(low, 2), round(total / n, 2), round(high, 2)]
        for (_, moment), (n, total, low, high) in sorted(stats.items())
    ]
    return {**data, "bucket": bucket, "points": points}


def readings_table(*, tenant: Tenant, period: Period) -> QuerySet[Reading]:
    """The tenant's readings in the range, newest first (paginate it)."""
    return _in_period(period).filter(tenant=tenant).order_by("-measured_at")


# --- Export ---------------------------------------------------------------------

EXPORT_HEADER = [
    "tenant_name",
    "tenant_slug",
    "azure_tenant_id",
    "metric",
    "measured_at",
    "value",
    "fetched_at",
]


def export_rows(*, tenants: QuerySet[Tenant], period: Period | None) -> Iterator[tuple]:
    """Every reading of the tenants in the range, streamed from the database."""
    readings = Reading.objects.filter(tenant__in=tenants, metric=Metric.SECURE_SCORE)
    if period is not None:
        readings = readings.filter(measured_at__gte=period.start, measured_at__lt=period.end)
    rows = readings.order_by("tenant__name", "tenant_id", "measured_at").values_list(
        "tenant__name",
        "tenant__slug",
        "tenant__tenant_id",
        "metric",
        "measured_at",
        "value",
        "fetched_at",
    )
    # A server-side cursor on PostgreSQL, chunked fetches elsewhere: constant memory.
    for name, slug, azure_id, metric, measured_at, value, fetched_at in rows.iterator(
        chunk_size=5000
    ):
        yield (
            name,
            slug,
            str(azure_id),
            metric,
            _sheet_time(measured_at),
            value,
            _sheet_time(fetched_at),
        )


# Spreadsheets run cell text that starts with these as a formula (OWASP CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
EXPORT_CHUNK_BYTES = 256 * 1024

# One tenant's readings; the tenant's cells arrive neutralised, as parameters.
_EXPORT_COPY_SQL = """
COPY (
    SELECT %(name)s, %(slug)s, %(azure_id)s, metric,
           to_char(measured_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS'),
           value,
           to_char(fetched_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
    FROM scoreboard_reading
    WHERE tenant_id = %(tenant)s AND metric = %(metric)s {period}
    ORDER BY measured_at
) TO STDOUT WITH (FORMAT csv)
"""


def neutralise(value: object) -> object:
    """Text a spreadsheet would run as a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def export_csv(*, tenants: QuerySet[Tenant], period: Period | None) -> Iterator[bytes]:
    """The export as CSV bytes in chunks of about 256 KB: the header, then `export_rows`.

    On PostgreSQL the database writes the CSV itself (COPY TO STDOUT), so the export
    runs at the speed of a COPY; elsewhere the rows go through the csv module. Either
    way text cells are neutralised and lines end with a line feed.
    """
    if connections[tenants.db].vendor == "postgresql":
        yield from _export_csv_postgresql(tenants=tenants, period=period)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_HEADER)
    for row in export_rows(tenants=tenants, period=period):
        writer.writerow([neutralise(value) for value in row])
        if buffer.tell() >= EXPORT_CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def _export_csv_postgresql(*, tenants: QuerySet[Tenant], period: Period | None) -> Iterator[bytes]:
    # One COPY per tenant, tenants in the export's order: each reads its readings in
    # index order. A single COPY over every tenant sorted all the rows, on disk for a
    # large export, and took the database twice as long as a plain COPY of the table.
    params: dict[str, object] = {"metric": Metric.SECURE_SCORE}
    in_period = ""
    if period is not None:
        in_period = "AND measured_at >= %(start)s AND measured_at < %(end)s"
        params.update(start=period.start, end=period.end)
    statement = _EXPORT_COPY_SQL.format(period=in_period)
    ordered = list(
        Tenant.objects.using(tenants.db)
        .filter(pk__in=tenants.values("pk"))
        .order_by("name", "pk")
        .values_list("pk", "name", "slug", "tenant_id")
    )
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(EXPORT_HEADER)
    chunk = bytearray(header.getvalue().encode())
    # Django's cursor wrapper passes no parameters to copy(): use psycopg's own cursor.
    with connections[tenants.db].cursor() as cursor:
        psycopg_cursor = cursor.cursor
        for pk, name, slug, azure_id in ordered:
            cells = {"name": neutralise(name), "slug": neutralise(slug), "azure_id": str(azure_id)}
            # Leaving this block early (an error, the client gone) cancels the COPY.
            with psycopg_cursor.copy(statement, {**params, **cells, "tenant": pk}) as copy:
                # libpq hands over one line at a time: gather them into large chunks.
                for line in copy:
                    chunk += line
                    if len(chunk) >= EXPORT_CHUNK_BYTES:
                        yield bytes(chunk)
                        chunk.clear()
    yield bytes(chunk)
