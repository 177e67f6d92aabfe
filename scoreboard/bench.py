"""The MSSP-scale benchmark behind `manage.py bench`: data, figures and their limits.

Every figure is timed next to a limit measured in the same run: what the database
itself needs for the same answer (hand-written SQL over the raw readings, or a
COPY), or for the fetch cycle the time the simulated API makes unavoidable. A
figure meets its target when it stays within the issue's bounds (#6).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Max
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from scoreboard import defender, fetching, history
from scoreboard.models import DailyScore, FetchAttempt, Metric, Reading
from tenants.models import Tenant

BENCH_NAMESPACE = uuid.UUID("0b6c1c57-3a52-4d7e-8f0a-55b0e1c9d2aa")
SLUG_PREFIX = "bench-"
DISPATCH_PREFIX = "dispatch-bench-"
BENCH_USER = "bench-staff"
# Bench tenants are never due: the fetch cycle and the dispatcher make their own attempts.
FAR_FUTURE = datetime(2999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Size:
    tenants: int
    days: int
    per_day: int

    @property
    def readings(self) -> int:
        return self.tenants * self.days * self.per_day

    @property
    def step(self) -> timedelta:
        return timedelta(seconds=86400 // self.per_day)


# --- Progress ---------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal, a line per tenth elsewhere."""

    def __init__(self, label: str, total: int, out: TextIO = sys.stderr) -> None:
        self.label, self.total, self.out = label, max(total, 1), out
        self.started = time.monotonic()
        self.tty = out.isatty()
        self.shown_tenth = -1

    def update(self, done: int) -> None:
        fraction = min(done / self.total, 1.0)
        elapsed = time.monotonic() - self.started
        if self.tty:
            bar = "#" * int(fraction * 30)
            self.out.write(f"\r{self.label} [{bar:<30}] {fraction:6.1%} {elapsed:6.1f} s")
            self.out.flush()
        elif int(fraction * 10) > self.shown_tenth:
            self.shown_tenth = int(fraction * 10)
            self.out.write(f"{self.label}: {fraction:.0%} after {elapsed:.1f} s\n")
            self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


# --- Data ---------------------------------------------------------------------------


def _bench_tenants() -> Any:
    return Tenant.objects.filter(slug__startswith=SLUG_PREFIX)


def data_present(size: Size) -> bool:
    """True when the bench tenants and their generated readings are all there."""
    if _bench_tenants().count() != size.tenants:
        return False
    generated = Reading.objects.filter(
        tenant__slug__startswith=SLUG_PREFIX, attempt__isnull=True, metric=Metric.SECURE_SCORE
    )
    return generated.count() == size.readings


