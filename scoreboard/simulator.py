"""A local stand-in for Microsoft Defender for Endpoint and its Entra ID sign-in.

It speaks HTTPS (msal refuses plain-http authorities), serves the OIDC discovery document and
the client-credentials token endpoint the way login.microsoftonline.com does, and answers
``GET /api/configurationScore`` like the Defender API, from a deterministic score series per
tenant. Faults (throttling, 5xx, slow or broken answers, sign-in errors) can be switched on per
tenant from Python or over HTTP, so clients can be tested against the failures Microsoft's
services really produce.

Standard library plus ``cryptography`` only, and no Django: plain scripts import it too.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import http.server
import ipaddress
import json
import math
import os
import random
import re
import secrets
import selectors
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

try:  # POSIX only; without it concurrent first runs could pair one run's key with another's cert
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DEFAULT_CLIENT_SECRET = "simulator-secret"  # noqa: S105 - a test server's well-known secret
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_TOKEN_LIFETIME = 3599  # what Entra ID answers for client-credentials tokens
DEFAULT_RETRY_AFTER = 2.0
DEFAULT_SLOW_DELAY = 5.0
DEFAULT_TRICKLE_DELAY = 1.0
WILDCARD_TENANT = "*"  # a fault set for "*" applies to every tenant without a matching own fault

CERT_FILENAME = "simulator-cert.pem"
KEY_FILENAME = "simulator-key.pem"


# --- Score series ---------------------------------------------------------------------------

SCORE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_DAY_SECONDS = 86_400
_HOUR_SECONDS = 3_600
# Far-future dates are clamped so a typo like year 9999 cannot build a million-day walk.
_MAX_DAY = 100 * 366
_BASE_MIN, _BASE_SPAN = 350.0, 500.0
# Fraction of the gap to the base closed each day: a 40-150 point drop is back within a few
# points after roughly 10-17 days, i.e. it recovers over two to three weeks.
_REVERSION = 0.18
_DAILY_STEP_SIGMA = 3.0
_DROP_CHANCE = 1 / 40
_DROP_MIN, _DROP_MAX = 40.0, 150.0
_HOURLY_NOISE = 2.0
_SCORE_MIN, _SCORE_MAX = 0.0, 1000.0

# Daily levels per tenant, index = day number since the epoch. Built forward iteratively (no
# recursion), extended on demand, shared by all threads.
_levels: dict[str, list[float]] = {}
_levels_lock = threading.Lock()


def _digest_int(*parts: object) -> int:
    """A 64-bit integer from the parts, stable across processes (unlike hash())."""
    text = "\x1f".join(map(str, parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) for the parts."""
    return _digest_int(*parts) / 2**64


def _normalise_tenant(tenant_id: str) -> str:
    # GUIDs are case-insensitive; one tenant must not get two series or two fault slots.
    return tenant_id.strip().lower()


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _base_level(tenant: str) -> float:
    return _BASE_MIN + _BASE_SPAN * _unit("base", tenant)


def _next_level(tenant: str, day: int, previous: float, base: float) -> float:
    """One day of the walk: pull toward the base, a small random step, now and then a drop."""
    rng = random.Random(_digest_int("day", tenant, day))
    level = previous + _REVERSION * (base - previous) + rng.gauss(0.0, _DAILY_STEP_SIGMA)
    if rng.random() < _DROP_CHANCE:
        level -= rng.uniform(_DROP_MIN, _DROP_MAX)
    return _clamp(level, _SCORE_MIN, _SCORE_MAX)


def _daily_level(tenant: str, day: int) -> float:
    with _levels_lock:
        levels = _levels.get(tenant)
        if levels is None:
            levels = _levels[tenant] = [_base_level(tenant)]
        base = levels[0]
        while len(levels) <= day:
            levels.append(_next_level(tenant, len(levels), levels[-1], base))
        return levels[day]


# Consecutive hourly values share an hour boundary: caching halves the hashing.
@functools.lru_cache(maxsize=65_536)
def _hour_noise(tenant: str, hour: int) -> float:
    return _HOURLY_NOISE * (2.0 * _unit("hour", tenant, hour) - 1.0)


def _seconds_since_epoch(when: datetime) -> float:
    if when.tzinfo is None:  # naive datetimes are taken as UTC
        when = when.replace(tzinfo=UTC)
    seconds = (when - SCORE_EPOCH).total_seconds()
    return _clamp(seconds, 0.0, float(_MAX_DAY * _DAY_SECONDS))


