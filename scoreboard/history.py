"""The read side: overview rows, chart series and export rows.

Views read readings through this module only. Long ranges are aggregated in
the database (per-day or per-week buckets), never in Python over every row,
and the number of queries does not grow with the number of tenants.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Avg, Max, Min, OuterRef, QuerySet, Subquery
from django.db.models.functions import TruncDay, TruncWeek

from scoreboard.defender import ErrorKind
from scoreboard.models import Metric, Reading
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


def parse_period(params: Mapping[str, str], *, now: datetime, earliest: datetime | None) -> Period:
    """The range asked for by `range` (a preset) or `start`/`end` (YYYY-MM-DD, UTC days).

    Dates win over a preset; one date alone is completed with today or the
    first reading.
    """
    start_text = (params.get("start") or "").strip()
    end_text = (params.get("end") or "").strip()
    if start_text or end_text:
        first = earliest or now - timedelta(days=30)
        start = _parse_date(start_text, "start") if start_text else first.date()
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
        start = earliest or now - timedelta(days=30)
        return Period(key, min(start, now - timedelta(days=1)), now)
    return Period(key, now - timedelta(days=days), now)


def earliest_reading(tenants: QuerySet[Tenant]) -> datetime | None:
    return Reading.objects.filter(tenant__in=tenants, metric=Metric.SECURE_SCORE).aggregate(
        first=Min("measured_at")
    )["first"]


def bucket_for(span: timedelta) -> str:
    if span <= RAW_SPAN:
        return "raw"
    if span <= WEEKLY_SPAN:
        return "day"
    return "week"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _in_period(period: Period) -> QuerySet[Reading]:
    return Reading.objects.filter(
        metric=Metric.SECURE_SCORE, measured_at__gte=period.start, measured_at__lt=period.end
    )


def _bucketed(readings: QuerySet[Reading], bucket: str) -> QuerySet:
    trunc = TruncWeek if bucket == "week" else TruncDay
    return (
        readings.annotate(bucket=trunc("measured_at", tzinfo=UTC))
        .values("tenant_id", "bucket")
        .annotate(low=Min("value"), mean=Avg("value"), high=Max("value"))
        .order_by("tenant_id", "bucket")
    )


# --- Overview -------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    status: str  # ok, stale, failing, waiting, off
    label: str
    detail: str = ""


def health_of(tenant: Tenant, *, now: datetime) -> Health:
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
    tenant: Tenant
    latest: float | None
    latest_at: datetime | None
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


def overview_rows(*, tenants: QuerySet[Tenant], now: datetime) -> list[OverviewRow]:
    annotated = tenants.annotate(
        value_7d=_value_at(now - timedelta(days=7)),
        value_30d=_value_at(now - timedelta(days=30)),
    ).order_by("name")
    rows = []
    for tenant in annotated:
        latest = tenant.last_score

        def change(before: float | None, latest: float | None = latest) -> float | None:
            return None if latest is None or before is None else latest - before

        rows.append(
            OverviewRow(
                tenant=tenant,
                latest=latest,
                latest_at=tenant.last_measured_at,
                change_7d=change(tenant.value_7d),
                change_30d=change(tenant.value_30d),
                health=health_of(tenant, now=now),
            )
        )
    return rows


def sparklines(*, tenants: QuerySet[Tenant], now: datetime) -> dict[str, list[list]]:
    """Daily means of the last 30 days, per tenant slug."""
    period = Period("30d", now - timedelta(days=SPARKLINE_DAYS), now)
    slugs = dict(tenants.values_list("pk", "slug"))
    series: dict[str, list[list]] = {slug: [] for slug in slugs.values()}
    for row in _bucketed(_in_period(period).filter(tenant__in=tenants), "day"):
        series[slugs[row["tenant_id"]]].append([_iso(row["bucket"]), round(row["mean"], 2)])
    return series


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
        for row in _bucketed(readings, bucket):
            points[row["tenant_id"]].append([_iso(row["bucket"]), round(row["mean"], 2)])
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


def fleet_band(*, tenants: QuerySet[Tenant], period: Period, bucket: str) -> list[list]:
    """Per bucket: [time, p10, median, p90] over the tenants' bucket means."""
    per_bucket: dict[datetime, list[float]] = defaultdict(list)
    for row in _bucketed(_in_period(period).filter(tenant__in=tenants), bucket):
        per_bucket[row["bucket"]].append(row["mean"])
    band = []
    for moment in sorted(per_bucket):
        values = sorted(per_bucket[moment])
        band.append(
            [_iso(moment)]
            + [round(percentile(values, fraction), 2) for fraction in (0.1, 0.5, 0.9)]
        )
    return band


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
            "points": fleet_band(tenants=tenants, period=period, bucket=fleet_bucket),
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
    if readings.count() <= RAW_READINGS_LIMIT:
        rows = readings.order_by("measured_at").values_list("measured_at", "value")
        return {**data, "bucket": "raw", "points": [[_iso(m), v] for m, v in rows]}
    bucket = "week" if period.span > WEEKLY_SPAN else "day"
    points = [
        [_iso(row["bucket"]), round(row["low"], 2), round(row["mean"], 2), round(row["high"], 2)]
        for row in _bucketed(readings, bucket)
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
        yield (name, slug, str(azure_id), metric, _iso(measured_at), value, _iso(fetched_at))