def generate(size: Size, *, now: datetime, out: TextIO = sys.stderr) -> None:
    """Replace the bench tenants and readings with a fresh data set of `size`."""
    _bench_tenants().delete()
    end = now.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=size.days)
    tenants = [
        Tenant(
            name=f"Bench tenant {n:05}",
            slug=f"{SLUG_PREFIX}{n:05}",
            tenant_id=uuid.uuid5(BENCH_NAMESPACE, f"tenant-{n}"),
            client_id=uuid.uuid5(BENCH_NAMESPACE, f"app-{n}"),
            client_secret="simulator-secret",  # noqa: S106 - the simulator's public secret
            cloud="simulator",
            next_fetch_at=FAR_FUTURE,
        )
        for n in range(size.tenants)
    ]
    Tenant.objects.bulk_create(tenants, batch_size=1000)
    ids = list(_bench_tenants().order_by("pk").values_list("pk", flat=True))
    progress = Progress("readings", len(ids), out)
    insert = _insert_postgresql if connection.vendor == "postgresql" else _insert_python
    chunk = max(1, 200_000 // max(size.days * size.per_day, 1))
    with transaction.atomic(), _rollup_paused():
        for offset in range(0, len(ids), chunk):
            insert(ids[offset : offset + chunk], start=start, size=size)
            progress.update(offset + chunk)
    progress.close()
    out.write("daily rollup...\n")
    DailyScore.rebuild(tenant_ids=ids)
    _set_latest(ids)
    if connection.vendor == "postgresql":
        # VACUUM sets the visibility map that index-only scans need; it cannot run in a
        # transaction (the tests), where fresh statistics have to do.
        command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
        with connection.cursor() as cursor:
            for table in ("scoreboard_reading", "scoreboard_dailyscore", "tenants_tenant"):
                cursor.execute(f"{command} {table}")


@contextmanager
def _rollup_paused() -> Iterator[None]:
    """On PostgreSQL, load without per-row triggers; `rebuild` counts the days afterwards.

    A superuser skips every trigger, the foreign-key checks included (the tenant ids come
    from the tenant table itself); others skip only the rollup's and pay for the checks.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if cursor.fetchone()[0]:
            cursor.execute("SET LOCAL session_replication_role = replica")
            yield
            cursor.execute("SET LOCAL session_replication_role = DEFAULT")
            return
        cursor.execute("ALTER TABLE scoreboard_reading DISABLE TRIGGER reading_daily_score_add")
        yield
        # The deferred foreign-key checks must run before the table may be altered again.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE scoreboard_reading ENABLE TRIGGER reading_daily_score_add")


# The score of tenant t at moment m: a level per tenant, a slow drift over months,
# a weekly swing, and hourly noise. The same formula in SQL and in Python.
def _score(tenant_id: int, epoch: float) -> float:
    days = epoch / 86400
    level = 250 + (tenant_id * 37) % 450
    drift = 60 * math.sin(days / 90 + tenant_id)
    weekly = 15 * math.sin(days * 2 * math.pi / 7 + tenant_id / 3)
    noise = 4 * math.sin(epoch / 3600 * 1.7 + tenant_id * 11)
    return round(level + drift + weekly + noise, 2)


_SCORE_SQL = """
round((250 + (t.id * 37) %% 450
  + 60 * sin(extract(epoch from m) / 86400 / 90 + t.id)
  + 15 * sin(extract(epoch from m) / 86400 * 2 * pi() / 7 + t.id / 3.0)
  + 4 * sin(extract(epoch from m) / 3600 * 1.7 + t.id * 11))::numeric, 2)::float8
"""


def _insert_postgresql(ids: list[int], *, start: datetime, size: Size) -> None:
    last = start + timedelta(days=size.days) - size.step
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO scoreboard_reading (tenant_id, metric, value, measured_at, fetched_at)
            SELECT t.id, %s, {_SCORE_SQL}, m, m
            FROM tenants_tenant t
            CROSS JOIN generate_series(%s::timestamptz, %s::timestamptz, %s::interval) m
            WHERE t.id = ANY(%s)
            ORDER BY t.id, m
            """,  # noqa: S608 - the formula is a constant; values are parameters
            [Metric.SECURE_SCORE, start, last, size.step, ids],
        )


def _insert_python(ids: list[int], *, start: datetime, size: Size) -> None:
    step = size.step
    count = size.days * size.per_day
    rows = []
    for tenant_id in ids:
        for n in range(count):
            moment = start + n * step
            rows.append(
                Reading(
                    tenant_id=tenant_id,
                    metric=Metric.SECURE_SCORE,
                    value=_score(tenant_id, moment.timestamp()),
                    measured_at=moment,
                    fetched_at=moment,
                )
            )
    Reading.objects.bulk_create(rows, batch_size=5000)


def _set_latest(ids: list[int]) -> None:
    """The newest reading on each tenant row, as fetching keeps it."""
    newest = (
        Reading.objects.filter(tenant_id__in=ids, metric=Metric.SECURE_SCORE)
        .values("tenant_id")
        .annotate(at=Max("measured_at"))
    )
    latest = {row["tenant_id"]: row["at"] for row in newest}
    values = dict(
        Reading.objects.filter(tenant_id__in=ids, measured_at__in=set(latest.values()))
        .filter(metric=Metric.SECURE_SCORE)
        .values_list("tenant_id", "value")
    )
    tenants = list(Tenant.objects.filter(pk__in=ids).only("pk"))
    for tenant in tenants:
        tenant.last_measured_at = latest.get(tenant.pk)
        tenant.last_score = values.get(tenant.pk)
        tenant.last_success_at = tenant.last_measured_at
    Tenant.objects.bulk_update(
        tenants, ["last_measured_at", "last_score", "last_success_at"], batch_size=1000
    )


