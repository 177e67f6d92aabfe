import logging
from datetime import date, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe

from scoreboard import history
from scoreboard.celery import broker_status
from scoreboard.models import DispatcherHeartbeat
from tenants import access
from tenants.models import Tenant

log = logging.getLogger(__name__)

READINGS_PER_PAGE = 50
RECENT_ATTEMPTS = 20


def _period(request: HttpRequest, tenants) -> tuple[history.Period, str]:
    """The requested range, or the default one and a message saying what was wrong."""
    now = timezone.now()

    def earliest():
        return history.earliest_reading(tenants)

    try:
        return history.parse_period(request.GET, now=now, earliest=earliest), ""
    except history.InvalidPeriod as problem:
        return history.parse_period({}, now=now, earliest=earliest), str(problem)


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    tenants = access.visible_tenants(request.user)
    period, problem = _period(request, tenants)
    picked_slugs = request.GET.getlist("pick")[: history.MAX_COMPARED]
    picked = tenants.filter(slug__in=picked_slugs)
    now = timezone.now()
    rows = history.overview_rows(tenants=tenants, now=now)
    slugs = {row.tenant.pk: row.tenant.slug for row in rows}
    context = {
        "rows": rows,
        "period": period,
        "presets": list(history.PRESETS),
        "period_problem": problem,
        "trend": history.trend_data(tenants=tenants, period=period, picked=picked),
        "sparklines": history.sparklines(tenants=tenants, now=now, slugs=slugs),
        "picked": set(picked.values_list("slug", flat=True)),
        "max_compared": history.MAX_COMPARED,
    }
    return render(request, "scoreboard/overview.html", context, status=400 if problem else 200)


@login_required
@require_GET
def tenant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    tenant = access.get_visible_tenant(request.user, slug)
    period, problem = _period(request, Tenant.objects.filter(pk=tenant.pk))
    readings = Paginator(history.readings_table(tenant=tenant, period=period), READINGS_PER_PAGE)
    context = {
        "tenant": tenant,
        "health": history.health_of(tenant, now=timezone.now()),
        "period": period,
        "presets": list(history.PRESETS),
        "period_problem": problem,
        "chart": history.tenant_chart(tenant=tenant, period=period),
        "readings": readings.get_page(request.GET.get("page")),
        "attempts": tenant.fetch_attempts.order_by("-scheduled_for")[:RECENT_ATTEMPTS],
    }
    return render(request, "scoreboard/tenant_detail.html", context, status=400 if problem else 200)


def _bad_request(message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=400, content_type="text/plain; charset=utf-8")


@login_required
@require_GET
def export_csv(request: HttpRequest) -> HttpResponse:
    """Readings as CSV, streamed: `tenant` (slug), `start`, `end` (YYYY-MM-DD) all optional."""
    tenants = access.visible_tenants(request.user)
    slug = request.GET.get("tenant", "").strip()
    if slug:
        tenants = tenants.filter(slug=slug)
        # Unknown and not-visible answer the same, so the export cannot probe for slugs.
        if not tenants.exists():
            return _bad_request(f"No tenant {slug[:80]!r} among the tenants you may see.")
    period = None
    if request.GET.get("start") or request.GET.get("end"):
        try:
            period = history.parse_period(
                request.GET,
                now=timezone.now(),
                earliest=lambda: history.earliest_reading(tenants),
            )
        except history.InvalidPeriod as problem:
            return _bad_request(str(problem))
    # Streamed in large chunks: on PostgreSQL the database writes the CSV (COPY).
    response = StreamingHttpResponse(
        history.export_csv(tenants=tenants, period=period), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{_export_name(slug, period)}"'
    return response


def _export_name(slug: str, period: history.Period | None) -> str:
    who = slug or "all-tenants"
    if period is None:
        return f"scoreboard-{who}-all-time.csv"
    last: date = period.last_date
    return f"scoreboard-{who}-{period.start_date}-to-{last}.csv"


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Health for load balancers and the container check: no login, nothing about tenants.

    503 names what is wrong: the database or the broker cannot be reached, or no
    dispatcher run finished lately (beat, every worker or the broker is down; right
    after an install, until beat's first dispatch has run).
    """
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except DatabaseError as error:
        log.warning("health check: database unreachable: %s", error)
        database = "unreachable: " + " ".join(str(error).split())[:200]
    # A dead broker must not hold the probe longer than the prober waits.
    broker = broker_status(timeout=2.0)
    dispatcher = "unknown: the database is unreachable"
    if database == "ok":
        limit = timedelta(seconds=settings.SCOREBOARD_DISPATCH_STALE_AFTER_SECONDS)
        try:
            dispatcher = DispatcherHeartbeat.status(now=timezone.now(), limit=limit)
        except DatabaseError as error:  # e.g. before `manage.py migrate` has run
            dispatcher = "unknown: " + " ".join(str(error).split())[:200]
    checks = {"database": database, "broker": broker, "dispatcher": dispatcher}
    ok = all(value == "ok" for value in checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)
