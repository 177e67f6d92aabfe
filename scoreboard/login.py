"""Login with a throttle on failures, per account and per address.

Counts live in the database, so every web process sees the same numbers. The
same form serves the dashboard's login page and admin's.
"""

from datetime import timedelta

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from scoreboard.models import LoginFailure

WINDOW = timedelta(minutes=15)
MAX_PER_ACCOUNT = 5
MAX_PER_ADDRESS = 20
KEEP = timedelta(days=1)


def client_address(request: HttpRequest | None) -> str | None:
    # REMOTE_ADDR is the proxy behind a reverse proxy: then the per-address limit
    # applies to all users together, and the per-account limit still holds.
    return request.META.get("REMOTE_ADDR") if request is not None else None


def locked_out(*, username: str, address: str | None) -> str:
    """Why this login may not be tried now, or ''."""
    since = timezone.now() - WINDOW
    recent = LoginFailure.objects.filter(at__gte=since)
    minutes = int(WINDOW.total_seconds() // 60)
    if recent.filter(username=username.lower()).count() >= MAX_PER_ACCOUNT:
        return (
            f"Too many failed logins for this account. It is locked for {minutes} minutes; "
            "try again later or ask an administrator to reset the password."
        )
    if address and recent.filter(address=address).count() >= MAX_PER_ADDRESS:
        return f"Too many failed logins from your address. Try again in {minutes} minutes."
    return ""


def record_failure(*, username: str, address: str | None) -> None:
    now = timezone.now()
    LoginFailure.objects.create(username=username.lower()[:150], address=address, at=now)
    LoginFailure.objects.filter(at__lt=now - KEEP).delete()


def forget_failures(*, username: str) -> None:
    LoginFailure.objects.filter(Q(username=username.lower())).delete()


class ThrottledAuthenticationForm(AuthenticationForm):
    def clean(self):
        username = self.cleaned_data.get("username") or ""
        address = client_address(self.request)
        refusal = locked_out(username=username, address=address)
        if refusal:
            # Checked before the password, so a locked account reveals nothing more.
            raise forms.ValidationError(refusal, code="throttled")
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            if username:
                record_failure(username=username, address=address)
            raise
        forget_failures(username=username)
        return cleaned