FIGURE_GROUPS = ("overview", "tenant", "fleet", "export", "fetch", "dispatch", "explain")


@dataclass(frozen=True)
class FetchCycle:
    attempts: int
    threads: int
    delay: float


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    limit: float | None
    target: str
    meets_target: bool
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return None if not self.limit else self.value / self.limit

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = None if self.ratio is None else round(self.ratio, 3)
        return data


def _median_seconds(action: Callable[[], object], runs: int) -> float:
    """The median wall time of `runs` calls after one warm-up call."""
    action()
    times = []
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class _QueryTimer:
    """Counts the queries run through Django's connection and adds up their time."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.statements: list[tuple[str, Any]] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - started
            self.count += 1
            self.statements.append((sql, params))


def _timed_queries(action: Callable[[], object]) -> _QueryTimer:
    timer = _QueryTimer()
    with connection.execute_wrapper(timer):
        action()
    return timer


def _staff_client() -> Client:
    user, _ = get_user_model().objects.get_or_create(
        username=BENCH_USER, defaults={"is_staff": True, "is_superuser": True}
    )
    hosts = [host for host in settings.ALLOWED_HOSTS if host not in ("*", "") and host[0] != "."]
    client = Client(HTTP_HOST=hosts[0] if hosts else "localhost")
    client.force_login(user)
    return client


def _json_script(html: str, element_id: str) -> Any:
    """The data a page hands its charts through `json_script`."""
    start = html.index(">", html.index(f'<script id="{element_id}"')) + 1
    return json.loads(html[start : html.index("</script>", start)])


def _sql_seconds(statements: list[tuple[str, list]], runs: int) -> float:
    """The statements' median time; on PostgreSQL the better of JIT on and off.

    Scoreboard's sessions turn JIT off (settings); a limit is the database at
    its best, and the long raw-row aggregates can gain from it.
    """

    def run(jit: str | None) -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            if jit:
                cursor.execute(f"SET LOCAL jit = {jit}")
            for sql, params in statements:
                cursor.execute(sql, params)
                cursor.fetchall()

    if connection.vendor != "postgresql":
        return _median_seconds(lambda: run(None), runs)
    return min(_median_seconds(lambda jit=jit: run(jit), runs) for jit in ("on", "off"))


def _day_sql(column: str) -> str:
    if connection.vendor == "postgresql":
        return f"date_trunc('day', {column} AT TIME ZONE 'UTC')"
    return f"date({column})"


# --- Overview -----------------------------------------------------------------------


def _overview_limit_sql(now: datetime) -> list[tuple[str, list]]:
    """The overview's numbers from the raw readings by hand: the yardstick for the page."""
    metric = Metric.SECURE_SCORE
    probe = (
        "(SELECT value FROM scoreboard_reading r WHERE r.tenant_id = t.id AND r.metric = %s "
        "AND r.measured_at <= %s ORDER BY r.measured_at DESC LIMIT 1)"
    )
    latest = f"SELECT t.id, {probe}, {probe}, {probe} FROM tenants_tenant t"  # noqa: S608
    sparkline_start = now - timedelta(days=history.SPARKLINE_DAYS)
    sparklines = (
        f"SELECT tenant_id, {_day_sql('measured_at')}, avg(value) FROM scoreboard_reading "  # noqa: S608
        "WHERE metric = %s AND measured_at >= %s AND measured_at < %s GROUP BY 1, 2"
    )
    return [
        (
            latest,
            [metric, now, metric, now - timedelta(days=7), metric, now - timedelta(days=30)],
        ),
        (sparklines, [metric, sparkline_start, now]),
    ]


