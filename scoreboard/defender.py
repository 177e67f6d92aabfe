"""The one module that talks to Microsoft: sign-in through msal, API calls through requests.

`read_secure_score(credential)` returns a `Score` or raises a `DefenderError`
whose `kind` says what to do about it. Messages name the tenant, the cause and
the fix, keep Microsoft's correlation id, and never contain the secret or a token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import certifi
import msal
import requests
import urllib3
from django.conf import settings
from django.db import models
from requests.adapters import HTTPAdapter

from tenants.clouds import Cloud, UnknownCloud, get_cloud
from tenants.crypto import SecretUnreadable

if TYPE_CHECKING:
    from tenants.models import Tenant

log = logging.getLogger(__name__)

SCORE_PATH = "/api/configurationScore"
POOL_SIZE = 64  # connections kept per host: at least the worker's threads
MAX_BODY_BYTES = 256 * 1024
SNIPPET_CHARS = 200
DEFAULT_RETRY_AFTER = 60
# A reading stamped further ahead than this is refused: one side's clock is wrong.
FUTURE_TOLERANCE = timedelta(hours=1)


class ErrorKind(models.TextChoices):
    AUTH = "auth", "sign-in rejected"
    PERMISSION = "permission", "missing permission"
    THROTTLED = "throttled", "throttled by Microsoft"
    TRANSIENT = "transient", "temporary failure"
    BAD_RESPONSE = "bad_response", "unexpected answer"
    CONFIG = "config", "configuration problem"


RETRYABLE_KINDS = frozenset({ErrorKind.THROTTLED, ErrorKind.TRANSIENT})


class DefenderError(Exception):
    """A classified failure to read a score."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        http_status: int | None = None,
        correlation_id: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.http_status = http_status
        self.correlation_id = correlation_id
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    def __str__(self) -> str:
        if self.correlation_id:
            return f"{self.message} (correlation id {self.correlation_id})"
        return self.message


@dataclass(frozen=True)
class Credential:
    """What signing in to one tenant takes, with the secret or private key decrypted."""

    name: str
    tenant_id: str
    client_id: str
    secret: str = field(repr=False)  # the client secret, or the certificate's private key
    cloud: Cloud
    api_base: str
    certificate: str = ""  # PEM; set for certificate credentials

    @classmethod
    def from_tenant(cls, tenant: Tenant) -> Credential:
        try:
            cloud = get_cloud(tenant.cloud)
            api_base = cloud.api_base_for(tenant.api_region)
        except UnknownCloud as exc:
            raise DefenderError(ErrorKind.CONFIG, f"{tenant.name}: {exc}.") from None
        except KeyError:
            raise DefenderError(
                ErrorKind.CONFIG,
                f"{tenant.name}: API region {tenant.api_region!r} does not exist in the "
                f"{cloud.label} cloud. Fix: clear the API region in admin.",
            ) from None
        uses_certificate = tenant.credential_type == "certificate"
        sealed = tenant.private_key if uses_certificate else tenant.client_secret
        try:
            secret = sealed.reveal() if hasattr(sealed, "reveal") else str(sealed or "")
        except SecretUnreadable as exc:
            raise DefenderError(ErrorKind.CONFIG, f"{tenant.name}: {exc}.") from None
        if not secret or (uses_certificate and not tenant.certificate):
            what = "certificate and private key" if uses_certificate else "client secret"
            raise DefenderError(
                ErrorKind.CONFIG,
                f"{tenant.name}: no {what} is stored. Fix: paste the app registration's "
                f"{what} into this tenant in admin.",
            )
        return cls(
            name=tenant.name,
            tenant_id=str(tenant.tenant_id),
            client_id=str(tenant.client_id),
            secret=secret,
            cloud=cloud,
            api_base=api_base,
            certificate=tenant.certificate if uses_certificate else "",
        )

    @property
    def client_credential(self) -> str | dict[str, str]:
        """What msal takes: the secret, or the key and certificate it signs assertions with."""
        if self.certificate:
            return {"private_key": self.secret, "public_certificate": self.certificate}
        return self.secret

    def redact(self, text: str) -> str:
        """Belt and braces: no message we keep may carry the secret."""
        return text.replace(self.secret, "********") if self.secret else text


@dataclass(frozen=True)
class Score:
    value: float
    measured_at: datetime


