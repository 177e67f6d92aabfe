"""defender.py against the simulator over real HTTPS, with msal signing in for real."""

import logging
from datetime import UTC, datetime, timedelta

import pytest

from scoreboard import defender
from scoreboard.defender import Credential, DefenderError, ErrorKind
from tests.conftest import PLANTED_SECRET


def read(tenant) -> defender.Score:
    return defender.read_secure_score(Credential.from_tenant(tenant))


def failure(tenant) -> DefenderError:
    with pytest.raises(DefenderError) as caught:
        read(tenant)
    return caught.value


def test_reads_the_score_and_its_time(sim, make_tenant):
    tenant = make_tenant()
    score = read(tenant)
    assert 0 <= score.value <= 1000
    assert abs(score.measured_at - datetime.now(UTC)) < timedelta(seconds=30)
    stats = sim.stats()[str(tenant.tenant_id)]
    assert stats["score"] == 1


def test_second_read_reuses_the_token(sim, make_tenant):
    tenant = make_tenant()
    read(tenant)
    read(tenant)
    stats = sim.stats()[str(tenant.tenant_id)]
    assert stats["token"] == 1
    assert stats["score"] == 2


def test_new_secret_builds_a_new_sign_in(sim, make_tenant):
    tenant = make_tenant(client_secret="wrong-one")
    assert failure(tenant).kind == ErrorKind.AUTH
    tenant.client_secret = defender_default_secret()
    tenant.save()
    tenant.refresh_from_db()
    assert read(tenant).value >= 0


def defender_default_secret() -> str:
    from scoreboard.simulator import DEFAULT_CLIENT_SECRET

    return DEFAULT_CLIENT_SECRET


@pytest.mark.parametrize(
    ("fault", "kind", "words"),
    [
        ("invalid_secret", ErrorKind.AUTH, "client secret is invalid"),
        ("expired_secret", ErrorKind.AUTH, "client secret has expired"),
        ("app_not_found", ErrorKind.CONFIG, "was not found in tenant"),
        ("unknown_tenant", ErrorKind.CONFIG, "was not found by the"),
        ("forbidden", ErrorKind.PERMISSION, "Score.Read.All"),
        ("disabled_feature", ErrorKind.CONFIG, "not enabled"),
        ("throttle", ErrorKind.THROTTLED, "throttling"),
        ("error_500", ErrorKind.TRANSIENT, "HTTP 500"),
        ("error_502", ErrorKind.TRANSIENT, "HTTP 502"),
        ("error_503", ErrorKind.TRANSIENT, "HTTP 503"),
        ("error_504", ErrorKind.TRANSIENT, "HTTP 504"),
        ("reset", ErrorKind.TRANSIENT, "could not be reached"),
        ("malformed_json", ErrorKind.BAD_RESPONSE, "not with JSON"),
        ("html", ErrorKind.BAD_RESPONSE, "not with JSON"),
        ("missing_score", ErrorKind.BAD_RESPONSE, "without a score"),
        ("missing_time", ErrorKind.BAD_RESPONSE, "without a time"),
        ("null_score", ErrorKind.BAD_RESPONSE, "without a score"),
        ("string_score", ErrorKind.BAD_RESPONSE, "not a number"),
        ("nan_score", ErrorKind.BAD_RESPONSE, "not with JSON"),
        ("infinite_score", ErrorKind.BAD_RESPONSE, "not with JSON"),
        ("negative_score", ErrorKind.BAD_RESPONSE, "impossible score"),
        ("future_time", ErrorKind.BAD_RESPONSE, "in the future"),
    ],
)
def test_each_fault_is_classified_with_a_message_that_names_tenant_and_cause(
    sim, make_tenant, fault, kind, words
):
    tenant = make_tenant(name="Woodgrove Bank")
    sim.set_fault(str(tenant.tenant_id), fault)
    error = failure(tenant)
    assert error.kind == kind
    assert words in str(error)
    assert str(error).startswith("Woodgrove Bank: ")
    assert defender_default_secret() not in str(error)


def test_sign_in_errors_say_how_to_fix_them(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "expired_secret")
    error = failure(tenant)
    assert "AADSTS7000222" in str(error)
    assert "Certificates & secrets" in str(error)
    assert error.correlation_id


def test_api_errors_keep_the_correlation_id(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "forbidden")
    error = failure(tenant)
    assert error.http_status == 403
    assert len(error.correlation_id) == 36
    assert error.correlation_id in str(error)


def test_throttle_carries_retry_after(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "throttle", retry_after=7)
    error = failure(tenant)
    assert error.retry_after == 7
    assert error.retryable


def test_401_fetches_a_new_token_once(sim, make_tenant):
    tenant = make_tenant()
    read(tenant)  # a token is now cached
    sim.reset_stats()
    sim.set_fault(str(tenant.tenant_id), "unauthorized", count=1)
    assert read(tenant).value >= 0
    stats = sim.stats()[str(tenant.tenant_id)]
    assert stats["token"] == 1  # the cached token was dropped and one new one issued
    assert stats["score"] == 2


def test_401_twice_is_an_auth_error(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "unauthorized")
    error = failure(tenant)
    assert error.kind == ErrorKind.AUTH
    assert sim.stats()[str(tenant.tenant_id)]["score"] == 2