def measure_overview(*, runs: int) -> tuple[list[Figure], list[tuple[str, Any]]]:
    client = _staff_client()
    url = reverse("overview")

    def page() -> None:
        response = client.get(url)
        assert response.status_code == 200, response.status_code

    page_seconds = _median_seconds(page, runs)
    timers = [_timed_queries(page) for _ in range(runs)]
    query_seconds = statistics.median(timer.seconds for timer in timers)
    limit = _sql_seconds(_overview_limit_sql(timezone.now()), runs)
    count = timers[0].count
    figures = [
        Figure(
            "overview page, server time",
            page_seconds * 1000,
            "ms",
            limit * 1000,
            "<= 150 ms",
            page_seconds <= 0.150,
            f"{Tenant.objects.count()} tenants, {count} queries",
        ),
        Figure(
            "overview page, its queries",
            query_seconds * 1000,
            "ms",
            limit * 1000,
            "<= 2x limit",
            query_seconds <= 2 * limit,
            f"{count} queries",
        ),
    ]
    return figures, timers[0].statements


# --- Tenant page --------------------------------------------------------------------


def measure_tenant_page(*, runs: int) -> tuple[list[Figure], list[tuple[str, Any]]]:
    tenant = _bench_tenants().order_by("pk").first()
    client = _staff_client()
    now = timezone.now()
    start, end = (now - timedelta(days=730)).date(), now.date()
    url = reverse("tenant_detail", args=[tenant.slug])
    params = {"start": str(start), "end": str(end)}
    response = client.get(url, params)
    assert response.status_code == 200, response.status_code
    chart = _json_script(response.content.decode(), "tenant-chart-data")
    payload = len(response.content)

    def page() -> None:
        client.get(url, params)

    seconds = _median_seconds(page, runs)
    statements = _timed_queries(page).statements
    limit_sql = (
        f"SELECT {_day_sql('measured_at')}, min(value), avg(value), max(value) "  # noqa: S608
        "FROM scoreboard_reading WHERE tenant_id = %s AND metric = %s "
        "AND measured_at >= %s AND measured_at < %s GROUP BY 1 ORDER BY 1"
    )
    limit = _sql_seconds(
        [
            (
                limit_sql,
                [
                    tenant.pk,
                    Metric.SECURE_SCORE,
                    history._midnight(start),
                    history._midnight(end + timedelta(days=1)),
                ],
            )
        ],
        runs,
    )
    points = len(chart["points"])
    return [
        Figure(
            "tenant page, 2 years, server time",
            seconds * 1000,
            "ms",
            limit * 1000,
            "<= 60 ms",
            seconds <= 0.060,
            f"{chart['bucket']} buckets",
        ),
        Figure(
            "tenant page, 2 years, chart points",
            points,
            "points",
            None,
            "<= 1000",
            points <= 1000,
        ),
        Figure(
            "tenant page, 2 years, payload",
            payload / 1024,
            "KB",
            None,
            "<= 150 KB",
            payload <= 150 * 1024,
            "the whole HTML page, uncompressed",
        ),
    ], statements


# --- Fleet chart --------------------------------------------------------------------

_FLEET_LIMIT_SQL = """
WITH per_tenant AS (
    SELECT tenant_id, date_trunc('day', measured_at AT TIME ZONE 'UTC') AS day, avg(value) AS mean
    FROM scoreboard_reading
    WHERE metric = %s AND measured_at >= %s AND measured_at < %s
    GROUP BY 1, 2
)
SELECT day, percentile_cont(ARRAY[0.1, 0.5, 0.9]) WITHIN GROUP (ORDER BY mean)
FROM per_tenant GROUP BY day ORDER BY day
"""


def measure_fleet(*, runs: int) -> list[Figure]:
    now = timezone.now()
    period = history.Period("1y", now - timedelta(days=365), now)
    tenants = Tenant.objects.all()

    def chart() -> None:
        data = history.trend_data(tenants=tenants, period=period)
        assert data["mode"] == "fleet"

    seconds = _median_seconds(chart, runs)
    limit = None
    if connection.vendor == "postgresql":
        limit = _sql_seconds(
            [(_FLEET_LIMIT_SQL, [Metric.SECURE_SCORE, period.start, period.end])], runs
        )
    return [
        Figure(
            "fleet chart, 1 year, server time",
            seconds * 1000,
            "ms",
            None if limit is None else limit * 1000,
            "<= 300 ms",
            seconds <= 0.300,
            "history.trend_data: daily p10, median, p90 over all tenants",
        )
    ]