def _lerp(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * fraction


def score_at(tenant_id: str, when: datetime) -> float:
    """The simulated secure score of a tenant at a moment: deterministic, 0-1000, 2 decimals.

    Daily levels follow a mean-reverting random walk around a per-tenant base (350-850) with
    an occasional drop; within a day the level is interpolated toward the next day's, plus
    +-2 points of hourly noise (itself interpolated, so the curve has no jumps). Naive
    datetimes are UTC; moments before 2024-01-01 UTC get the 2024-01-01 value.
    """
    tenant = _normalise_tenant(tenant_id)
    seconds = _seconds_since_epoch(when)
    day = int(seconds // _DAY_SECONDS)
    level = _lerp(
        _daily_level(tenant, day),
        _daily_level(tenant, day + 1),
        (seconds - day * _DAY_SECONDS) / _DAY_SECONDS,
    )
    hours = seconds / _HOUR_SECONDS
    hour = int(hours)
    noise = _lerp(_hour_noise(tenant, hour), _hour_noise(tenant, hour + 1), hours - hour)
    return round(_clamp(level + noise, _SCORE_MIN, _SCORE_MAX), 2)


# --- Certificate ----------------------------------------------------------------------------

_CERT_LIFETIME = timedelta(days=365)
_CERT_MIN_REMAINING = timedelta(days=1)
_CERT_DNS_NAMES = ("localhost",)
_CERT_IPS = ("127.0.0.1", "::1")


def ensure_certificate(directory: Path) -> tuple[Path, Path]:
    """Make sure `directory` holds a usable self-signed certificate and key; return their paths.

    The certificate is its own CA (BasicConstraints CA=True), so the certificate file can be
    given to requests/OpenSSL as the CA bundle. An existing pair is kept while it is valid for
    more than a day and matches; otherwise a new one is written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_FILENAME, directory / KEY_FILENAME
    with _directory_lock(directory):
        if not _certificate_usable(cert_path, key_path):
            _write_certificate(cert_path, key_path)
    with contextlib.suppress(OSError):  # a key copied in by hand may be world-readable
        os.chmod(key_path, 0o600)
    return cert_path, key_path


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(directory / ".simulator-cert.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _certificate_usable(cert_path: Path, key_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    now = datetime.now(UTC)
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc - now <= _CERT_MIN_REMAINING:
        return False
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        return False
    return _has_expected_extensions(cert)


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _has_expected_extensions(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return constraints.ca and dns >= set(_CERT_DNS_NAMES) and ips >= set(_CERT_IPS)


def _write_certificate(cert_path: Path, key_path: Path) -> None:
    # P-256 keys are generated instantly and every TLS stack in use accepts them.
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(key_path, key_pem, 0o600)
    _atomic_write(
        cert_path, _build_certificate(key).public_bytes(serialization.Encoding.PEM), 0o644
    )


def _build_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Scoreboard Defender simulator"),
        ]
    )
    public_key = key.public_key()
    subject_key_id = x509.SubjectKeyIdentifier.from_public_key(public_key)
    now = datetime.now(UTC)
    san = [x509.DNSName(dns) for dns in _CERT_DNS_NAMES] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in _CERT_IPS
    ]
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,  # it signs itself as its own CA
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    # Key identifiers and a critical BasicConstraints keep strict verifiers
    # (Python 3.13's VERIFY_X509_STRICT) happy as well as the default ones.
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))  # tolerate a little clock skew
        .not_valid_after(now + _CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(subject_key_id, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key_id),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256())


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write beside and rename, so a reader never sees half a file; create with `mode`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)  # the umask may have changed the mode os.open used
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- Faults ---------------------------------------------------------------------------------


class FaultKind(StrEnum):
    """Every failure the simulator can play. The values are the names used over HTTP."""

    THROTTLE = "throttle"
    ERROR_500 = "error_500"
    ERROR_502 = "error_502"
    ERROR_503 = "error_503"
    ERROR_504 = "error_504"
    SLOW = "slow"
    TRICKLE = "trickle"
    RESET = "reset"
    MALFORMED_JSON = "malformed_json"
    HTML = "html"
    MISSING_SCORE = "missing_score"
    MISSING_TIME = "missing_time"
    NULL_SCORE = "null_score"
    STRING_SCORE = "string_score"
    NAN_SCORE = "nan_score"
    INFINITE_SCORE = "infinite_score"
    NEGATIVE_SCORE = "negative_score"
    FUTURE_TIME = "future_time"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    DISABLED_FEATURE = "disabled_feature"
    INVALID_SECRET = "invalid_secret"  # noqa: S105 - a fault name, not a secret
    EXPIRED_SECRET = "expired_secret"  # noqa: S105
    APP_NOT_FOUND = "app_not_found"
    UNKNOWN_TENANT = "unknown_tenant"


FAULT_KINDS: tuple[str, ...] = tuple(kind.value for kind in FaultKind)

# Which requests each fault applies to. A fault only counts down on requests it applies to.
_DISCOVERY_FAULTS = frozenset({FaultKind.UNKNOWN_TENANT})
_TOKEN_FAULTS = frozenset(
    {
        FaultKind.INVALID_SECRET,
        FaultKind.EXPIRED_SECRET,
        FaultKind.APP_NOT_FOUND,
        FaultKind.UNKNOWN_TENANT,
    }
)
_API_FAULTS = frozenset(FaultKind) - _TOKEN_FAULTS
_STAGE_FAULTS = {"discovery": _DISCOVERY_FAULTS, "token": _TOKEN_FAULTS, "api": _API_FAULTS}


@dataclasses.dataclass
class Fault:
    """A fault for one tenant. `count` None means until cleared; defaults fill None timings."""

    kind: FaultKind
    count: int | None = None
    retry_after: float | None = None
    delay: float | None = None

    def __post_init__(self) -> None:
        self.kind = FaultKind(self.kind)  # raises ValueError for an unknown name
        if self.count is not None and (isinstance(self.count, bool) or self.count < 1):
            raise ValueError("count must be a positive integer or None")
        for name in ("retry_after", "delay"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative number or None")

    @property
    def effective_retry_after(self) -> float:
        return DEFAULT_RETRY_AFTER if self.retry_after is None else self.retry_after

    @property
    def effective_delay(self) -> float:
        if self.delay is not None:
            return self.delay
        return DEFAULT_TRICKLE_DELAY if self.kind is FaultKind.TRICKLE else DEFAULT_SLOW_DELAY

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "count": self.count,
            "retry_after": self.retry_after,
            "delay": self.delay,
        }


@dataclasses.dataclass
class _TenantStats:
    discovery: int = 0
    token: int = 0
    score: int = 0
    score_times: list[float] = dataclasses.field(default_factory=list)


# --- Tokens ---------------------------------------------------------------------------------

# Tokens are HS256 JWTs signed with a key that lives only in this process: a restarted
# simulator rejects old tokens, like a real service that rotated its keys would.
_TOKEN_KEY = secrets.token_bytes(32)
_TOKEN_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(message: str) -> str:
    return _b64url(hmac.new(_TOKEN_KEY, message.encode("ascii"), hashlib.sha256).digest())


def issue_token(tenant_id: str, client_id: str, audience: str, lifetime: int) -> str:
    """An access token for the tenant, valid `lifetime` seconds from now."""
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "appid": client_id,
        "tid": _normalise_tenant(tenant_id),
        "roles": ["Score.Read.All"],
    }
    signing_input = ".".join(
        _b64url(json.dumps(part, separators=(",", ":")).encode())
        for part in (_TOKEN_HEADER, claims)
    )
    return f"{signing_input}.{_sign(signing_input)}"


@dataclasses.dataclass(frozen=True)
class TokenCheck:
    """The tenant a token was signed for (None if the signature is bad) and what is wrong."""

    tenant: str | None
    problem: str | None


def check_token(token: str | None) -> TokenCheck:
    if not token:
        return TokenCheck(None, "Authorization header with a Bearer token is missing.")
    try:
        tenant, expires = _verified_claims(token)
    except _BadToken as exc:
        return TokenCheck(None, str(exc))
    if expires <= time.time():
        return TokenCheck(tenant, "The access token has expired.")
    return TokenCheck(tenant, None)


class _BadToken(Exception):
    """A token that is malformed or was not signed here; the message says which."""


# A client sends the same token for an hour: its signature is checked and its claims read
# once, not on every request. lru_cache keeps no exceptions, so only tokens signed here are
# kept; expiry depends on the moment, so check_token tests it on every request.
@functools.lru_cache(maxsize=4096)
def _verified_claims(token: str) -> tuple[str, float]:
    """The tenant and expiry (epoch seconds) of a token signed here; _BadToken otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _BadToken("The access token is malformed.")
    signing_input = f"{parts[0]}.{parts[1]}"
    try:
        valid = hmac.compare_digest(_sign(signing_input), parts[2])
        claims = json.loads(_b64url_decode(parts[1]))
        tenant, expires = str(claims["tid"]), float(claims["exp"])
    except (ValueError, KeyError, TypeError, UnicodeError):
        raise _BadToken("The access token is malformed.") from None
    if not valid:
        raise _BadToken("The access token signature is invalid.")
    return tenant, expires


# --- Answer bodies --------------------------------------------------------------------------

_JSON = "application/json; charset=utf-8"
# The content type Defender's OData API really sends.
_ODATA_JSON = "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"
_TEN_YEARS_NS = 3652 * _DAY_SECONDS * 1_000_000_000
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\n"
    b"<body><h1>Service Unavailable</h1><p>The service is temporarily unavailable. "
    b"Please try again later.</p></body></html>\n"
)

_SERVER_ERRORS = {
    FaultKind.ERROR_500: (500, "InternalServerError", "An unexpected error occurred."),
    FaultKind.ERROR_502: (502, "BadGateway", "The upstream service returned an invalid answer."),
    FaultKind.ERROR_503: (503, "ServiceUnavailable", "The service is temporarily unavailable."),
    FaultKind.ERROR_504: (504, "GatewayTimeout", "The upstream service did not answer in time."),
}
_ACCESS_ERRORS = {
    FaultKind.UNAUTHORIZED: (
        401,
        "Unauthorized",
        "Authorization has been denied for this request.",
    ),
    FaultKind.FORBIDDEN: (
        403,
        "Forbidden",
        "The application does not have any of the required application permissions "
        "(Score.Read.All) to access the resource.",
    ),
    FaultKind.DISABLED_FEATURE: (
        403,
        "DisabledFeature",
        "The feature required by this API is not enabled for this tenant "
        "(Microsoft Defender Vulnerability Management).",
    ),
}


def _odata_time(epoch_ns: int) -> str:
    """ISO-8601 UTC with 7 fractional digits, the way Defender writes `time`."""
    seconds, rest = divmod(epoch_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 100:07d}Z"


def score_payload(base_url: str, tenant_id: str, epoch_ns: int | None = None) -> dict[str, Any]:
    """The normal /api/configurationScore answer for a tenant at a moment (default: now)."""
    epoch_ns = time.time_ns() if epoch_ns is None else epoch_ns
    when = datetime.fromtimestamp(epoch_ns / 1e9, UTC)
    return {
        "@odata.context": f"{base_url}/api/$metadata#ConfigurationScore/$entity",
        "time": _odata_time(epoch_ns),
        "score": score_at(tenant_id, when),
    }


def _broken_payload(kind: FaultKind, payload: dict[str, Any]) -> dict[str, Any]:
    """The normal answer damaged the way `kind` says."""
    broken = dict(payload)
    if kind is FaultKind.MISSING_SCORE:
        del broken["score"]
    elif kind is FaultKind.MISSING_TIME:
        del broken["time"]
    elif kind is FaultKind.NULL_SCORE:
        broken["score"] = None
    elif kind is FaultKind.STRING_SCORE:
        broken["score"] = str(payload["score"])
    elif kind is FaultKind.NAN_SCORE:
        broken["score"] = math.nan  # json.dumps writes the bare token NaN
    elif kind is FaultKind.INFINITE_SCORE:
        broken["score"] = math.inf  # ... and Infinity
    elif kind is FaultKind.NEGATIVE_SCORE:
        broken["score"] = -abs(payload["score"]) or -1.0
    elif kind is FaultKind.FUTURE_TIME:
        broken["time"] = _odata_time(time.time_ns() + _TEN_YEARS_NS)
    return broken


_BROKEN_PAYLOAD_FAULTS = frozenset(
    {
        FaultKind.MISSING_SCORE,
        FaultKind.MISSING_TIME,
        FaultKind.NULL_SCORE,
        FaultKind.STRING_SCORE,
        FaultKind.NAN_SCORE,
        FaultKind.INFINITE_SCORE,
        FaultKind.NEGATIVE_SCORE,
        FaultKind.FUTURE_TIME,
    }
)


def defender_error(code: str, message: str) -> dict[str, Any]:
    """The Defender API's error body; `target` is a fresh correlation id, as support asks."""
    return {"error": {"code": code, "message": message, "target": str(uuid.uuid4())}}


def entra_error(
    base_url: str, error: str, code: int, text: str, correlation_id: str | None = None
) -> dict[str, Any]:
    """An Entra ID (AADSTS) error body, description suffixed the way Microsoft does."""
    trace_id = str(uuid.uuid4())
    correlation_id = correlation_id or str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {text} Trace ID: {trace_id} Correlation ID: {correlation_id} "
            f"Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{base_url}/error?code={code}",
    }