def test_bad_response_keeps_the_start_of_the_answer(sim, make_tenant):
    tenant = make_tenant()
    sim.set_fault(str(tenant.tenant_id), "html")
    error = failure(tenant)
    assert "It began: '<" in str(error)
    assert "nothing was stored" in str(error)


def test_slow_answer_past_the_read_timeout_is_transient(sim, make_tenant, settings):
    settings.SCOREBOARD_HTTP_READ_TIMEOUT = 0.5
    tenant = make_tenant()
    read(tenant)  # sign in first: the fault delays the API only
    sim.set_fault(str(tenant.tenant_id), "slow", delay=2)
    error = failure(tenant)
    assert error.kind == ErrorKind.TRANSIENT
    assert "did not answer in time" in str(error)


def test_trickling_answer_is_cut_at_the_deadline(sim, make_tenant, settings):
    settings.SCOREBOARD_HTTP_CONNECT_TIMEOUT = 0.5
    settings.SCOREBOARD_HTTP_READ_TIMEOUT = 0.5
    tenant = make_tenant()
    read(tenant)
    sim.set_fault(str(tenant.tenant_id), "trickle", delay=0.2)
    started = datetime.now(UTC)
    error = failure(tenant)
    assert error.kind == ErrorKind.TRANSIENT
    assert datetime.now(UTC) - started < timedelta(seconds=3)


def test_unreachable_host_is_transient(make_tenant, settings, sim):
    settings.SCOREBOARD_SIMULATOR_URL = "https://127.0.0.1:9"  # nothing listens on port 9
    tenant = make_tenant()
    error = failure(tenant)
    assert error.kind == ErrorKind.TRANSIENT


def test_untrusted_certificate_is_a_config_error_naming_the_setting(make_tenant, settings, sim):
    settings.SCOREBOARD_CA_BUNDLE = ""
    defender.reset()
    error = failure(make_tenant())
    assert error.kind == ErrorKind.CONFIG
    assert "SCOREBOARD_CA_BUNDLE" in str(error)


def test_missing_ca_bundle_file_is_a_config_error(make_tenant, settings, sim, tmp_path):
    settings.SCOREBOARD_CA_BUNDLE = str(tmp_path / "nope.pem")
    defender.reset()
    error = failure(make_tenant())
    assert error.kind == ErrorKind.CONFIG
    assert "nope.pem does not exist" in str(error)


def test_simulator_cloud_switched_off_is_a_config_error(make_tenant, settings, sim):
    tenant = make_tenant()
    settings.SCOREBOARD_SIMULATOR_URL = ""
    error = failure(tenant)
    assert error.kind == ErrorKind.CONFIG
    assert "SCOREBOARD_SIMULATOR_URL" in str(error)


def test_secret_never_reaches_messages_or_logs_even_at_debug_level(sim, make_tenant, caplog):
    for logger in ("", "msal", "urllib3", "requests", "scoreboard"):
        caplog.set_level(logging.DEBUG, logger=logger)
    tenant = make_tenant(client_secret=PLANTED_SECRET)
    error = failure(tenant)
    assert error.kind == ErrorKind.AUTH
    assert PLANTED_SECRET not in str(error)
    good = make_tenant()
    read(good)
    read(good)
    assert "urllib3" in caplog.text or "msal" in caplog.text  # debug logging was on
    assert PLANTED_SECRET not in caplog.text
    assert defender_default_secret() not in caplog.text
    assert "eyJ" not in caplog.text  # no access token (the simulator issues JWTs)


def test_a_discovery_document_naming_another_host_gets_no_secret(
    sim, make_tenant, monkeypatch, tmp_path
):
    from scoreboard import simulator

    with simulator.Simulator(cert_dir=tmp_path).start() as elsewhere:
        real = simulator.discovery_document

        def rogue(base_url: str, tenant: str) -> dict:
            document = real(base_url, tenant)
            document["token_endpoint"] = f"{elsewhere.url}/{tenant}/oauth2/v2.0/token"
            return document

        monkeypatch.setattr(simulator, "discovery_document", rogue)
        tenant = make_tenant(client_secret=PLANTED_SECRET)
        error = failure(tenant)
        assert error.kind == ErrorKind.CONFIG
        assert "was not sent" in str(error)
        assert elsewhere.stats() == {}  # not one request reached the other host


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/api/configurationScore",
        "http://127.0.0.1/api/configurationScore",
        "https://login.microsoftonline.com.evil.example/x",
    ],
)
def test_each_cloud_session_only_speaks_https_to_its_own_hosts(url):
    from tenants.clouds import get_cloud

    session = defender._http(get_cloud("commercial"))
    with pytest.raises(defender.OutboundBlocked):
        session.get(url)
    # The score call takes a shorter way through the session: the same hosts only.
    with pytest.raises(defender.OutboundBlocked):
        session.stream_get(url, headers={}, timeout=(1, 1))


def test_commercial_cloud_allows_its_sign_in_and_api_hosts_only():
    from tenants.clouds import get_cloud

    session = defender._http(get_cloud("commercial"))
    assert "login.microsoftonline.com" in session.allowed_hosts
    assert "api.security.microsoft.com" in session.allowed_hosts
    assert "eu.api.security.microsoft.com" in session.allowed_hosts
    assert "login.microsoftonline.us" not in session.allowed_hosts
    assert session.max_redirects == 0