# --- Export -------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Samples this process's resident memory every 20 ms while the block runs."""

    def __enter__(self) -> _PeakRss:
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


_COPY_LIMIT_SQL = """
COPY (
    SELECT t.name, t.slug, t.tenant_id, r.metric, r.measured_at, r.value, r.fetched_at
    FROM scoreboard_reading r JOIN tenants_tenant t ON t.id = r.tenant_id
    WHERE r.metric = 'secure_score'
    ORDER BY t.name, t.id, r.measured_at
) TO STDOUT WITH (FORMAT csv)
"""


def _copy_to_dev_null() -> None:
    """The database's own speed: psql runs the COPY and writes the CSV to /dev/null."""
    database = connection.settings_dict
    env = {**os.environ, "PGPASSWORD": database.get("PASSWORD") or ""}
    command = [
        "psql",
        "--no-psqlrc",
        "--quiet",
        "-h",
        database.get("HOST") or "localhost",
        "-p",
        str(database.get("PORT") or 5432),
        "-U",
        database.get("USER") or "postgres",
        "-d",
        database["NAME"],
        "-c",
        " ".join(_COPY_LIMIT_SQL.split()),
    ]
    with open(os.devnull, "wb") as sink:
        subprocess.run(command, stdout=sink, env=env, check=True)  # noqa: S603


def measure_export(*, runs: int, out: TextIO) -> list[Figure]:
    tenants = Tenant.objects.all()
    rows = Reading.objects.filter(metric=Metric.SECURE_SCORE).count()
    written = 0

    def export() -> None:
        nonlocal written
        written = sum(len(chunk) for chunk in history.export_csv(tenants=tenants, period=None))

    exports, copies, growths = [], [], []
    _copy_to_dev_null()  # warm-up: the table and its index into the cache
    for run in range(runs):
        gc.collect()
        with _PeakRss() as memory:
            started = time.perf_counter()
            export()
            exports.append(time.perf_counter() - started)
        growths.append(memory.growth)
        started = time.perf_counter()
        _copy_to_dev_null()
        copies.append(time.perf_counter() - started)
        out.write(f"export run {run + 1}: {exports[-1]:.1f} s, COPY {copies[-1]:.1f} s\n")
    rate = rows / statistics.median(exports)
    limit = rows / statistics.median(copies)
    growth = max(growths) / 2**20
    return [
        Figure(
            "CSV export, all rows, throughput",
            rate,
            "rows/s",
            limit,
            ">= 0.5x limit",
            rate >= 0.5 * limit,
            f"{rows:,} rows, {written / 2**20:,.0f} MB; limit: psql COPY to /dev/null",
        ),
        Figure(
            "CSV export, server memory growth",
            growth,
            "MB",
            None,
            "<= 50 MB",
            growth <= 50,
            "peak resident memory during the export minus before it",
        ),
    ]


# --- Fetch cycle --------------------------------------------------------------------


def _serve_simulator(delay: float, ready: Any, orders: Any) -> None:
    """The child process: a simulator whose every API answer takes `delay` seconds.

    It answers each order on `orders` with its CPU seconds so far, and stops at "stop".
    """
    from scoreboard import simulator

    cert_dir = Path(tempfile.gettempdir()) / "scoreboard-bench-simulator"
    with simulator.Simulator(cert_dir=cert_dir).start() as server:
        server.set_fault(simulator.WILDCARD_TENANT, "slow", delay=delay)
        ready.send((server.url, str(server.cert_path)))
        while True:
            order = orders.recv()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            ready.send(usage.ru_utime + usage.ru_stime)
            if order == "stop":
                return


class _SimulatorProcess:
    """A simulator in a child process, so its CPU is not counted as the fetchers'."""

    def __init__(self, url: str, cert: str, ready: Any, orders: Any) -> None:
        self.url, self.cert = url, cert
        self._ready, self._orders = ready, orders

    def cpu(self, order: str = "cpu") -> float | None:
        """The child's CPU seconds so far; None if it does not answer."""
        self._orders.send(order)
        return self._ready.recv() if self._ready.poll(10) else None


