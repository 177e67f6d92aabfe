"""Management commands as a user runs them."""

import io
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from scoreboard import simulator
from scoreboard.models import FetchAttempt, Reading
from tenants.models import Tenant
from tests.conftest import PLANTED_SECRET


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_fetch_scores_fetches_due_tenants_and_prints_a_line_each(sim, make_tenant):
    due = make_tenant(slug="due-co")
    make_tenant(slug="later-co", next_fetch_at=timezone.now() + timedelta(hours=1))
    output = run("fetch_scores")
    assert output.splitlines()[0].startswith("due-co  ok      ")
    assert "later-co" not in output
    reading = Reading.objects.get(tenant=due)
    assert f"{reading.value:g}" in output
    assert reading.attempt.trigger == FetchAttempt.Trigger.COMMAND


def test_fetch_scores_all_and_one(sim, make_tenant):
    make_tenant(slug="a-co", next_fetch_at=timezone.now() + timedelta(hours=1))
    make_tenant(slug="b-co", next_fetch_at=timezone.now() + timedelta(hours=1))
    assert len(run("fetch_scores", "--all").splitlines()) == 2
    assert run("fetch_scores", "--tenant", "b-co").startswith("b-co  ok")
    assert Reading.objects.count() == 3


def test_fetch_scores_reports_failures_and_exits_non_zero(sim, make_tenant):
    make_tenant(slug="bad-co", client_secret=PLANTED_SECRET)
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 of 1 fetch"):
        call_command("fetch_scores", "--all", stdout=out)
    assert "bad-co  FAILED  auth: " in out.getvalue()
    assert "the client secret is invalid" in out.getvalue()
    assert PLANTED_SECRET not in out.getvalue()


def test_fetch_scores_unknown_slug_lists_the_known_ones(make_tenant):
    make_tenant(slug="known-co")
    with pytest.raises(CommandError, match=r"No tenant with slug 'nope'\. Known slugs: known-co"):
        run("fetch_scores", "--tenant", "nope")


def test_fetch_scores_with_nothing_due_says_so(db):
    assert "No tenant is due" in run("fetch_scores")


def test_seed_demo_adds_three_tenants_with_history_once(db, sim):
    first = run("seed_demo", "--days", "10")
    assert first.count("added; 240 historic readings added") == 3
    assert Tenant.objects.count() == 3
    assert Reading.objects.count() == 3 * 240
    contoso = Tenant.objects.get(slug="contoso")
    oldest = Reading.objects.filter(tenant=contoso).order_by("measured_at").first()
    assert oldest.value == simulator.score_at(str(contoso.tenant_id), oldest.measured_at)
    again = run("seed_demo", "--days", "10")
    assert again.count("exists; 0 historic readings added") == 3
    assert Reading.objects.count() == 3 * 240


def test_seed_demo_needs_the_simulator(db, settings):
    settings.SCOREBOARD_SIMULATOR_URL = ""
    with pytest.raises(CommandError, match="SCOREBOARD_SIMULATOR_URL is not set"):
        run("seed_demo")


def test_ensure_admin_creates_one_admin_and_prints_the_password_once(db, monkeypatch):
    monkeypatch.delenv("SCOREBOARD_ADMIN_PASSWORD", raising=False)
    output = run("ensure_admin")
    password = output.split("password: ")[1].split()[0]
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser
    assert user.check_password(password)
    second = run("ensure_admin")
    assert password not in second
    assert "exists already" in second


def test_ensure_admin_takes_the_password_from_the_environment(db, monkeypatch):
    monkeypatch.setenv("SCOREBOARD_ADMIN_PASSWORD", "a-long-chosen-password")
    output = run("ensure_admin")
    assert "a-long-chosen-password" not in output
    assert get_user_model().objects.get(username="admin").check_password("a-long-chosen-password")
