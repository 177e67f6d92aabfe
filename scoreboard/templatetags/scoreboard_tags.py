from django import template
from django.conf import settings
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


@register.simple_tag
def delta(change: float | None) -> SafeString | str:
    """A change in score as an arrow and a number: red for a drop."""
    if change is None:
        return format_html(
            '<span class="delta flat muted" title="{}">&ndash;</span>', "no reading then"
        )
    if abs(change) < 0.005:
        return format_html('<span class="delta flat">{} 0</span>', "▶")
    if change < 0:
        return format_html('<span class="delta down">▼ {}</span>', f"{-change:,.2f}")
    return format_html('<span class="delta up">▲ {}</span>', f"{change:,.2f}")


@register.filter
def score(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


@register.filter
def sort_value(value: float | None) -> str:
    return "" if value is None else repr(value)


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
