from django.contrib import admin
from django.http import HttpRequest

from scoreboard.models import FetchAttempt, Reading


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is written by the fetcher only; admin shows it."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(FetchAttempt)
class FetchAttemptAdmin(ReadOnlyAdmin):
    list_display = [
        "tenant",
        "scheduled_for",
        "trigger",
        "status",
        "error_kind",
        "tries",
        "duration_ms",
        "http_status",
        "correlation_id",
    ]
    list_filter = ["status", "error_kind", "trigger"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__name", "correlation_id", "error"]
    date_hierarchy = "scheduled_for"


@admin.register(Reading)
class ReadingAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "metric", "value", "measured_at", "fetched_at"]
    list_filter = ["metric"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__name"]
    date_hierarchy = "measured_at"
    raw_id_fields = ["attempt"]