@contextmanager
def _simulator_process(delay: float) -> Iterator[_SimulatorProcess]:
    # fork: the child has Django loaded already and touches no database connection.
    context = multiprocessing.get_context("fork")
    ready_here, ready_there = context.Pipe()
    orders_here, orders_there = context.Pipe()
    child = context.Process(target=_serve_simulator, args=(delay, ready_there, orders_there))
    child.start()
    try:
        if not ready_here.poll(60):
            raise RuntimeError("the simulator did not start within 60 s")
        url, cert = ready_here.recv()
        process = _SimulatorProcess(url, cert, ready_here, orders_here)
        yield process
        process.cpu("stop")
    finally:
        child.join(10)
        if child.is_alive():
            child.terminate()


def _fetch_cycle(attempt_ids: list[int], threads: int) -> tuple[float, float, int]:
    """Run the attempts on a thread pool; returns wall seconds, CPU seconds, successes."""
    done = threading.Barrier(threads)

    def fetch(attempt_id: int) -> bool:
        return fetching.run_attempt(attempt_id=attempt_id).ok

    def close_connection(_: int) -> None:
        # Every pool thread closes its own database connection, once.
        done.wait()
        connection.close()

    cpu, wall = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        ok = sum(pool.map(fetch, attempt_ids))
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        list(pool.map(close_connection, range(threads)))
    return wall, cpu, ok


def _new_attempts(tenant_ids: list[int]) -> list[int]:
    scheduled = timezone.now()
    attempts = FetchAttempt.objects.bulk_create(
        FetchAttempt(tenant_id=pk, scheduled_for=scheduled, trigger=FetchAttempt.Trigger.COMMAND)
        for pk in tenant_ids
    )
    return [attempt.pk for attempt in attempts]


def measure_fetch(*, cycle: FetchCycle, runs: int, out: TextIO) -> list[Figure]:
    tenant_ids = list(
        _bench_tenants().order_by("pk").values_list("pk", flat=True)[: cycle.attempts]
    )
    if len(tenant_ids) < cycle.attempts:
        raise ValueError(f"the fetch cycle needs {cycle.attempts} bench tenants")
    walls, cpus, simulator_cpus = [], [], []
    # defender's sessions pool 64 connections per host; should --fetch-threads exceed
    # that, urllib3 warns on every surplus connection it drops: keep the table readable.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    with _simulator_process(cycle.delay) as simulator:
        saved = settings.SCOREBOARD_SIMULATOR_URL, settings.SCOREBOARD_CA_BUNDLE
        settings.SCOREBOARD_SIMULATOR_URL = simulator.url
        settings.SCOREBOARD_CA_BUNDLE = simulator.cert
        defender.reset()
        try:
            # The first cycle also signs every tenant in (discovery and a token each);
            # later ones reuse the tokens, as hourly fetches within a token's life do.
            for run in range(runs + 1):
                attempt_ids = _new_attempts(tenant_ids)
                simulator_before = simulator.cpu()
                wall, cpu, ok = _fetch_cycle(attempt_ids, cycle.threads)
                simulator_after = simulator.cpu()
                if ok != len(tenant_ids):
                    raise RuntimeError(f"only {ok} of {len(tenant_ids)} fetches succeeded")
                kind = "warm-up, signing in" if run == 0 else f"run {run}"
                served = ""
                if simulator_before is not None and simulator_after is not None:
                    served = f"; simulator CPU {(simulator_after - simulator_before) * 1000:.0f} ms"
                    if run:
                        simulator_cpus.append(simulator_after - simulator_before)
                out.write(f"fetch cycle {kind}: {wall:.2f} s, CPU {cpu * 1000:.0f} ms{served}\n")
                if run:
                    walls.append(wall)
                    cpus.append(cpu)
        finally:
            settings.SCOREBOARD_SIMULATOR_URL, settings.SCOREBOARD_CA_BUNDLE = saved
            defender.reset()
    limit = cycle.attempts * cycle.delay / cycle.threads
    wall = statistics.median(walls)
    cpu_per_fetch = statistics.median(cpus) / cycle.attempts * 1000
    # The simulator shares this machine's cores, which Microsoft's servers do not.
    simulator_note = (
        "; the simulator's own CPU, in its process, per timed cycle: "
        f"{statistics.median(simulator_cpus):.2f} s"
        if simulator_cpus
        else ""
    )
    return [
        Figure(
            f"fetch cycle, {cycle.attempts} tenants, wall time",
            wall,
            "s",
            limit,
            "<= 1.3x limit",
            wall <= 1.3 * limit,
            f"{cycle.threads} threads, API answers in {cycle.delay * 1000:.0f} ms",
        ),
        Figure(
            "fetch cycle, CPU per fetch",
            cpu_per_fetch,
            "ms",
            None,
            "<= 5 ms",
            cpu_per_fetch <= 5,
            "process CPU of all fetching threads (time.process_time)" + simulator_note,
        ),
    ]