def discovery_document(base_url: str, tenant: str) -> dict[str, Any]:
    """The tenant's OIDC discovery document (v2.0 shape), pointing at this server."""
    root = f"{base_url}/{tenant}"
    return {
        "issuer": f"{root}/v2.0",
        "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
        "token_endpoint": f"{root}/oauth2/v2.0/token",
        "jwks_uri": f"{root}/discovery/v2.0/keys",
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "simulator.local",
    }


# --- Request handling -----------------------------------------------------------------------

_HANDSHAKE_TIMEOUT = 10.0
_IDLE_TIMEOUT = 30.0  # a kept-alive connection idle longer than this is closed
_MAX_BODY = 64 * 1024
_TENANT_SEGMENT = r"(?P<tenant>[^/]+)"
_HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}")
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,255}")

# (path pattern, {method: handler method name}). A known path with another method gets 405.
_ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"/api/configurationScore"), {"GET": "_get_score"}),
    (
        re.compile(rf"/{_TENANT_SEGMENT}/v2\.0/\.well-known/openid-configuration"),
        {"GET": "_get_discovery"},
    ),
    (re.compile(rf"/{_TENANT_SEGMENT}/oauth2/v2\.0/token"), {"POST": "_post_token"}),
    (re.compile(rf"/{_TENANT_SEGMENT}/discovery/v2\.0/keys"), {"GET": "_get_keys"}),
    (re.compile(r"/_simulator/health"), {"GET": "_get_health"}),
    (re.compile(r"/_simulator/stats"), {"GET": "_get_stats", "DELETE": "_delete_stats"}),
    (
        re.compile(rf"/_simulator/faults(?:/{_TENANT_SEGMENT})?"),
        {"GET": "_get_faults", "PUT": "_put_fault", "DELETE": "_delete_faults"},
    ),
]


