"""Logging in: the throttle on failed attempts, per account and per address."""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from scoreboard import login
from scoreboard.models import LoginFailure

LOGIN = reverse("login")
ADMIN_LOGIN = reverse("admin:login")


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", password="right-Pass-2026")


def attempt(client, password: str, *, url: str = LOGIN, address: str = "203.0.113.7"):
    return client.post(url, {"username": "alice", "password": password}, REMOTE_ADDR=address)


def test_a_wrong_password_says_so(client, alice):
    response = attempt(client, "nope")
    assert response.status_code == 200
    assert "Please enter a correct username and password" in response.content.decode()


def test_an_account_is_locked_after_five_failures_even_with_the_right_password(client, alice):
    for _ in range(login.MAX_PER_ACCOUNT):
        attempt(client, "nope")
    response = attempt(client, "right-Pass-2026", address="198.51.100.1")
    assert response.status_code == 200
    assert "Too many failed logins for this account" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_admin_login_is_throttled_too(client, alice):
    for _ in range(login.MAX_PER_ACCOUNT):
        attempt(client, "nope", url=ADMIN_LOGIN)
    response = attempt(client, "right-Pass-2026", url=ADMIN_LOGIN)
    assert "Too many failed logins for this account" in response.content.decode()


def test_an_address_is_locked_after_twenty_failures_across_accounts(client, alice):
    for n in range(login.MAX_PER_ADDRESS):
        client.post(LOGIN, {"username": f"guess{n}", "password": "x"}, REMOTE_ADDR="192.0.2.9")
    response = attempt(client, "right-Pass-2026", address="192.0.2.9")
    assert "Too many failed logins from your address" in response.content.decode()
    assert attempt(client, "right-Pass-2026", address="192.0.2.10").status_code == 302


def test_a_success_clears_the_account_failures(client, alice):
    for _ in range(login.MAX_PER_ACCOUNT - 1):
        attempt(client, "nope")
    assert attempt(client, "right-Pass-2026").status_code == 302
    assert not LoginFailure.objects.filter(username="alice").exists()


def test_failures_older_than_the_window_do_not_count(client, alice):
    from django.utils import timezone

    old = timezone.now() - login.WINDOW - login.WINDOW
    LoginFailure.objects.bulk_create(
        LoginFailure(username="alice", address="203.0.113.7", at=old) for _ in range(10)
    )
    assert attempt(client, "right-Pass-2026").status_code == 302