# --- Dispatcher ---------------------------------------------------------------------


def _due_tenants(count: int, *, due: datetime) -> list[int]:
    """`count` enabled tenants due at `due`, made once and reset on later runs."""
    existing = Tenant.objects.filter(slug__startswith=DISPATCH_PREFIX)
    if existing.count() != count:
        existing.delete()
        Tenant.objects.bulk_create(
            (
                Tenant(
                    name=f"Dispatch bench {n:05}",
                    slug=f"{DISPATCH_PREFIX}{n:05}",
                    tenant_id=uuid.uuid5(BENCH_NAMESPACE, f"dispatch-{n}"),
                    client_id=uuid.uuid5(BENCH_NAMESPACE, f"dispatch-app-{n}"),
                    cloud="simulator",
                    next_fetch_at=due,
                )
                for n in range(count)
            ),
            batch_size=1000,
        )
    FetchAttempt.objects.filter(tenant__slug__startswith=DISPATCH_PREFIX).delete()
    existing.update(next_fetch_at=due, enabled=True)
    return list(existing.values_list("pk", flat=True))


def measure_dispatch(*, count: int, runs: int, out: TextIO) -> list[Figure]:
    from scoreboard.celery import app

    # Tasks go to an in-process queue: the figure is the dispatcher's own work plus
    # Celery's, not the speed of a shared broker (and no worker runs these fetches).
    app.conf.broker_url = "memory://"
    sent: list[int] = []
    times = []
    try:
        for run in range(runs):
            now = timezone.now()
            ids = _due_tenants(count, due=now - timedelta(minutes=1))
            started = time.perf_counter()
            dispatched = fetching.dispatch_due_fetches(now=now)
            times.append(time.perf_counter() - started)
            sent.append(dispatched)
            out.write(f"dispatch run {run + 1}: {dispatched} in {times[-1]:.2f} s\n")
            if dispatched != len(ids):
                raise RuntimeError(f"dispatched {dispatched} of {len(ids)} due tenants")
            if times[-1] > 60:
                break  # a far miss needs no median of several runs to tell
    finally:
        Tenant.objects.filter(slug__startswith=DISPATCH_PREFIX).delete()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(app.conf.task_default_queue)
    seconds = statistics.median(times)
    return [
        Figure(
            f"dispatcher, {count} due tenants",
            seconds,
            "s",
            None,
            "<= 2 s",
            seconds <= 2,
            f"claim, create the attempts, enqueue one message per batch of "
            f"{fetching.DISPATCH_BATCH} (in-memory broker; a worker's fan-out to a fetch "
            f"message per attempt is not in it); {len(times)} run(s)",
        )
    ]


# --- Index use ----------------------------------------------------------------------

BIG_TABLES = ("scoreboard_reading", "scoreboard_dailyscore")


def _plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def explain(statements: list[tuple[str, Any]]) -> list[Figure]:
    """EXPLAIN every query a page ran; a sequential scan of readings or the rollup fails."""
    if connection.vendor != "postgresql":
        return []
    seq_scans: set[str] = set()
    small_scans: set[str] = set()
    checked = 0
    with connection.cursor() as cursor:
        for sql, params in statements:
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            checked += 1
            for node in _plan_nodes(plan[0]["Plan"]):
                if node.get("Node Type") == "Seq Scan":
                    table = node.get("Relation Name", "")
                    (seq_scans if table in BIG_TABLES else small_scans).add(table)
    note = "sequential scans only of small tables: " + (", ".join(sorted(small_scans)) or "none")
    if seq_scans:
        note = "sequential scans of " + ", ".join(sorted(seq_scans))
    return [
        Figure(
            "page queries that scan readings without an index",
            len(seq_scans),
            "tables",
            None,
            "0",
            not seq_scans,
            f"{checked} queries checked; {note}",
        )
    ]