class _BadRequest(Exception):
    """The request body could not be used; the message goes back to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests' connection pool expects
    server_version = "Microsoft-HTTPAPI/2.0"
    timeout = _IDLE_TIMEOUT
    server: _TLSServer

    # Set per request by _dispatch.
    _status: int | None = None
    _note: str = ""
    _body: bytes = b""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # -- plumbing --

    @property
    def sim(self) -> Simulator:
        return self.server.simulator

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as exc:  # the client went away mid-answer, or stop() cut the line
            self.sim.log(f"{self.client_address[0]} connection ended: {exc!r}")

    def version_string(self) -> str:
        return self.server_version  # the base class appends the Python version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _dispatch logs one line per request itself, with the fault applied

    def log_message(self, format: str, *args: Any) -> None:
        self.sim.log(f"{self.client_address[0]} {format % args}")

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def _dispatch(self) -> None:
        started = time.monotonic()
        self._status, self._note = None, ""
        path = urlsplit(self.path).path
        try:
            # Read the body before anything else: one left unread on a kept-alive connection
            # would be parsed as the next request.
            self._body = self._read_body()
            self._route(path)
        except _BadRequest as exc:
            self.close_connection = True  # what is left of the body is unknown
            self._send_defender_error(exc.status, "BadRequest", str(exc))
        except OSError:
            raise
        except Exception as exc:  # a simulator bug: answer 500 and say so in one line
            self.sim.warn(f"internal error on {self.command} {path}: {exc!r}")
            if self._status is None:
                self._send_defender_error(500, "InternalServerError", f"Simulator bug: {exc!r}")
            else:
                self.close_connection = True
        elapsed_ms = (time.monotonic() - started) * 1000
        status = self._status if self._status is not None else "no answer"
        note = f" [{self._note}]" if self._note else ""
        self.sim.log(
            f"{self.client_address[0]} {self.command} {path} -> {status}{note} {elapsed_ms:.0f} ms"
        )

    def _route(self, path: str) -> None:
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            name = methods.get(self.command)
            if name is None:
                self._send_defender_error(
                    405,
                    "MethodNotAllowed",
                    f"The requested resource does not support http method '{self.command}'.",
                    {"Allow": ", ".join(methods)},
                )
                return
            tenant = match.groupdict().get("tenant")
            getattr(self, name)(unquote(tenant) if tenant else None)
            return
        self._send_defender_error(404, "NotFound", f"Resource '{path}' was not found.")

    def _base_url(self) -> str:
        # URLs in answers use the address the client used, so "localhost" stays "localhost".
        host = self.headers.get("Host", "")
        if _HOST_HEADER.fullmatch(host):
            return f"https://{host}"
        return self.sim.url

    def _correlation_id(self) -> str | None:
        # msal sends client-request-id; Entra echoes it back as the correlation id.
        value = self.headers.get("client-request-id", "")
        return value if _UUID.fullmatch(value) else None

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _BadRequest(411, "Chunked request bodies are not supported; send Content-Length.")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise _BadRequest(400, "Content-Length is not a number.") from None
        if length < 0 or length > _MAX_BODY:
            raise _BadRequest(413, f"The request body must be 0-{_MAX_BODY} bytes.")
        return self.rfile.read(length)

    # -- writing answers --

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send_head(status, len(body), content_type, headers)
        self.wfile.write(body)

    def _send_head(
        self,
        status: int,
        length: int,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(
        self,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        content_type: str = _JSON,
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, content_type, headers)

    def _send_defender_error(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send_json(status, defender_error(code, message), headers)

    def _send_entra_error(self, status: int, error: str, code: int, text: str) -> None:
        body = entra_error(self._base_url(), error, code, text, self._correlation_id())
        self._send_json(status, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _reset_connection(self) -> None:
        """Drop the connection without a word: linger 0 makes close() send a TCP RST."""
        if self._note != FaultKind.RESET:
            self._note = f"{self._note} cut off".strip()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.connection.close()

    def _trickle(self, status: int, body: bytes, content_type: str, delay: float) -> None:
        """Headers at once (Content-Length correct), then the body one byte per `delay`."""
        self._send_head(status, len(body), content_type)
        for index in range(len(body)):
            if not self.sim.pause(delay):  # stop() was called
                self._reset_connection()
                return
            self.wfile.write(body[index : index + 1])

    # -- identity provider --

    def _get_discovery(self, tenant: str | None) -> None:
        assert tenant is not None  # the route always captures it
        key = _normalise_tenant(tenant)
        self.sim.record(key, "discovery")
        fault = self.sim.take_fault(key, "discovery")
        if fault is not None or not _TENANT_NAME.fullmatch(tenant):
            self._note = fault.kind.value if fault else "bad tenant name"
            self._send_unknown_tenant(tenant)
            return
        self._send_json(200, discovery_document(self._base_url(), tenant))

    def _send_unknown_tenant(self, tenant: str) -> None:
        self._send_entra_error(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud. Check with your subscription "
            "administrator, this may happen if there are no active subscriptions for the "
            "tenant.",
        )

    def _get_keys(self, tenant: str | None) -> None:
        # Tokens here are HMAC-signed and opaque to clients: no public keys to publish.
        self._send_json(200, {"keys": []})

    def _post_token(self, tenant: str | None) -> None:
        assert tenant is not None
        key = _normalise_tenant(tenant)
        self.sim.record(key, "token")
        try:
            form = self._token_form()
        except _BadRequest as exc:
            self._send_entra_error(exc.status, "invalid_request", 900144, str(exc))
            return
        if self._token_request_refused(tenant, form):
            return
        fault = self.sim.take_fault(key, "token")
        if fault is not None:
            self._note = fault.kind.value
            self._send_token_fault(fault, tenant, form["client_id"])
            return
        scope = form.get("scope", "")
        resource = self._default_scope_resource(scope)
        if resource is None:
            return
        token = issue_token(key, form["client_id"], resource, self.sim.token_lifetime)
        lifetime = self.sim.token_lifetime
        self._send_json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    def _token_form(self) -> dict[str, str]:
        """The form fields (first value each), with client_secret_basic folded in."""
        try:
            fields = parse_qs(self._body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise _BadRequest(400, "The request body is not valid UTF-8.") from None
        form = {name: values[0] for name, values in fields.items()}
        basic = self.headers.get("Authorization", "")
        if basic[:6].lower() == "basic ":
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                form.setdefault("client_id", unquote(client_id))
                form.setdefault("client_secret", unquote(secret))
        return form

    def _token_request_refused(self, tenant: str, form: dict[str, str]) -> bool:
        """Answer and return True if the request itself is wrong (no fault involved)."""
        grant_type = form.get("grant_type", "")
        if not _TENANT_NAME.fullmatch(tenant):
            self._send_unknown_tenant(tenant)
        elif not grant_type:
            self._send_missing_parameter("grant_type")
        elif grant_type != "client_credentials":
            self._send_entra_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. This simulator "
                "supports client_credentials only.",
            )
        elif not form.get("client_id"):
            self._send_missing_parameter("client_id")
        elif form.get("client_assertion"):
            problem = self._assertion_problem(tenant, form)
            if problem is None:
                return False
            self._note = "bad client assertion"
            self._send_entra_error(401, "invalid_client", 700027, problem)
        elif not form.get("client_secret"):
            self._send_entra_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' "
                "or 'client_secret'.",
            )
        elif not hmac.compare_digest(
            form["client_secret"].encode(), self.sim.client_secret.encode()
        ):
            # A wrong secret always gets this answer, whatever fault is set.
            self._note = "wrong secret"
            self._send_invalid_secret(form["client_id"])
        else:
            return False
        return True

    def _assertion_problem(self, tenant: str, form: dict[str, str]) -> str | None:
        """Why a certificate credential (a signed JWT) is refused, or None if it is good.

        The certificate must be one registered with the simulator (as an app
        registration lists its certificates), the signature must verify with it,
        and the claims must name this client and this token endpoint.
        """
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return "Client assertion type is missing or not supported."
        assertion = form["client_assertion"]
        try:
            header = jwt.get_unverified_header(assertion)
            der = base64.b64decode(header["x5c"][0])
        except (jwt.PyJWTError, KeyError, IndexError, TypeError, ValueError):
            return "Client assertion contains no certificate (x5c header)."
        certificate = self.sim.registered_certificate(hashlib.sha256(der).hexdigest())
        if certificate is None:
            return (
                "Client assertion failed signature validation: the certificate is not "
                f"registered for app '{form['client_id']}'."
            )
        try:
            claims = jwt.decode(
                assertion,
                key=certificate.public_key(),
                algorithms=["PS256", "RS256"],
                audience=f"{self._base_url()}/{tenant}/oauth2/v2.0/token",
                issuer=form["client_id"],
            )
        except jwt.PyJWTError as exc:
            return f"Client assertion failed signature validation: {exc}."
        if claims.get("sub") != form["client_id"]:
            return "Client assertion subject does not match the client id."
        return None

    def _send_missing_parameter(self, name: str) -> None:
        self._send_entra_error(
            400,
            "invalid_request",
            900144,
            f"The request body must contain the following parameter: '{name}'.",
        )

    def _send_invalid_secret(self, client_id: str) -> None:
        self._send_entra_error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is "
            f"the client secret value, not the client secret ID, for a secret added to app "
            f"'{client_id}'.",
        )

    def _send_token_fault(self, fault: Fault, tenant: str, client_id: str) -> None:
        if fault.kind is FaultKind.INVALID_SECRET:
            self._send_invalid_secret(client_id)
        elif fault.kind is FaultKind.EXPIRED_SECRET:
            self._send_entra_error(
                401,
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{client_id}' are expired. Visit the "
                "Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, "
                "or consider using certificate credentials for added security: "
                "https://aka.ms/certCreds.",
            )
        elif fault.kind is FaultKind.APP_NOT_FOUND:
            self._send_entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You "
                "may have sent your authentication request to the wrong tenant.",
            )
        else:
            self._send_unknown_tenant(tenant)

    def _default_scope_resource(self, scope: str) -> str | None:
        """The resource of a `<resource>/.default` scope; answers the error and returns None."""
        scopes = scope.split()
        if not scopes:
            self._send_missing_parameter("scope")
            return None
        for item in scopes:
            if item.endswith("/.default") and len(item) > len("/.default"):
                return item.removesuffix("/.default")
        self._send_entra_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
        return None

    # -- Defender API --

    def _bearer_token(self) -> str | None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def _get_score(self, tenant: str | None) -> None:
        check = check_token(self._bearer_token())
        if check.tenant is not None:
            self.sim.record(check.tenant, "score")
        if check.problem is not None or check.tenant is None:
            self._note = check.problem or ""
            self._send_defender_error(
                401, "Unauthorized", check.problem or "", {"WWW-Authenticate": "Bearer"}
            )
            return
        fault = self.sim.take_fault(check.tenant, "api")
        if fault is None:
            self._send_score(check.tenant)
            return
        self._note = fault.kind.value
        self._send_api_fault(fault, check.tenant)

    def _send_score(self, tenant: str) -> None:
        self._send_json(200, score_payload(self._base_url(), tenant), content_type=_ODATA_JSON)

    def _send_api_fault(self, fault: Fault, tenant: str) -> None:
        kind = fault.kind
        if kind is FaultKind.THROTTLE:
            self._send_throttled(fault.effective_retry_after)
        elif kind in _SERVER_ERRORS:
            self._send_defender_error(*_SERVER_ERRORS[kind])
        elif kind in _ACCESS_ERRORS:
            self._send_defender_error(*_ACCESS_ERRORS[kind])
        elif kind is FaultKind.SLOW:
            if self.sim.pause(fault.effective_delay):
                self._send_score(tenant)  # measured after the wait, as the real one would be
            else:
                self._reset_connection()
        elif kind is FaultKind.TRICKLE:
            payload = score_payload(self._base_url(), tenant)
            body = json.dumps(payload, separators=(",", ":")).encode()
            self._trickle(200, body, _ODATA_JSON, fault.effective_delay)
        elif kind is FaultKind.RESET:
            self._reset_connection()
        elif kind is FaultKind.MALFORMED_JSON:
            self._send(200, b'{"score": 3', _ODATA_JSON)
        elif kind is FaultKind.HTML:
            self._send(200, _HTML_PAGE, "text/html; charset=utf-8")
        elif kind in _BROKEN_PAYLOAD_FAULTS:
            payload = _broken_payload(kind, score_payload(self._base_url(), tenant))
            self._send_json(200, payload, content_type=_ODATA_JSON)
        else:  # a sign-in fault never reaches here; answer honestly if it somehow does
            raise AssertionError(f"fault {kind} is not an API fault")

    def _send_throttled(self, retry_after: float) -> None:
        # Whole seconds as Microsoft sends them; a fractional value is kept so tests can be fast.
        header = str(int(retry_after)) if retry_after == int(retry_after) else str(retry_after)
        self._send_defender_error(
            429,
            "TooManyRequests",
            f"API calls quota exceeded! Maximum allowed 100 per 1 Minute. Next call is allowed "
            f"in {header} seconds.",
            {"Retry-After": header},
        )

    # -- control plane --

    def _control_allowed(self) -> bool:
        if _is_loopback_address(self.client_address[0]):
            return True
        self._send_defender_error(
            403, "Forbidden", "The simulator control plane answers loopback clients only."
        )
        return False

    def _get_health(self, tenant: str | None) -> None:
        self._send_json(200, {"ok": True})

    def _get_stats(self, tenant: str | None) -> None:
        if self._control_allowed():
            self._send_json(200, self.sim.stats())

    def _delete_stats(self, tenant: str | None) -> None:
        if self._control_allowed():
            self.sim.reset_stats()
            self._send_json(200, {"ok": True})

    def _get_faults(self, tenant: str | None) -> None:
        if self._control_allowed():
            faults = self.sim.faults()
            if tenant is not None:
                key = _normalise_tenant(tenant)
                faults = {name: value for name, value in faults.items() if name == key}
            self._send_json(200, faults)

    def _delete_faults(self, tenant: str | None) -> None:
        if self._control_allowed():
            self._send_json(200, {"cleared": self.sim.clear_faults(tenant)})

    def _put_fault(self, tenant: str | None) -> None:
        if not self._control_allowed():
            return
        try:
            if tenant is None:
                raise _BadRequest(400, "PUT /_simulator/faults/{tenant} names the tenant.")
            fault = self.sim.set_fault(tenant, **self._fault_fields())
        except _BadRequest as exc:
            self._send_defender_error(exc.status, "BadRequest", str(exc))
            return
        except ValueError as exc:
            self._send_defender_error(400, "BadRequest", f"{exc}. Kinds: {', '.join(FAULT_KINDS)}")
            return
        self._send_json(200, {"tenant": _normalise_tenant(tenant), "fault": fault.as_dict()})

    def _fault_fields(self) -> dict[str, Any]:
        try:
            body = json.loads(self._body or b"{}")
        except ValueError:
            raise _BadRequest(400, "The body must be a JSON object.") from None
        if not isinstance(body, dict) or "kind" not in body:
            raise _BadRequest(400, 'The body must be a JSON object with "kind".')
        unknown = set(body) - {"kind", "count", "retry_after", "delay"}
        if unknown:
            raise _BadRequest(400, f"Unknown fields: {', '.join(sorted(unknown))}.")
        fields: dict[str, Any] = {"kind": str(body["kind"])}
        for name, kind in (("count", int), ("retry_after", float), ("delay", float)):
            value = body.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise _BadRequest(400, f'"{name}" must be a number or null.')
            if kind is int and value is not None and value != int(value):
                raise _BadRequest(400, '"count" must be a whole number.')
            fields[name] = None if value is None else kind(value)
        return fields


def _is_loopback_address(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def is_loopback_host(host: str) -> bool:
    """True for "localhost" and loopback IP literals: hosts only this machine can reach."""
    return host.strip().lower() == "localhost" or _is_loopback_address(host.strip("[]"))


# --- Server ---------------------------------------------------------------------------------


class _TLSServer(http.server.ThreadingHTTPServer):
    """One daemon thread per connection; the TLS handshake happens in that thread.

    Wrapping the listening socket instead would run every handshake in the accept loop, where
    one client that connects and says nothing would stall everybody.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64
    # handle_request() is only called once the listener is readable; should the connection
    # vanish before accept(), this bounds its wait instead of hanging the accept loop.
    timeout = 0.5

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        context: ssl.SSLContext,
        simulator: Simulator,
    ) -> None:
        self.address_family = family
        self.ssl_context = context
        self.simulator = simulator
        self._connections: set[ssl.SSLSocket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_HANDSHAKE_TIMEOUT)
        # Headers and body go out as separate TLS records; without NODELAY, Nagle plus the
        # client's delayed ACK holds every answer back by ~40 ms (and trickle bytes too).
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError) as exc:
            self.simulator.log(f"{client_address[0]} TLS handshake failed: {exc!r}")
            return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_WR)
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # One line instead of socketserver's traceback; quiet while stopping.
        if not self.simulator.stopping:
            self.simulator.warn(f"{client_address[0]} request failed: {sys.exc_info()[1]!r}")

    def drop_connections(self) -> None:
        """Cut every open connection, idle keep-alive ones included, so stop() really stops."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # socket.socket.shutdown, not SSLSocket.shutdown: the latter also discards the TLS
            # object under a thread that may be reading from it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_RDWR)


def _address_family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name such as "localhost"
        return socket.AF_INET


def _server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


def _default_cert_dir() -> Path:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"scoreboard-simulator-{user}"


class Simulator:
    """The simulator server. Binds in the constructor, so `url` is known before `start()`.

    >>> with Simulator(cert_dir=Path("var/simulator")).start() as sim:
    ...     sim.set_fault(tenant_id, "throttle", count=2)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_dir: Path | str | None = None,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        *,
        verbose: bool = False,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
    ) -> None:
        self.host = host
        self.client_secret = client_secret
        self.verbose = verbose
        self.token_lifetime = token_lifetime
        directory = Path(cert_dir) if cert_dir is not None else _default_cert_dir()
        self.cert_path, self.key_path = ensure_certificate(directory)
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._certificates: dict[str, x509.Certificate] = {}
        self._stats: dict[str, _TenantStats] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_done = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._server = _TLSServer(
            (host, port),
            _address_family(host),
            _server_context(self.cert_path, self.key_path),
            self,
        )
        # stop() writes a byte here to wake the accept loop at once.
        self._wake_reader, self._wake_writer = socket.socketpair()

    # -- address --

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL clients use, without a trailing slash. Wildcard binds map to loopback."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    # -- life cycle --

    def start(self) -> Simulator:
        """Serve in a background daemon thread; returns self."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._serve_loop, name=f"defender-simulator-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until stop() (from any thread or a signal handler) or Ctrl+C."""
        try:
            self._serve_loop()
        except KeyboardInterrupt:
            pass
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving and cut open connections; returns promptly even mid-fault."""
        self._stopping.set()  # also wakes handlers sleeping in slow/trickle faults
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if self._loop_thread is threading.current_thread():
            return  # a signal handler inside serve_forever(): the loop closes up as it exits
        if self._loop_thread is not None:
            self._loop_done.wait(2)
        self._close()

    def _serve_loop(self) -> None:
        """Accept connections until stopped.

        socketserver's serve_forever() polls for shutdown every poll_interval, so stop() would
        take up to that long; waiting on the listener and a wake-up socket makes it immediate.
        """
        self._loop_thread = threading.current_thread()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self._server.socket, selectors.EVENT_READ)
                selector.register(self._wake_reader, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is self._server.socket and not self._stopping.is_set():
                            self._server.handle_request()  # accepts; a thread takes it on
        finally:
            self._loop_done.set()

    def _close(self) -> None:
        self._stopping.set()
        with self._close_lock:  # stop() and a foreground serve_forever() may both get here
            if self._closed:
                return
            self._closed = True
        self._server.drop_connections()
        self._server.server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pause(self, seconds: float) -> bool:
        """Sleep; False if the simulator was stopped meanwhile (the caller should give up)."""
        return not self._stopping.wait(seconds)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults --

    def register_certificate(self, pem: bytes) -> str:
        """Accept certificate credentials signed with this certificate's key.

        Returns its SHA-256 fingerprint (hex).
        """
        certificate = x509.load_pem_x509_certificate(pem)
        fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
        with self._lock:
            self._certificates[fingerprint] = certificate
        return fingerprint

    def registered_certificate(self, fingerprint: str) -> x509.Certificate | None:
        with self._lock:
            return self._certificates.get(fingerprint)

    def set_fault(
        self,
        tenant_id: str,
        kind: FaultKind | str,
        *,
        count: int | None = None,
        retry_after: float | None = None,
        delay: float | None = None,
    ) -> Fault:
        """Set the tenant's fault (replacing any earlier one). ValueError for bad values."""
        fault = Fault(FaultKind(kind), count, retry_after, delay)
        with self._lock:
            self._faults[_normalise_tenant(tenant_id)] = fault
        return dataclasses.replace(fault)

    def clear_faults(self, tenant_id: str | None = None) -> int:
        """Clear one tenant's fault, or all of them; returns how many were cleared."""
        with self._lock:
            if tenant_id is None:
                cleared = len(self._faults)
                self._faults.clear()
                return cleared
            return 1 if self._faults.pop(_normalise_tenant(tenant_id), None) else 0

    def faults(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {tenant: fault.as_dict() for tenant, fault in self._faults.items()}

    def take_fault(self, tenant_id: str, stage: str) -> Fault | None:
        """The fault to play on this request (stage: discovery, token or api), counting it."""
        applicable = _STAGE_FAULTS[stage]
        with self._lock:
            for key in (_normalise_tenant(tenant_id), WILDCARD_TENANT):
                fault = self._faults.get(key)
                if fault is None or fault.kind not in applicable:
                    continue
                taken = dataclasses.replace(fault)
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        del self._faults[key]
                return taken
        return None

    # -- statistics --

    def record(self, tenant_id: str, kind: str) -> None:
        """Count a discovery, token or score request for the tenant."""
        now = time.monotonic()
        with self._lock:
            stats = self._stats.setdefault(_normalise_tenant(tenant_id), _TenantStats())
            setattr(stats, kind, getattr(stats, kind) + 1)
            if kind == "score":
                stats.score_times.append(now)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per tenant: discovery, token and score request counts, and score_times (monotonic)."""
        with self._lock:
            return {
                tenant: {
                    "discovery": stats.discovery,
                    "token": stats.token,
                    "score": stats.score,
                    "score_times": list(stats.score_times),
                }
                for tenant, stats in self._stats.items()
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()

    # -- output --

    def log(self, message: str) -> None:
        """One line on stderr, only when verbose."""
        if self.verbose:
            self.warn(message)

    def warn(self, message: str) -> None:
        """One line on stderr, always."""
        print(f"[defender-simulator] {message}", file=sys.stderr, flush=True)
