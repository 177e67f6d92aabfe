"""The dashboard in a real browser: Playwright driving Debian's Chromium against live_server.

Chromium is installed by `make test` (Debian's `chromium` package). When it is
missing these tests fail rather than skip: a dashboard nobody looked at in a
browser is not tested.
"""

import csv
import os
import shutil
from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, sync_playwright

from scoreboard.models import Reading
from tests.conftest import add_readings

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "browser-Pass-2026"


@pytest.fixture
def browser(monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Chromium is not installed: `make test` installs Debian's chromium package "
            "(apt-get install chromium)."
        )
    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes around it are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, page errors and dialogs are recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on(
            "console",
            lambda msg: msg.type == "error" and self.problems.append(f"console: {msg.text}"),
        )
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.problems.append(f"dialog opened: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def watched(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = Watched(context.new_page())
    yield page
    context.close()
    assert page.problems == []


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_superuser("boss", "boss@example.com", PASSWORD)


def log_in(page: Page, live_server, username: str = "boss") -> None:
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def painted_pixels(page: Page, selector: str) -> int:
    """How many pixels of a canvas are not transparent: 0 means nothing was drawn."""
    return page.eval_on_selector(
        selector,
        """canvas => {
            const context = canvas.getContext('2d');
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }""",
    )


def wait_for_chart(page: Page, name: str) -> None:
    page.wait_for_function(
        f"() => window.scoreboard && window.scoreboard.charts && window.scoreboard.charts.{name}"
    )


def click_legend_item(page: Page, chart: str, index: int) -> None:
    box = page.evaluate(
        f"""() => {{
            const chart = window.scoreboard.charts.{chart};
            const hit = chart.legend.legendHitBoxes[{index}];
            const rect = chart.canvas.getBoundingClientRect();
            return {{
                x: rect.left + hit.left + hit.width / 2,
                y: rect.top + hit.top + hit.height / 2,
            }};
        }}"""
    )
    page.mouse.click(box["x"], box["y"])


@pytest.fixture
def three_tenants(make_tenant):
    tenants = []
    for n, name in enumerate(["Contoso", "Fabrikam", "Northwind"]):
        tenant = make_tenant(name=name, slug=name.lower())
        add_readings(tenant, hours=60 * 24, start_value=400 + 100 * n)
        latest = Reading.objects.filter(tenant=tenant).latest("measured_at")
        tenant.record_success(value=latest.value, measured_at=latest.measured_at, at=timezone.now())
        tenants.append(tenant)
    return tenants


def test_overview_tenant_page_and_export_in_a_browser(live_server, watched, staff, three_tenants):
    page = watched.page
    log_in(page, live_server)

    # Overview: the table, a drawn trend chart and sparklines, the browser's time zone.
    assert page.locator("#overview-table tbody tr").count() == 3
    wait_for_chart(page, "trend")
    assert painted_pixels(page, "#trend-chart") > 1000
    page.wait_for_function("() => window.scoreboard.sparklines.length === 3")
    assert painted_pixels(page, "canvas.sparkline[data-slug=contoso]") > 50
    assert page.locator(".tz-name").first.inner_text() not in ("", "local time")

    # The legend hides and shows a tenant.
    visible = "() => window.scoreboard.charts.trend.isDatasetVisible(0)"
    assert page.evaluate(visible)
    click_legend_item(page, "trend", 0)
    # Chart.js handles pointer events once per animation frame: wait for it.
    page.wait_for_function(f"() => !({visible})()", timeout=5000)
    assert painted_pixels(page, "#trend-chart") > 1000
    click_legend_item(page, "trend", 0)
    page.wait_for_function(visible, timeout=5000)

    # Sorting by the latest score puts the highest last, then first.
    latest_header = page.locator("#overview-table th button.sort", has_text="Latest")
    latest_header.click()
    assert page.locator("#overview-table tbody tr").first.get_attribute("data-name") == "contoso"
    latest_header.click()
    assert page.locator("#overview-table tbody tr").first.get_attribute("data-name") == "northwind"

    # Filtering by name.
    page.fill("#tenant-filter", "fab")
    assert page.locator("#overview-table tbody tr:visible").count() == 1
    page.fill("#tenant-filter", "")

    # A tenant page, its chart, and a change of range.
    page.click("text=Fabrikam")
    page.wait_for_url(f"{live_server.url}/tenants/fabrikam/")
    wait_for_chart(page, "tenant")
    assert painted_pixels(page, "#tenant-chart") > 1000
    assert page.evaluate("() => window.scoreboard.charts.tenant.data.datasets.length") == 3
    page.select_option("#range-select", "7d")
    page.wait_for_url("**/tenants/fabrikam/?range=7d*")
    wait_for_chart(page, "tenant")
    assert page.evaluate("() => window.scoreboard.charts.tenant.data.datasets.length") == 1
    assert painted_pixels(page, "#tenant-chart") > 1000

    # The export of the range shown, read back.
    with page.expect_download() as download_info:
        page.click("#export-link")
    download = download_info.value
    today = timezone.now().date()
    assert download.suggested_filename == (
        f"scoreboard-fabrikam-{today - timedelta(days=7)}-to-{today}.csv"
    )
    with open(download.path(), newline="") as exported:
        rows = list(csv.reader(exported))
    assert rows[0][:2] == ["tenant_name", "tenant_slug"]
    assert {row[0] for row in rows[1:]} == {"Fabrikam"}
    assert 7 * 24 - 1 <= len(rows) - 1 <= 8 * 24
    # UTC without a zone designator, the form spreadsheets read as a date.
    assert all(
        datetime.strptime(row[4], "%Y-%m-%dT%H:%M:%S") and float(row[5]) > 0 for row in rows[1:]
    )


def test_custom_dates_and_a_bad_range_in_a_browser(live_server, watched, staff, three_tenants):
    page = watched.page
    log_in(page, live_server)
    page.goto(f"{live_server.url}/tenants/contoso/")
    page.select_option("#range-select", "custom")
    assert page.locator(".custom-dates").is_visible()
    today = timezone.now().date()
    page.fill("#range-start", str(today - timedelta(days=3)))
    page.fill("#range-end", str(today))
    page.click("#range-form button[type=submit]")
    page.wait_for_url("**start=*")
    wait_for_chart(page, "tenant")
    assert painted_pixels(page, "#tenant-chart") > 1000
    assert "Page 1 of 2" in page.inner_text(".pagination")


def test_hostile_tenant_names_render_as_text_in_a_browser(live_server, watched, staff, make_tenant):
    names = ["<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>"]
    for n, name in enumerate(names):
        add_readings(make_tenant(name=name, slug=f"hostile-{n}"), hours=48)
    page = watched.page
    log_in(page, live_server)
    wait_for_chart(page, "trend")
    labels = page.evaluate("() => window.scoreboard.charts.trend.data.datasets.map(d => d.label)")
    assert sorted(labels) == sorted(names)
    assert page.locator("#overview-table").inner_text().count("onerror=alert(1)") == 1
    page.goto(f"{live_server.url}/tenants/hostile-1/")
    wait_for_chart(page, "tenant")
    assert names[1] in page.inner_text("h1")
    # Dialogs and CSP violations are collected by `watched` and fail the test.


def test_phone_width_keeps_the_page_usable(live_server, browser, staff, three_tenants):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = Watched(context.new_page())
    log_in(page.page, live_server)
    wait_for_chart(page.page, "trend")
    body_width = page.page.evaluate("() => document.documentElement.scrollWidth")
    assert body_width <= 390 + 1  # wide tables scroll inside their box, not the page
    assert painted_pixels(page.page, "#trend-chart") > 500
    context.close()
    assert page.problems == []


def test_every_page_runs_under_the_content_security_policy(
    live_server, watched, staff, three_tenants
):
    """Console errors (a CSP violation is one) fail the test through `watched`."""
    page = watched.page
    log_in(page, live_server)
    response = page.goto(f"{live_server.url}/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"
    tenant = three_tenants[0]
    for path in [
        "/?range=90d",
        "/?range=all",
        f"/tenants/{tenant.slug}/?range=1y",
        "/admin/",
        "/admin/tenants/tenant/",
        f"/admin/tenants/tenant/{tenant.pk}/change/",
        "/admin/tenants/tenant/add/",
        "/admin/tenants/fetchhealth/",
        "/admin/scoreboard/fetchattempt/",
        "/admin/scoreboard/reading/",
    ]:
        answer = page.goto(f"{live_server.url}{path}")
        assert answer.status == 200, path
        page.wait_for_load_state("networkidle")
    assert watched.problems == []
