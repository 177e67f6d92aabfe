"""Every URL in the URLconf, as anonymous, outsider, viewer of tenant A, and staff."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.conftest import add_readings

# name -> (path, {who: expected status}); anonymous users are sent to log in (302).
MATRIX = {
    "overview": ("/", {"anonymous": 302, "outsider": 200, "viewer": 200, "staff": 200}),
    "tenant_detail": (
        "/tenants/alpha/",
        {"anonymous": 302, "outsider": 404, "viewer": 200, "staff": 200},
    ),
    "tenant_detail_other": (
        "/tenants/beta/",
        {"anonymous": 302, "outsider": 404, "viewer": 404, "staff": 200},
    ),
    "export_csv": (
        "/export.csv?tenant=alpha",
        {"anonymous": 302, "outsider": 400, "viewer": 200, "staff": 200},
    ),
    "export_csv_other": (
        "/export.csv?tenant=beta",
        {"anonymous": 302, "outsider": 400, "viewer": 400, "staff": 200},
    ),
    "login": ("/accounts/login/", {"anonymous": 200, "outsider": 200, "viewer": 200, "staff": 200}),
    "logout": (
        "/accounts/logout/",
        {"anonymous": 405, "outsider": 405, "viewer": 405, "staff": 405},
    ),
    "admin": ("/admin/", {"anonymous": 302, "outsider": 302, "viewer": 302, "staff": 200}),
}
PUBLIC = {"healthz"}  # answers everyone, with nothing about tenants


def named_urls() -> set[str]:
    names = set()
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLPattern):
            names.add(entry.name)
        elif isinstance(entry, URLResolver) and entry.namespace == "admin":
            names.add("admin")
    return names


def test_the_matrix_covers_every_url():
    covered = {name.removesuffix("_other") for name in MATRIX} | PUBLIC
    assert named_urls() == covered


@pytest.fixture
def users(db, viewer, outsider, staff_user):
    return {"anonymous": None, "outsider": outsider, "viewer": viewer, "staff": staff_user}


@pytest.mark.parametrize("who", ["anonymous", "outsider", "viewer", "staff"])
def test_each_kind_of_user_gets_the_expected_answer_everywhere(client, users, two_tenants, who):
    for tenant in two_tenants:
        add_readings(tenant, hours=3)
    if users[who] is not None:
        client.force_login(users[who])
    for name, (path, expected) in MATRIX.items():
        response = client.get(path)
        assert response.status_code == expected[who], f"{who} GET {name} ({path})"
        if response.status_code == 302 and name != "admin":
            assert response["Location"].startswith(reverse("login"))
        body = b"" if response.streaming else response.content
        if who != "staff":
            assert b"Beta Corp" not in body, f"{who} saw tenant B on {name}"
        if who in ("anonymous", "outsider"):
            assert b"Alpha Corp" not in body, f"{who} saw tenant A on {name}"
    health = client.get(reverse("healthz"))
    assert b"Alpha" not in health.content
    assert b"Beta" not in health.content


def test_logout_is_a_post_that_ends_the_session(client, viewer):
    client.force_login(viewer)
    response = client.post(reverse("logout"))
    assert response.status_code == 302
    assert client.get(reverse("overview")).status_code == 302


def test_forms_need_a_csrf_token(viewer):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(viewer)
    assert strict.post(reverse("logout")).status_code == 403


def test_admin_can_live_at_another_path(settings, staff_client):
    import importlib

    from django.urls import clear_url_caches

    import scoreboard.urls

    settings.SCOREBOARD_ADMIN_PATH = "backstage/"
    try:
        importlib.reload(scoreboard.urls)
        clear_url_caches()
        assert reverse("admin:index") == "/backstage/"
        assert staff_client.get("/backstage/").status_code == 200
        assert staff_client.get("/admin/").status_code == 404
    finally:
        settings.SCOREBOARD_ADMIN_PATH = "admin/"
        importlib.reload(scoreboard.urls)
        clear_url_caches()
    assert reverse("admin:index") == "/admin/"


def test_sessions_expire(settings, viewer, client):
    client.force_login(viewer)
    assert client.get("/").status_code == 200
    assert settings.SESSION_COOKIE_AGE == 12 * 3600
    assert client.session.get_expiry_age() <= 12 * 3600
