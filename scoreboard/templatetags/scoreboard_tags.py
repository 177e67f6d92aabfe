from collections.abc import Iterable
from datetime import UTC, datetime
from html import escape

from django import template
from django.conf import settings
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


def _delta_html(change: float | None) -> str:
    """A change in score as an arrow and a number: red for a drop."""
    if change is None:
        return '<span class="delta flat muted" title="no reading then">&ndash;</span>'
    if abs(change) < 0.005:
        return '<span class="delta flat">▶ 0</span>'
    if change < 0:
        return f'<span class="delta down">▼ {-change:,.2f}</span>'
    return f'<span class="delta up">▲ {change:,.2f}</span>'


@register.filter
def score(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def _sort_value(value: float | None) -> str:
    return "" if value is None else repr(value)


@register.simple_tag
def overview_rows(rows: list, *, picked: set[str], pick_column: bool) -> SafeString:
    """The overview table's body: one row per tenant.

    Written in Python rather than as a template loop: a thousand tenants made
    the loop the slowest part of the page (about 1 ms a row). Every value that
    comes from the database is escaped (the standard library's escape, quotes
    included: Django's own is lazy-aware and several times slower).
    """
    link = reverse("tenant_detail", args=["-"])[:-2]  # the URL before the slug
    html = []
    for row in rows:
        tenant = row.tenant
        name, slug = escape(tenant.name), escape(tenant.slug)
        key = name.lower()  # entities are lower case already
        cells = [f'<tr data-name="{key}">']
        if pick_column:
            checked = " checked" if tenant.slug in picked else ""
            cells.append(
                f'<td class="no-print"><input type="checkbox" name="pick" value="{slug}" '
                f'aria-label="Draw {name}"{checked}></td>'
            )
        cells.append(f'<td data-sort-value="{key}"><a href="{link}{slug}/">{name}</a></td>')
        cells.append(
            f'<td class="num" data-sort-value="{_sort_value(row.latest)}">{score(row.latest)}</td>'
        )
        for change in (row.change_7d, row.change_30d):
            cells.append(
                f'<td class="num" data-sort-value="{_sort_value(change)}">'
                f"{_delta_html(change)}</td>"
            )
        cells.append(
            f'<td><canvas class="sparkline" data-slug="{slug}" width="120" height="32" '
            f'role="img" aria-label="30-day trend of {name}"></canvas></td>'
        )
        fetched = tenant.last_success_at
        if fetched:
            stamp = fetched.astimezone(UTC).isoformat()
            cells.append(f'<td data-sort-value="{stamp}">{_utc_time(fetched)}</td>')
        else:
            cells.append('<td data-sort-value=""><span class="muted">never</span></td>')
        health = row.health
        status = escape(health.status)
        if health.detail:
            detail = escape(health.detail)
            cells.append(
                f'<td data-sort-value="{status}"><span class="badge {status}" title="{detail}">'
                f'{escape(health.label)}</span><div class="muted small">{detail}</div></td>'
            )
        else:
            cells.append(
                f'<td data-sort-value="{status}"><span class="badge {status}">'
                f"{escape(health.label)}</span></td>"
            )
        cells.append("</tr>")
        html.append("".join(cells))
    return mark_safe("\n".join(html))  # noqa: S308 - every database value is escaped above


def _utc_time(moment: datetime) -> str:
    """A time element the page's script shows in the browser's zone; UTC without it."""
    # astimezone, not Django's localtime: the text says UTC whatever zone is active,
    # and localtime's lookup of the active zone cost 30 us a call (6 a row).
    moment = moment.astimezone(UTC)
    return (
        f'<time class="local-time" datetime="{moment.isoformat()}">'
        f"{moment:%Y-%m-%d %H:%M} UTC</time>"
    )


@register.simple_tag
def reading_rows(readings: Iterable) -> SafeString:
    """The tenant page's readings table body (numbers and times only: nothing to escape)."""
    return mark_safe(  # noqa: S308 - floats and times
        "\n".join(
            f"<tr><td>{_utc_time(reading.measured_at)}</td>"
            f'<td class="num">{score(reading.value)}</td>'
            f"<td>{_utc_time(reading.fetched_at)}</td></tr>"
            for reading in readings
        )
    )


# What json_script escapes, so the text cannot end the script element.
_JSON_SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


@register.simple_tag
def json_text_script(text: str, element_id: str) -> SafeString:
    """Like the json_script filter, for JSON that is already text (written by the database)."""
    return format_html(
        '<script id="{}" type="application/json">{}</script>',
        element_id,
        mark_safe(text.translate(_JSON_SCRIPT_ESCAPES)),  # noqa: S308 - escaped for a script
    )


@register.simple_tag
def simulator_notice() -> str:
    """A warning for admin pages while the simulator cloud is switched on."""
    url = settings.SCOREBOARD_SIMULATOR_URL
    if not url:
        return ""
    return (
        f"The simulator cloud is on (SCOREBOARD_SIMULATOR_URL={url}): tenants on it read "
        "made-up scores. Unset it in production."
    )
