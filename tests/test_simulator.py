"""The Defender simulator, over real HTTPS: score series, certificate, sign-in, API and faults.

Plain pytest: no database and no Django settings (the management command runs in a child
process with the test settings).
"""

import contextlib
import itertools
import json
import math
import os
import queue
import re
import signal
import socket
import ssl
import stat
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scoreboard import simulator
from scoreboard.simulator import (
    DEFAULT_CLIENT_SECRET,
    FAULT_KINDS,
    SCORE_EPOCH,
    FaultKind,
    Simulator,
    ensure_certificate,
    score_at,
)

REPO = Path(__file__).resolve().parent.parent
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ODATA_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z")


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("simulator-certs"))


@pytest.fixture
def server(cert_dir: Path) -> Iterator[Simulator]:
    with Simulator(cert_dir=cert_dir).start() as sim:
        yield sim


@pytest.fixture
def http(server: Simulator) -> Iterator[requests.Session]:
    yield _session(server)


@pytest.fixture
def tenant() -> str:
    return str(uuid.uuid4())


def _session(sim: Simulator) -> requests.Session:
    # trust_env off: REQUESTS_CA_BUNDLE on this machine would override `verify`.
    session = requests.Session()
    session.trust_env = False
    session.verify = str(sim.cert_path)
    return session


def _token_response(
    sim: Simulator, http: requests.Session, tenant: str, **form: str
) -> requests.Response:
    data = {
        "client_id": "11111111-2222-3333-4444-555555555555",
        "grant_type": "client_credentials",
        "client_secret": DEFAULT_CLIENT_SECRET,
        "scope": f"{sim.url}/.default",
        **form,
    }
    return http.post(f"{sim.url}/{tenant}/oauth2/v2.0/token", data=data, timeout=5)


def _token(sim: Simulator, http: requests.Session, tenant: str) -> str:
    answer = _token_response(sim, http, tenant)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def _score(
    sim: Simulator, http: requests.Session, token: str, timeout: float = 5
) -> requests.Response:
    return http.get(
        f"{sim.url}/api/configurationScore",
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
    )


def _msal_app(
    sim: Simulator, http: requests.Session, tenant: str, secret: str = DEFAULT_CLIENT_SECRET
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        "11111111-2222-3333-4444-555555555555",
        client_credential=secret,
        authority=f"{sim.url}/{tenant}",
        instance_discovery=False,
        http_client=http,
        timeout=5,
    )