# --- HTTP ---------------------------------------------------------------------


class OutboundBlocked(requests.RequestException):
    """A request to a host outside the tenant's cloud was refused before it left."""


class _Session(requests.Session):
    """Every outbound request: explicit timeouts, our CA choice, proxies from the environment.

    `trust_env` is off because REQUESTS_CA_BUNDLE in the environment would
    otherwise override `verify`; proxies are still taken from the environment,
    per URL, so HTTPS_PROXY and NO_PROXY keep working.

    Each cloud has its own session that only speaks HTTPS to that cloud's
    hosts: an answer that points elsewhere (say, a discovery document naming
    another token endpoint) cannot make us send a secret there.
    """

    def __init__(self, verify: str | bool, allowed_hosts: frozenset[str]) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = verify
        self.allowed_hosts = allowed_hosts
        self.max_redirects = 0
        # A threaded worker shares this session: keep a connection per thread to
        # each host instead of redoing TLS handshakes.
        self.mount("https://", HTTPAdapter(pool_connections=8, pool_maxsize=POOL_SIZE))
        self._proxies: dict[str, dict[str, str]] = {}
        self._prepared_urls: dict[str, str] = {}

    def _proxies_for(self, url: str) -> dict[str, str]:
        # The environment's proxy settings, looked up once per host.
        netloc = urlsplit(url).netloc
        if netloc not in self._proxies:
            self._proxies[netloc] = requests.utils.get_environ_proxies(url)
        return self._proxies[netloc]

    def _prepared_url(self, url: str) -> str:
        prepared = self._prepared_urls.get(url)
        if prepared is None:
            request = requests.PreparedRequest()
            request.prepare_url(url, None)
            prepared = self._prepared_urls[url] = request.url
        return prepared

    def _refuse_other_hosts(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or parts.netloc.lower() not in self.allowed_hosts:
            log.error("refused an outbound request to %s://%s", parts.scheme, parts.netloc)
            raise OutboundBlocked(f"{parts.scheme}://{parts.netloc} is not a host of this cloud")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self._refuse_other_hosts(url)
        kwargs.setdefault("proxies", self._proxies_for(url))
        kwargs.setdefault(
            "timeout",
            (settings.SCOREBOARD_HTTP_CONNECT_TIMEOUT, settings.SCOREBOARD_HTTP_READ_TIMEOUT),
        )
        kwargs.setdefault("allow_redirects", False)
        return super().request(method, url, *args, **kwargs)

    def stream_get(
        self, url: str, *, headers: dict[str, str], timeout: tuple[float, float]
    ) -> requests.Response:
        """A GET whose body is read by the caller, for the call every fetch makes.

        Straight to the session's adapter, so the same TLS settings, proxies and
        connection pool: what `request` adds on top (merging settings, cookies,
        hooks) cost more CPU than the call itself (issue #6). The adapter never
        follows a redirect. The request has no body, cookies or auth, so only its
        URL needs requests' preparing, once per URL (one per cloud and region):
        preparing the whole request took about 0.1 ms of CPU a fetch.
        """
        self._refuse_other_hosts(url)
        prepared = requests.PreparedRequest()
        prepared.method = "GET"
        prepared.url = self._prepared_url(url)
        prepared.prepare_headers(headers)
        return self.get_adapter(url).send(
            prepared,
            stream=True,
            timeout=timeout,
            verify=self.verify,
            proxies=self._proxies_for(url),
        )


_lock = threading.Lock()
_sessions: dict[Cloud, _Session] = {}
_apps: dict[tuple[str, str], tuple[str, msal.ConfidentialClientApplication]] = {}


def _forget_after_fork() -> None:
    _sessions.clear()
    _apps.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _ca_file() -> str | bool:
    """The CA file to verify against: the public roots plus SCOREBOARD_CA_BUNDLE, if set."""
    extra = settings.SCOREBOARD_CA_BUNDLE
    if not extra:
        return certifi.where()
    extra_path = Path(extra)
    if not extra_path.is_file():
        raise DefenderError(
            ErrorKind.CONFIG,
            f"SCOREBOARD_CA_BUNDLE={extra} does not exist or is not a file. Fix: point it at "
            "a PEM file with the extra CA certificate(s), or unset it.",
        )
    combined = Path(certifi.where()).read_bytes() + b"\n" + extra_path.read_bytes()
    digest = hashlib.sha256(combined).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"scoreboard-ca-{digest}.pem"
    if not target.exists():
        # Written beside and renamed so a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".pem")
        with os.fdopen(fd, "wb") as handle:
            handle.write(combined)
        os.replace(tmp, target)
    return str(target)


def _http(cloud: Cloud) -> _Session:
    with _lock:
        session = _sessions.get(cloud)
        if session is None:
            hosts = frozenset(urlsplit(url).netloc.lower() for url in cloud.base_urls())
            session = _sessions[cloud] = _Session(verify=_ca_file(), allowed_hosts=hosts)
        return session


def reset() -> None:
    """Forget sessions and cached sign-ins (settings changed; tests)."""
    with _lock:
        _forget_after_fork()


# --- Sign-in ------------------------------------------------------------------


def _app(credential: Credential) -> msal.ConfidentialClientApplication:
    """One msal app per credential per process, so msal's token cache is reused."""
    authority = credential.cloud.authority(credential.tenant_id)
    key = (authority, credential.client_id)
    secret_hash = hashlib.sha256(
        (credential.secret + "\0" + credential.certificate).encode()
    ).hexdigest()
    with _lock:
        cached = _apps.get(key)
    if cached and cached[0] == secret_hash:
        return cached[1]
    http = _http(credential.cloud)
    try:
        app = msal.ConfidentialClientApplication(
            credential.client_id,
            client_credential=credential.client_credential,
            authority=authority,
            http_client=http,
            timeout=settings.SCOREBOARD_HTTP_READ_TIMEOUT,
            instance_discovery=credential.cloud.instance_discovery,
        )
    except ValueError:
        # msal raises this while constructing when OIDC discovery answers 4xx.
        raise DefenderError(
            ErrorKind.CONFIG,
            f"{credential.name}: tenant {credential.tenant_id} was not found by the "
            f"{credential.cloud.label} sign-in service. Fix: check the Tenant ID (Entra ID > "
            "Overview > Tenant ID) and that the tenant's cloud is right.",
        ) from None
    except requests.RequestException as exc:
        raise _network_error(credential, "the sign-in service", exc) from None
    with _lock:
        _apps[key] = (secret_hash, app)
    return app


_FIX_CREDENTIAL = (
    "Fix: in Entra ID open App registrations > the app with client ID {client_id} > "
    "Certificates & secrets, create a new client secret, and paste its Value (not its "
    "Secret ID) into this tenant in Scoreboard admin."
)
_SIGN_IN_ERRORS: dict[int, tuple[ErrorKind, str]] = {
    7000215: (ErrorKind.AUTH, "the client secret is invalid. " + _FIX_CREDENTIAL),
    7000222: (ErrorKind.AUTH, "the client secret has expired. " + _FIX_CREDENTIAL),
    700027: (
        ErrorKind.AUTH,
        "the certificate was refused. Fix: upload this certificate (the public part) to the "
        "app with client ID {client_id} under App registrations > Certificates & secrets > "
        "Certificates, or paste the certificate that is uploaded there into this tenant.",
    ),
    700016: (
        ErrorKind.CONFIG,
        "application {client_id} was not found in tenant {tenant_id}. Fix: check the "
        "Client ID, and that an administrator of this tenant granted admin consent to the "
        "app (for a multi-tenant app, open its consent link signed in to this tenant).",
    ),
    90002: (
        ErrorKind.CONFIG,
        "tenant {tenant_id} was not found. Fix: check the Tenant ID and the tenant's cloud.",
    ),
}


def _token(credential: Credential, *, fresh: bool = False) -> str:
    app = _app(credential)
    if fresh:
        app.remove_tokens_for_client()
    try:
        result = app.acquire_token_for_client(scopes=[credential.cloud.scope])
    except requests.RequestException as exc:
        raise _network_error(credential, "the sign-in service", exc) from None
    except ValueError as exc:
        raise DefenderError(
            ErrorKind.TRANSIENT,
            f"{credential.name}: the sign-in service gave an answer that could not be read "
            f"({credential.redact(str(exc))[:SNIPPET_CHARS]}).",
        ) from None
    if "access_token" in result:
        return result["access_token"]
    raise _sign_in_error(credential, result)


def _sign_in_error(credential: Credential, result: dict[str, Any]) -> DefenderError:
    codes = result.get("error_codes") or []
    error = str(result.get("error", ""))
    first_line = credential.redact(str(result.get("error_description", ""))).split("\r\n")[0]
    first_line = first_line.split("\n")[0][:SNIPPET_CHARS]
    correlation_id = str(result.get("correlation_id", ""))
    names = {"client_id": credential.client_id, "tenant_id": credential.tenant_id}
    for code in codes:
        if code in _SIGN_IN_ERRORS:
            kind, text = _SIGN_IN_ERRORS[code]
            return DefenderError(
                kind,
                f"{credential.name}: {text.format(**names)} (AADSTS{code})",
                correlation_id=correlation_id,
            )
    # Microsoft adds and renames codes: classify the rest by the OAuth error.
    if error in ("temporarily_unavailable", "server_error"):
        kind, advice = ErrorKind.TRANSIENT, "It will be tried again."
    elif error == "invalid_client":
        kind = ErrorKind.AUTH
        advice = "Fix: check the client ID and secret. " + _FIX_CREDENTIAL.format(**names)
    else:
        kind = ErrorKind.CONFIG
        advice = "Fix: check the tenant ID, client ID and cloud, and the app's admin consent."
    return DefenderError(
        kind,
        f"{credential.name}: sign-in failed ({error or 'no error code'}: {first_line}). {advice}",
        correlation_id=correlation_id,
    )


def _network_error(
    credential: Credential, what: str, exc: requests.RequestException
) -> DefenderError:
    if isinstance(exc, OutboundBlocked):
        return DefenderError(
            ErrorKind.CONFIG,
            f"{credential.name}: {what} pointed Scoreboard to {exc}, so the request was not "
            f"sent. Only the hosts of the {credential.cloud.label} cloud are contacted; check "
            "the tenant's cloud, and report this if it persists.",
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return DefenderError(
            ErrorKind.CONFIG,
            f"{credential.name}: the TLS certificate of {what} could not be verified. Fix: if "
            "a TLS-inspecting proxy sits in between, put its CA certificate in a PEM file and "
            "set SCOREBOARD_CA_BUNDLE to it.",
        )
    if isinstance(exc, requests.Timeout):
        reason = "did not answer in time"
    elif isinstance(exc, requests.ConnectionError):
        reason = "could not be reached (connection failed)"
    else:
        reason = f"failed ({type(exc).__name__})"
    return DefenderError(ErrorKind.TRANSIENT, f"{credential.name}: {what} {reason}.")


# --- The API call ---------------------------------------------------------------


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _get(credential: Credential, url: str, token: str) -> _Answer:
    """GET with a deadline on the whole answer, so a trickling server cannot hold us."""
    connect = settings.SCOREBOARD_HTTP_CONNECT_TIMEOUT
    read = settings.SCOREBOARD_HTTP_READ_TIMEOUT
    deadline = time.monotonic() + connect + read
    try:
        with _http(credential.cloud).stream_get(
            url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=(connect, read),
        ) as response:
            body = bytearray()
            # read1 returns whatever has arrived, so the deadline is checked
            # between bytes of a trickle rather than after a full buffer.
            while chunk := response.raw.read1(8192):
                body.extend(chunk)
                if len(body) > MAX_BODY_BYTES:
                    raise DefenderError(
                        ErrorKind.BAD_RESPONSE,
                        f"{credential.name}: the API answer is larger than "
                        f"{MAX_BODY_BYTES // 1024} KB; a score is a few bytes.",
                        http_status=response.status_code,
                    )
                if time.monotonic() > deadline:
                    raise DefenderError(
                        ErrorKind.TRANSIENT,
                        f"{credential.name}: the API answer took longer than "
                        f"{connect + read:g} s to arrive.",
                        http_status=response.status_code,
                    )
            return _Answer(response.status_code, dict(response.headers), bytes(body))
    except requests.RequestException as exc:
        raise _network_error(credential, "the Defender API", exc) from None
    except urllib3.exceptions.ReadTimeoutError:
        raise _network_error(credential, "the Defender API", requests.Timeout()) from None
    except urllib3.exceptions.HTTPError:
        raise _network_error(credential, "the Defender API", requests.ConnectionError()) from None


def read_secure_score(credential: Credential) -> Score:
    """Sign in and read the tenant's Microsoft Secure Score for Devices."""
    url = credential.api_base + SCORE_PATH
    answer = _get(credential, url, _token(credential))
    if answer.status == 401:
        # The cached token may have been revoked: one fresh token, then give up.
        answer = _get(credential, url, _token(credential, fresh=True))
    if answer.status != 200:
        raise _api_error(credential, answer, url)
    return _parse_score(credential, answer)


def _snippet(credential: Credential, body: bytes) -> str:
    text = body[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace")[:SNIPPET_CHARS]
    return credential.redact(text)


def _api_error(credential: Credential, answer: _Answer, url: str) -> DefenderError:
    code, message, correlation_id = "", "", ""
    try:
        error = json.loads(answer.body).get("error", {})
        code = str(error.get("code", ""))
        message = credential.redact(str(error.get("message", "")))[:SNIPPET_CHARS]
        correlation_id = str(error.get("target", ""))[:100]
    except (ValueError, AttributeError):
        message = _snippet(credential, answer.body)
    status = answer.status
    said = f"HTTP {status} {code}: {message}".rstrip(": ")
    name = credential.name
    if status == 429:
        retry_after = _retry_after(answer.headers.get("Retry-After"))
        kind = ErrorKind.THROTTLED
        text = (
            f"{name}: Microsoft is throttling this app ({said}); "
            f"it asked to wait {retry_after:g} s."
        )
        return DefenderError(
            kind, text, http_status=status, correlation_id=correlation_id, retry_after=retry_after
        )
    if status == 401:
        kind = ErrorKind.AUTH
        text = (
            f"{name}: the API refused a freshly issued token ({said}). Fix: check that the "
            "tenant's cloud (and API region) is the one the tenant lives in."
        )
    elif status == 403 and code == "DisabledFeature":
        kind = ErrorKind.CONFIG
        text = (
            f"{name}: the feature is not enabled in this tenant ({said}). Fix: the tenant "
            "needs Microsoft Defender for Endpoint with vulnerability management licensed and "
            "onboarded."
        )
    elif status == 403:
        kind = ErrorKind.PERMISSION
        text = (
            f"{name}: the app may not read the score ({said}). Fix: in the app registration "
            "add API permission WindowsDefenderATP > Application permissions > Score.Read.All, "
            "then Grant admin consent for the tenant."
        )
    elif status == 404:
        kind = ErrorKind.CONFIG
        text = f"{name}: {url} does not exist ({said}). Fix: check the cloud and API region."
    elif status >= 500:
        kind = ErrorKind.TRANSIENT
        text = f"{name}: the Defender API failed ({said})."
    else:
        kind = ErrorKind.BAD_RESPONSE
        text = f"{name}: the Defender API refused the request ({said})."
    return DefenderError(kind, text, http_status=status, correlation_id=correlation_id)


def _retry_after(value: str | None) -> float:
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _parse_score(credential: Credential, answer: _Answer) -> Score:
    def bad(problem: str) -> DefenderError:
        return DefenderError(
            ErrorKind.BAD_RESPONSE,
            f"{credential.name}: the API answered 200 but {problem}; nothing was stored. "
            f"It began: {_snippet(credential, answer.body)!r}",
            http_status=answer.status,
        )

    try:
        data = json.loads(answer.body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise bad("not with JSON") from None
    if not isinstance(data, dict):
        raise bad("not with a JSON object")
    score = data.get("score")
    if score is None:
        raise bad("without a score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise bad("with a score that is not a number")
    score = float(score)
    if not math.isfinite(score) or score < 0:
        raise bad(f"with an impossible score ({score})")
    raw_time = data.get("time")
    if not isinstance(raw_time, str):
        raise bad("without a time")
    try:
        measured_at = datetime.fromisoformat(raw_time)
    except ValueError:
        raise bad("with a time that is not ISO 8601") from None
    if measured_at.tzinfo is None:
        measured_at = measured_at.replace(tzinfo=UTC)
    if measured_at > datetime.now(UTC) + FUTURE_TOLERANCE:
        raise bad("with a time in the future (is a clock wrong?)")
    return Score(value=score, measured_at=measured_at.astimezone(UTC))


def check_connection(tenant: Tenant) -> Score:
    """Sign in and read the score now without storing anything (admin's Test connection)."""
    return read_secure_score(Credential.from_tenant(tenant))