# --- Run and report -----------------------------------------------------------------


def run(
    *,
    size: Size,
    groups: list[str],
    runs: int,
    export_runs: int,
    fetch: FetchCycle,
    dispatch_tenants: int,
    out: TextIO = sys.stderr,
) -> list[Figure]:
    figures: list[Figure] = []
    statements: list[tuple[str, Any]] = []
    postgresql = connection.vendor == "postgresql"
    if postgresql:
        _vacuum_small_tables()
    for group in groups:
        out.write(f"measuring {group}...\n")
        if group == "overview":
            found, ran = measure_overview(runs=runs)
            figures += found
            statements += ran
        elif group == "tenant":
            found, ran = measure_tenant_page(runs=runs)
            figures += found
            statements += ran
        elif group == "fleet":
            figures += measure_fleet(runs=runs)
        elif group == "export" and postgresql:
            figures += measure_export(runs=export_runs, out=out)
        elif group == "fetch":
            figures += measure_fetch(cycle=fetch, runs=min(runs, 3), out=out)
        elif group == "dispatch":
            figures += measure_dispatch(count=dispatch_tenants, runs=min(runs, 3), out=out)
        elif group == "explain":
            if not statements:
                statements += measure_overview(runs=1)[1] + measure_tenant_page(runs=1)[1]
            figures += explain(statements)
        else:
            out.write(f"  {group}: PostgreSQL only, skipped on {connection.vendor}\n")
    return figures


# The tables earlier bench runs churn (the dispatcher rewrites 10,000 tenant rows a
# run). A server's autovacuum keeps them tidy; one with it off would measure the
# dead rows of earlier runs.
CHURNED_TABLES = (
    "tenants_tenant",
    "scoreboard_fetchattempt",
    "scoreboard_fleetday",
    "scoreboard_stalefleetday",
)


def _vacuum_small_tables() -> None:
    command = "ANALYZE" if connection.in_atomic_block else "VACUUM (ANALYZE)"
    with connection.cursor() as cursor:
        for table in CHURNED_TABLES:
            cursor.execute(f"{command} {table}")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def machine() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT version()" if connection.vendor == "postgresql" else "SELECT 1")
        database = cursor.fetchone()[0] if connection.vendor == "postgresql" else "SQLite"
    if connection.vendor == "sqlite":
        import sqlite3

        database = f"SQLite {sqlite3.sqlite_version}"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(memory, 1),
        "python": sys.version.split()[0],
        "database": database.split(" on ")[0],
        "platform": platform.platform(),
    }


def table(figures: list[Figure], *, size: Size) -> str:
    header = f"{size.tenants:,} tenants x {size.days} days x {size.per_day} = {size.readings:,}"
    lines = [
        header + f" readings on {connection.vendor}",
        "| figure | value | limit (same run) | ratio | target | meets |",
        "|---|---|---|---|---|---|",
    ]
    for figure in figures:
        limit = "-" if figure.limit is None else f"{_number(figure.limit)} {figure.unit}"
        ratio = "-" if figure.ratio is None else f"{figure.ratio:.2f}"
        lines.append(
            f"| {figure.name} | {_number(figure.value)} {figure.unit} | {limit} | {ratio} "
            f"| {figure.target} | {'yes' if figure.meets_target else 'NO'} |"
        )
    lines += [f"- {figure.name}: {figure.note}" for figure in figures if figure.note]
    return "\n".join(lines) + "\n"


def write_json(figures: list[Figure], path: Path, *, size: Size) -> None:
    data = {
        "size": asdict(size) | {"readings": size.readings},
        "machine": machine(),
        "figures": {figure.name: figure.as_dict() for figure in figures},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
