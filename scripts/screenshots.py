"""Take the README's screenshots from a running Scoreboard (e.g. `make demo`).

    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:8000 \
        --username admin --password '...' --tenant contoso

Writes docs/overview.png and docs/tenant.png at 1280x800.
"""

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent.parent / "docs"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", required=True)
    parser.add_argument("--tenant", default="contoso", help="slug of the tenant page to show")
    parser.add_argument("--range", default="90d", help="range of the tenant page")
    options = parser.parse_args()
    DOCS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(
            viewport={"width": 1280, "height": 800}, timezone_id="Europe/Berlin"
        )
        page.goto(f"{options.url}/accounts/login/")
        page.fill("#id_username", options.username)
        page.fill("#id_password", options.password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{options.url}/")
        page.wait_for_function("() => window.scoreboard && window.scoreboard.charts.trend")
        page.screenshot(path=DOCS / "overview.png")
        page.goto(f"{options.url}/tenants/{options.tenant}/?range={options.range}")
        page.wait_for_function("() => window.scoreboard && window.scoreboard.charts.tenant")
        page.screenshot(path=DOCS / "tenant.png")
        browser.close()
    print(f"Wrote {DOCS / 'overview.png'} and {DOCS / 'tenant.png'}")


if __name__ == "__main__":
    main()
