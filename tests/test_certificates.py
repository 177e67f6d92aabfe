"""Certificate credentials: entered in admin, stored encrypted, used by msal for real."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.db import connection
from django.urls import reverse

from scoreboard import defender
from scoreboard.defender import Credential, DefenderError, ErrorKind
from tenants.models import Tenant

ADD_URL = reverse("admin:tenants_tenant_add")


def make_certificate(days: int = 365) -> tuple[str, str]:
    """A self-signed certificate and its private key, as an admin would create them."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scoreboard")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


@pytest.fixture(scope="module")
def certificate_pair() -> tuple[str, str]:
    return make_certificate()


def certificate_form(cert_pem: str, key_pem: str, **overrides) -> dict:
    data = {
        "name": "Cert Co",
        "slug": "cert-co",
        "enabled": "on",
        "tenant_id": str(uuid.uuid4()),
        "client_id": str(uuid.uuid4()),
        "cloud": "simulator",
        "api_region": "",
        "credential_type": "certificate",
        "client_secret": "",
        "certificate": cert_pem,
        "private_key": key_pem,
        "fetch_interval_minutes": "60",
    }
    data.update(overrides)
    return data


def test_a_certificate_credential_is_stored_encrypted_and_never_shown(
    staff_client, sim, certificate_pair
):
    cert_pem, key_pem = certificate_pair
    response = staff_client.post(ADD_URL, certificate_form(cert_pem, key_pem))
    assert response.status_code == 302, response.content.decode()[:3000]
    tenant = Tenant.objects.get(slug="cert-co")
    assert tenant.private_key.reveal() == key_pem.strip()
    with connection.cursor() as cursor:
        cursor.execute("SELECT private_key FROM tenants_tenant WHERE id = %s", [tenant.pk])
        assert "PRIVATE KEY" not in cursor.fetchone()[0]
    # The expiry is read from the certificate.
    expected = x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc.date()
    assert tenant.credential_expires_at == expected
    change = staff_client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk]))
    html = change.content.decode()
    key_body = key_pem.splitlines()[1]
    assert key_body not in html
    certificate = x509.load_pem_x509_certificate(cert_pem.encode())
    thumbprint = certificate.fingerprint(hashes.SHA1())  # noqa: S303 - what Entra ID shows
    assert thumbprint.hex().upper() in html


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(staff_client, sim):
    cert_pem, _ = make_certificate()
    _, other_key = make_certificate()
    response = staff_client.post(ADD_URL, certificate_form(cert_pem, other_key))
    assert response.status_code == 200
    assert "does not belong to the certificate" in response.content.decode()
    assert not Tenant.objects.exists()


def test_text_that_is_not_a_certificate_is_refused(staff_client, sim, certificate_pair):
    response = staff_client.post(ADD_URL, certificate_form("hello", certificate_pair[1]))
    assert response.status_code == 200
    assert "This is not a PEM certificate" in response.content.decode()


def certificate_tenant(make_tenant, cert_pem: str, key_pem: str) -> Tenant:
    tenant = make_tenant(
        credential_type="certificate", client_secret="", certificate=cert_pem, private_key=key_pem
    )
    return Tenant.objects.get(pk=tenant.pk)


def test_msal_signs_in_with_the_certificate(sim, make_tenant, certificate_pair):
    cert_pem, key_pem = certificate_pair
    sim.register_certificate(cert_pem.encode())
    tenant = certificate_tenant(make_tenant, cert_pem, key_pem)
    score = defender.read_secure_score(Credential.from_tenant(tenant))
    assert score.value >= 0


def test_a_certificate_the_app_does_not_know_is_an_auth_error(sim, make_tenant):
    cert_pem, key_pem = make_certificate()  # never registered with the simulator
    tenant = certificate_tenant(make_tenant, cert_pem, key_pem)
    with pytest.raises(DefenderError) as caught:
        defender.read_secure_score(Credential.from_tenant(tenant))
    assert caught.value.kind == ErrorKind.AUTH
    assert "the certificate was refused" in str(caught.value)
    assert key_pem.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(
    ("days", "warning"),
    [
        (30, ""),
        (10, "expires on"),
        (-1, "expired on"),
    ],
)
def test_health_warns_two_weeks_before_the_credential_expires(
    staff_client, make_tenant, days, warning
):
    from django.utils import timezone

    tenant = make_tenant(credential_expires_at=timezone.now().date() + timedelta(days=days))
    text = tenant.credential_warning()
    if warning:
        assert warning in text
        assert "client secret" in text
    else:
        assert text == ""
    admin_html = staff_client.get(reverse("admin:tenants_tenant_changelist")).content.decode()
    overview_html = staff_client.get(reverse("overview")).content.decode()
    for html in (admin_html, overview_html):
        assert (warning in html) if warning else ("expire" not in html)