def _assert_defender_error(answer: requests.Response, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert UUID_RE.fullmatch(error["target"])
    return error


def _assert_entra_error(answer: requests.Response, status: int, error: str, code: int) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    for part in ("Trace ID: ", "Correlation ID: ", "Timestamp: "):
        assert part in body["error_description"]
    assert UUID_RE.fullmatch(body["trace_id"])
    assert UUID_RE.fullmatch(body["correlation_id"])
    assert body["timestamp"]
    return body


def _parse_odata_time(value: str) -> datetime:
    # 7 fractional digits: drop the last one for fromisoformat's microseconds.
    assert ODATA_TIME_RE.fullmatch(value), value
    return datetime.fromisoformat(value[:26] + "+00:00")


# --- score series ----------------------------------------------------------------------------


def test_score_is_deterministic_within_and_across_processes() -> None:
    tenant, when = "7c4e3a5e-16a4-4f3c-9d0e-2b1f3a4c5d6e", datetime(2025, 3, 14, 15, 9, tzinfo=UTC)
    value = score_at(tenant, when)
    assert value == score_at(tenant, when)
    code = (
        "from datetime import UTC, datetime; from scoreboard.simulator import score_at; "
        f"print(repr(score_at({tenant!r}, datetime(2025, 3, 14, 15, 9, tzinfo=UTC))))"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert float(child.stdout) == value
    assert value == round(value, 2)


def test_score_normalises_its_inputs() -> None:
    tenant = "AbCdEf00-0000-4000-8000-000000000000"
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert score_at(tenant, when) == score_at(tenant.lower(), when)
    assert score_at(tenant, when.replace(tzinfo=None)) == score_at(tenant, when)
    # Before the epoch: the epoch's value, not an error.
    assert score_at(tenant, datetime(2019, 5, 1, tzinfo=UTC)) == score_at(tenant, SCORE_EPOCH)
    assert score_at("one", when) != score_at("two", when)


def test_score_series_is_a_plausible_walk_with_recovering_drops() -> None:
    tenants = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(20)]
    changes, drops, recoveries = [], 0, []
    for tenant in tenants:
        daily = [score_at(tenant, SCORE_EPOCH + timedelta(days=d)) for d in range(760)]
        assert 348 <= daily[0] <= 852  # each tenant's own base level, +-2 hourly noise
        assert all(0 <= value <= 1000 for value in daily)
        assert max(abs(value - daily[0]) for value in daily) < 400  # never wanders off
        for day in range(1, 730):
            change = daily[day] - daily[day - 1]
            changes.append(abs(change))
            if change <= -40:
                drops += 1
                recoveries.append((daily[day + 21] - daily[day]) / -change)
    days = len(changes)
    assert days / 80 < drops < days / 20  # about one day in 40
    assert statistics.median(changes) < 6
    assert statistics.median(recoveries) > 0.8  # mostly recovered three weeks later
    bases = [score_at(tenant, SCORE_EPOCH) for tenant in tenants]
    assert max(bases) - min(bases) > 200  # tenants differ


def test_score_is_smooth_within_a_day() -> None:
    tenant, start = "smooth", datetime(2025, 8, 1, tzinfo=UTC)
    minutes = [score_at(tenant, start + timedelta(minutes=m)) for m in range(3 * 24 * 60)]
    assert max(abs(b - a) for a, b in itertools.pairwise(minutes)) < 1.0


def test_score_series_is_cheap() -> None:
    start = datetime.now(UTC) - timedelta(days=180)
    tenants = [str(uuid.uuid4()) for _ in range(3)]  # fresh: no cached walk
    began = time.perf_counter()
    values = [score_at(t, start + timedelta(hours=h)) for t in tenants for h in range(180 * 24)]
    elapsed = time.perf_counter() - began
    print(f"180 days x 24 hours x 3 tenants: {elapsed:.3f} s")
    assert len(values) == 12_960
    assert elapsed < 1.0
    began = time.perf_counter()
    score_at("far-future", datetime(2040, 1, 1, tzinfo=UTC))  # 16 years of walk, iteratively
    assert time.perf_counter() - began < 1.0


# --- certificate -----------------------------------------------------------------------------


def test_certificate_is_a_ca_for_loopback_names(tmp_path: Path) -> None:
    cert_path, key_path = ensure_certificate(tmp_path / "new" / "dir")
    assert cert_path.name == "simulator-cert.pem"
    assert key_path.name == "simulator-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=360) < lifetime < timedelta(days=366)


def test_certificate_is_reused_while_valid(tmp_path: Path) -> None:
    cert_path, key_path = ensure_certificate(tmp_path)
    before = (cert_path.read_bytes(), key_path.read_bytes())
    assert ensure_certificate(tmp_path) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_certificate_is_replaced_when_about_to_expire(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=364))
        .not_valid_after(now + timedelta(hours=12))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "simulator-cert.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "simulator-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path, _ = ensure_certificate(tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.not_valid_after_utc - now > timedelta(days=300)


def test_certificate_verifies_with_strict_openssl_and_requests(server: Simulator) -> None:
    context = ssl.create_default_context(cafile=str(server.cert_path))
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13 on
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    answer = _session(server).get(f"{server.url}/_simulator/health", timeout=5)
    assert answer.json() == {"ok": True}
    # "localhost" is in the certificate too, and answers name the host the client used.
    local = _session(server).get(
        f"https://localhost:{server.port}/tenant-x/v2.0/.well-known/openid-configuration",
        timeout=5,
    )
    assert local.json()["token_endpoint"].startswith(f"https://localhost:{server.port}/")


def test_certificate_is_not_trusted_without_the_ca_file(server: Simulator) -> None:
    session = requests.Session()
    session.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        session.get(f"{server.url}/_simulator/health", timeout=5)


# --- sign-in ---------------------------------------------------------------------------------


def test_discovery_document_points_at_https_token_endpoint(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    answer = http.get(f"{server.url}/{tenant}/v2.0/.well-known/openid-configuration", timeout=5)
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["token_endpoint"] == f"{server.url}/{tenant}/oauth2/v2.0/token"
    for key in (
        "issuer",
        "authorization_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
        "token_endpoint_auth_methods_supported",
    ):
        assert doc[key]
    assert all(doc[k].startswith("https://") for k in ("issuer", "token_endpoint", "jwks_uri"))
    assert server.stats()[tenant]["discovery"] == 1


def test_msal_gets_a_token_then_answers_from_its_cache(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    app = _msal_app(server, http, tenant)
    first = app.acquire_token_for_client(scopes=[f"{server.url}/.default"])
    assert first.get("access_token"), first
    assert first["token_source"] == "identity_provider"
    assert first["token_type"] == "Bearer"
    assert 3500 < first["expires_in"] <= 3599
    second = app.acquire_token_for_client(scopes=[f"{server.url}/.default"])
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    assert server.stats()[tenant]["token"] == 1
    answer = _score(server, http, first["access_token"])
    assert answer.status_code == 200


def test_msal_reports_invalid_secret_fault(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    server.set_fault(tenant, "invalid_secret")
    result = _msal_app(server, http, tenant).acquire_token_for_client(
        scopes=[f"{server.url}/.default"]
    )
    assert "access_token" not in result
    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")


def test_msal_reports_a_wrong_secret(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    result = _msal_app(server, http, tenant, secret="not-the-secret").acquire_token_for_client(
        scopes=[f"{server.url}/.default"]
    )
    assert 7000215 in result["error_codes"]


def test_msal_constructor_raises_for_unknown_tenant(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    server.set_fault(tenant, FaultKind.UNKNOWN_TENANT)
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        _msal_app(server, http, tenant)
    answer = http.get(f"{server.url}/{tenant}/v2.0/.well-known/openid-configuration", timeout=5)
    body = _assert_entra_error(answer, 400, "invalid_tenant", 90002)
    assert f"Tenant '{tenant}' not found" in body["error_description"]


@pytest.mark.parametrize(
    ("kind", "status", "error", "code", "text"),
    [
        ("invalid_secret", 401, "invalid_client", 7000215, "Invalid client secret provided."),
        ("expired_secret", 401, "invalid_client", 7000222, "are expired."),
        ("app_not_found", 400, "unauthorized_client", 700016, "was not found in the directory"),
        ("unknown_tenant", 400, "invalid_tenant", 90002, "not found"),
    ],
)
def test_sign_in_faults(
    server: Simulator,
    http: requests.Session,
    tenant: str,
    kind: str,
    status: int,
    error: str,
    code: int,
    text: str,
) -> None:
    server.set_fault(tenant, kind, count=1)
    body = _assert_entra_error(_token_response(server, http, tenant), status, error, code)
    assert text in body["error_description"]
    assert _token_response(server, http, tenant).status_code == 200  # count=1 cleared it


def test_wrong_secret_beats_any_fault_and_does_not_use_it_up(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    server.set_fault(tenant, "app_not_found", count=1)
    wrong = _token_response(server, http, tenant, client_secret="wrong")
    _assert_entra_error(wrong, 401, "invalid_client", 7000215)
    right = _token_response(server, http, tenant)
    _assert_entra_error(right, 400, "unauthorized_client", 700016)


def test_other_secret_can_be_configured(cert_dir: Path, tenant: str) -> None:
    with Simulator(cert_dir=cert_dir, client_secret="other").start() as sim:
        http = _session(sim)
        refused = _token_response(sim, http, tenant)
        _assert_entra_error(refused, 401, "invalid_client", 7000215)
        assert _token_response(sim, http, tenant, client_secret="other").status_code == 200


@pytest.mark.parametrize(
    ("form", "status", "error", "code"),
    [
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"grant_type": ""}, 400, "invalid_request", 900144),
        ({"client_id": ""}, 400, "invalid_request", 900144),
        ({"client_secret": ""}, 401, "invalid_client", 7000218),
        ({"scope": ""}, 400, "invalid_request", 900144),
        ({"scope": "https://example.test/Score.Read.All"}, 400, "invalid_scope", 1002012),
    ],
)
def test_bad_token_requests_are_refused(
    server: Simulator,
    http: requests.Session,
    tenant: str,
    form: dict[str, str],
    status: int,
    error: str,
    code: int,
) -> None:
    _assert_entra_error(_token_response(server, http, tenant, **form), status, error, code)


# --- the Defender API ------------------------------------------------------------------------


def test_score_answer_has_defenders_shape(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    answer = _score(server, http, _token(server, http, tenant))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"@odata.context", "time", "score"}
    assert body["@odata.context"] == f"{server.url}/api/$metadata#ConfigurationScore/$entity"
    measured = _parse_odata_time(body["time"])
    assert abs((datetime.now(UTC) - measured).total_seconds()) < 5
    assert body["score"] == pytest.approx(score_at(tenant, measured), abs=0.02)
    stats = server.stats()[tenant]
    assert (stats["discovery"], stats["token"], stats["score"]) == (0, 1, 1)


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not.a.token", "Basic dXNlcjpwYXNz", "Bearer a.b"],
)
def test_api_refuses_missing_or_bad_tokens(
    server: Simulator, http: requests.Session, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = http.get(f"{server.url}/api/configurationScore", headers=headers, timeout=5)
    _assert_defender_error(answer, 401, "Unauthorized")


def test_api_refuses_tampered_and_expired_tokens(
    cert_dir: Path, server: Simulator, http: requests.Session, tenant: str
) -> None:
    header, _claims, signature = _token(server, http, tenant).split(".")
    forged = json.dumps({"tid": "someone-else", "exp": 9999999999}).encode()
    forged_claims = simulator._b64url(forged)
    _assert_defender_error(
        _score(server, http, f"{header}.{forged_claims}.{signature}"), 401, "Unauthorized"
    )
    with Simulator(cert_dir=cert_dir, token_lifetime=0).start() as short:
        short_http = _session(short)
        token = _token(short, short_http, tenant)
        error = _assert_defender_error(_score(short, short_http, token), 401, "Unauthorized")
        assert "expired" in error["message"]


def test_unknown_paths_and_methods(server: Simulator, http: requests.Session) -> None:
    _assert_defender_error(http.get(f"{server.url}/api/machines", timeout=5), 404, "NotFound")
    _assert_defender_error(http.get(f"{server.url}/", timeout=5), 404, "NotFound")
    answer = http.post(f"{server.url}/api/configurationScore", timeout=5)
    _assert_defender_error(answer, 405, "MethodNotAllowed")
    assert answer.headers["Allow"] == "GET"


# --- API faults ------------------------------------------------------------------------------


def test_throttle_answers_429_with_retry_after_then_clears(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, "throttle", count=2, retry_after=3)
    for _ in range(2):
        answer = _score(server, http, token)
        _assert_defender_error(answer, 429, "TooManyRequests")
        assert answer.headers["Retry-After"] == "3"
    assert _score(server, http, token).status_code == 200
    times = server.stats()[tenant]["score_times"]
    assert len(times) == 3
    assert times == sorted(times)
    assert server.faults() == {}


def test_throttle_defaults_and_fractional_retry_after(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, "throttle")
    assert _score(server, http, token).headers["Retry-After"] == "2"
    assert _score(server, http, token).status_code == 429  # no count: until cleared
    server.set_fault(tenant, "throttle", retry_after=0.5)
    assert _score(server, http, token).headers["Retry-After"] == "0.5"
    assert server.clear_faults(tenant) == 1
    assert _score(server, http, token).status_code == 200


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors(server: Simulator, http: requests.Session, tenant: str, status: int) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, f"error_{status}", count=1)
    assert _score(server, http, token).status_code == status
    assert _score(server, http, token).status_code == 200


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("unauthorized", 401, "Unauthorized"),
        ("forbidden", 403, "Forbidden"),
        ("disabled_feature", 403, "DisabledFeature"),
    ],
)
def test_access_faults(
    server: Simulator, http: requests.Session, tenant: str, kind: str, status: int, code: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, kind)
    error = _assert_defender_error(_score(server, http, token), status, code)
    if kind == "forbidden":
        assert "permission" in error["message"]


def _body_fault(server: Simulator, http: requests.Session, tenant: str, kind: str):
    token = _token(server, http, tenant)
    server.set_fault(tenant, kind, count=1)
    return _score(server, http, token)


@pytest.mark.parametrize(
    "kind",
    ["missing_score", "missing_time", "null_score", "string_score", "negative_score"],
)
def test_damaged_json_answers(
    server: Simulator, http: requests.Session, tenant: str, kind: str
) -> None:
    answer = _body_fault(server, http, tenant, kind)
    assert answer.status_code == 200
    body = answer.json()
    if kind == "missing_score":
        assert "score" not in body and "time" in body
    elif kind == "missing_time":
        assert "time" not in body and isinstance(body["score"], float)
    elif kind == "null_score":
        assert body["score"] is None
    elif kind == "string_score":
        assert isinstance(body["score"], str) and float(body["score"]) > 0
    else:
        assert body["score"] < 0


@pytest.mark.parametrize(
    ("kind", "token"), [("nan_score", b"NaN"), ("infinite_score", b"Infinity")]
)
def test_non_finite_scores_are_literal(
    server: Simulator, http: requests.Session, tenant: str, kind: str, token: bytes
) -> None:
    answer = _body_fault(server, http, tenant, kind)
    assert b'"score":' + token in answer.content
    assert not math.isfinite(json.loads(answer.content)["score"])  # Python's json accepts it


def test_future_time(server: Simulator, http: requests.Session, tenant: str) -> None:
    body = _body_fault(server, http, tenant, "future_time").json()
    assert _parse_odata_time(body["time"]) > datetime.now(UTC) + timedelta(days=9 * 365)


def test_malformed_json_and_html(server: Simulator, http: requests.Session, tenant: str) -> None:
    answer = _body_fault(server, http, tenant, "malformed_json")
    assert answer.status_code == 200
    with pytest.raises(ValueError):
        answer.json()
    answer = _body_fault(server, http, tenant, "html")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.text.lstrip().startswith("<!DOCTYPE html>")


def test_reset_closes_without_an_answer(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, "reset", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        _score(server, _session(server), token)
    assert _score(server, _session(server), token).status_code == 200


def test_slow_answers_after_the_delay(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, "slow", delay=0.2, count=2)
    began = time.monotonic()
    answer = _score(server, http, token)
    assert time.monotonic() - began >= 0.2
    assert answer.status_code == 200
    assert isinstance(answer.json()["score"], float)
    with pytest.raises(requests.exceptions.ReadTimeout):
        _score(server, _session(server), token, timeout=0.05)


def test_trickle_sends_a_valid_body_byte_by_byte(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault(tenant, "trickle", delay=0.01, count=1)
    began = time.monotonic()
    # A read timeout well above the per-byte delay never fires: only a total deadline would.
    answer = _score(server, http, token, timeout=0.5)
    elapsed = time.monotonic() - began
    assert answer.status_code == 200
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    assert elapsed >= 0.8 * 0.01 * len(answer.content)
    assert isinstance(answer.json()["score"], float)


def test_slow_tenant_does_not_block_others(server: Simulator, http: requests.Session) -> None:
    slow, fast = str(uuid.uuid4()), str(uuid.uuid4())
    slow_token, fast_token = _token(server, http, slow), _token(server, http, fast)
    server.set_fault(slow, "slow", delay=0.6)
    silent = socket.create_connection(("127.0.0.1", server.port))  # never starts TLS
    results: queue.Queue[int] = queue.Queue()
    worker = threading.Thread(
        target=lambda: results.put(_score(server, _session(server), slow_token).status_code)
    )
    worker.start()
    try:
        time.sleep(0.1)
        began = time.monotonic()
        assert _score(server, _session(server), fast_token).status_code == 200
        assert time.monotonic() - began < 0.5
    finally:
        silent.close()
        worker.join(5)
    assert results.get_nowait() == 200


def test_stop_is_prompt_during_a_slow_fault(cert_dir: Path, tenant: str) -> None:
    sim = Simulator(cert_dir=cert_dir).start()
    http = _session(sim)
    token = _token(sim, http, tenant)
    sim.set_fault(tenant, "slow", delay=30)
    outcome: queue.Queue[object] = queue.Queue()

    def call() -> None:
        try:
            outcome.put(_score(sim, _session(sim), token, timeout=10).status_code)
        except requests.RequestException as exc:
            outcome.put(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.2)
    began = time.monotonic()
    sim.stop()
    assert time.monotonic() - began < 1.5
    worker.join(3)
    assert not worker.is_alive()
    assert isinstance(outcome.get_nowait(), requests.ConnectionError)  # cut, not answered late
    with pytest.raises(requests.exceptions.ConnectionError):
        http.get(f"{sim.url}/_simulator/health", timeout=2)


def test_tls_garbage_leaves_no_traceback(
    server: Simulator, http: requests.Session, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to the TLS port
        with contextlib.suppress(ConnectionError):
            raw.recv(1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01\x00\x05hello")  # a broken ClientHello
        with contextlib.suppress(ConnectionError):
            raw.recv(1024)
    untrusting = requests.Session()
    untrusting.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        untrusting.get(f"{server.url}/_simulator/health", timeout=5)
    assert http.get(f"{server.url}/_simulator/health", timeout=5).status_code == 200
    time.sleep(0.1)  # let the handler threads finish writing whatever they would write
    assert "Traceback" not in capfd.readouterr().err


# --- fault book-keeping and the control plane ------------------------------------------------


def test_fault_names() -> None:
    assert set(FAULT_KINDS) == {
        "throttle",
        "error_500",
        "error_502",
        "error_503",
        "error_504",
        "slow",
        "trickle",
        "reset",
        "malformed_json",
        "html",
        "missing_score",
        "missing_time",
        "null_score",
        "string_score",
        "nan_score",
        "infinite_score",
        "negative_score",
        "future_time",
        "unauthorized",
        "forbidden",
        "disabled_feature",
        "invalid_secret",
        "expired_secret",
        "app_not_found",
        "unknown_tenant",
    }
    assert FaultKind("throttle") is FaultKind.THROTTLE


def test_bad_faults_are_refused(server: Simulator) -> None:
    with pytest.raises(ValueError):
        server.set_fault("t", "meltdown")
    with pytest.raises(ValueError):
        server.set_fault("t", "throttle", count=0)
    with pytest.raises(ValueError):
        server.set_fault("t", "slow", delay=-1)


def test_api_faults_do_not_touch_sign_in_and_vice_versa(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    server.set_fault(tenant, "error_503", count=1)
    token = _token(server, http, tenant)  # sign-in unaffected, fault still armed
    assert _score(server, http, token).status_code == 503
    server.set_fault(tenant, "expired_secret", count=1)
    assert _score(server, http, token).status_code == 200  # API unaffected
    assert _token_response(server, http, tenant).status_code == 401


def test_wildcard_fault_applies_to_every_tenant(
    server: Simulator, http: requests.Session, tenant: str
) -> None:
    token = _token(server, http, tenant)
    server.set_fault("*", "error_500", count=2)
    assert _score(server, http, token).status_code == 500
    assert _score(server, http, _token(server, http, str(uuid.uuid4()))).status_code == 500
    assert _score(server, http, token).status_code == 200


def test_faults_and_stats_use_case_insensitive_tenant_ids(
    server: Simulator, http: requests.Session
) -> None:
    tenant = "ABCDEF12-3456-4789-8ABC-DEF012345678"
    server.set_fault(tenant.lower(), "error_502", count=1)
    assert _score(server, http, _token(server, http, tenant)).status_code == 502
    assert server.stats()[tenant.lower()]["score"] == 1


def test_control_plane_over_http(server: Simulator, http: requests.Session, tenant: str) -> None:
    base = f"{server.url}/_simulator"
    assert http.get(f"{base}/health", timeout=5).json() == {"ok": True}
    answer = http.put(
        f"{base}/faults/{tenant}",
        json={"kind": "throttle", "count": 1, "retry_after": 4, "delay": None},
        timeout=5,
    )
    assert answer.status_code == 200
    assert answer.json()["fault"] == {
        "kind": "throttle",
        "count": 1,
        "retry_after": 4.0,
        "delay": None,
    }
    assert http.get(f"{base}/faults", timeout=5).json()[tenant]["kind"] == "throttle"
    token = _token(server, http, tenant)
    throttled = _score(server, http, token)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "4"
    stats = http.get(f"{base}/stats", timeout=5).json()
    assert stats[tenant]["token"] == 1
    assert stats[tenant]["score"] == 1
    assert len(stats[tenant]["score_times"]) == 1
    http.put(f"{base}/faults/{tenant}", json={"kind": "error_500"}, timeout=5)
    assert http.delete(f"{base}/faults/{tenant}", timeout=5).json() == {"cleared": 1}
    assert _score(server, http, token).status_code == 200
    assert http.delete(f"{base}/stats", timeout=5).json() == {"ok": True}
    assert server.stats() == {}


@pytest.mark.parametrize(
    "body",
    [{"kind": "meltdown"}, {}, {"kind": "slow", "delay": "long"}, {"kind": "slow", "x": 1}],
)
def test_control_plane_refuses_bad_faults(
    server: Simulator, http: requests.Session, body: dict
) -> None:
    answer = http.put(f"{server.url}/_simulator/faults/t", json=body, timeout=5)
    _assert_defender_error(answer, 400, "BadRequest")
    assert server.faults() == {}


def test_context_manager_stops_the_server(cert_dir: Path) -> None:
    with Simulator(cert_dir=cert_dir) as sim:  # starts itself when not started
        url = sim.url
        assert _session(sim).get(f"{url}/_simulator/health", timeout=5).status_code == 200
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", url)
    with pytest.raises(requests.exceptions.ConnectionError):
        _session(sim).get(f"{url}/_simulator/health", timeout=2)


def test_ipv6_loopback(cert_dir: Path) -> None:
    with Simulator(host="::1", cert_dir=cert_dir).start() as sim:
        assert sim.url == f"https://[::1]:{sim.port}"
        assert _session(sim).get(f"{sim.url}/_simulator/health", timeout=5).json() == {"ok": True}


# --- the management command ------------------------------------------------------------------


def _command(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "manage.py", "simulate_defender", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float = 20) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    seen, deadline = "", time.monotonic() + timeout
    while marker not in seen:
        try:
            seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            pytest.fail(f"no {marker!r} from the command; got {seen!r}")
    return seen


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_serves_and_stops_cleanly(tmp_path: Path, stop_signal: signal.Signals) -> None:
    tenant = str(uuid.uuid4())
    process = _command("--port", "0", "--cert-dir", str(tmp_path), "--fault", f"{tenant}=error_503")
    try:
        banner = _read_until(process, "Ctrl+C")
        url = re.search(r"SCOREBOARD_SIMULATOR_URL=(https://127\.0\.0\.1:\d+)", banner)[1]
        cert = tmp_path / "simulator-cert.pem"
        assert f"SCOREBOARD_CA_BUNDLE={cert}" in banner
        assert DEFAULT_CLIENT_SECRET in banner
        http = requests.Session()
        http.trust_env = False
        http.verify = str(cert)
        assert http.get(f"{url}/_simulator/health", timeout=5).json() == {"ok": True}
        assert http.get(f"{url}/_simulator/faults", timeout=5).json()[tenant]["kind"] == "error_503"
    finally:
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_command_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    remote = "0.0.0.0"  # noqa: S104 - the point is that it is refused
    process = _command("--host", remote, "--port", "0", "--cert-dir", str(tmp_path))
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    assert "not a loopback address" in stderr
    assert "--allow-remote" in stderr
    assert "Traceback" not in stderr


def test_command_refuses_an_unknown_fault(tmp_path: Path) -> None:
    process = _command("--port", "0", "--cert-dir", str(tmp_path), "--fault", "t=meltdown")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 1
    assert "unknown kind 'meltdown'" in stderr
