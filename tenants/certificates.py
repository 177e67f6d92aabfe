"""Certificate credentials: read the PEM an admin pastes, and check the key belongs to it."""

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization


def load(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ValueError(
            "This is not a PEM certificate: paste the text from -----BEGIN CERTIFICATE----- "
            "to -----END CERTIFICATE-----."
        ) from None


def check_key(certificate: x509.Certificate, pem: str) -> None:
    """Raise ValueError unless `pem` is the unencrypted private key of `certificate`."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise ValueError(
            "This private key is protected by a password: export it without one "
            "(it is stored encrypted here)."
        ) from None
    except ValueError:
        raise ValueError(
            "This is not a PEM private key: paste the text from -----BEGIN PRIVATE KEY----- "
            "to -----END PRIVATE KEY-----."
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise ValueError("This private key does not belong to the certificate above.")


def thumbprint(certificate: x509.Certificate) -> str:
    """The SHA-1 thumbprint in upper-case hex, as the app registration lists it."""
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - an identifier
