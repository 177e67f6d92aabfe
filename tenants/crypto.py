"""Secrets encrypted at rest with SCOREBOARD_ENCRYPTION_KEYS (MultiFernet).

The database column holds Fernet tokens. Loading a row never decrypts: the
field gives a `SealedSecret`, which prints as a mask and is opened only by
`reveal()` at the moment a credential is needed. A row encrypted under a key
that is no longer configured fails there with `SecretUnreadable`, so the
ciphertext can never be mistaken for the secret.
"""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with the configured keys."""


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.SCOREBOARD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


class SealedSecret:
    """An encrypted secret as loaded from the database."""

    __slots__ = ("ciphertext",)

    def __init__(self, ciphertext: str) -> None:
        self.ciphertext = ciphertext

    def reveal(self) -> str:
        if not self.ciphertext:
            return ""
        try:
            return fernet().decrypt(self.ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "the stored secret cannot be decrypted with SCOREBOARD_ENCRYPTION_KEYS: the key "
                "it was encrypted with is not configured. Put that key back in the list (after "
                "the newest), or enter the secret again in admin"
            ) from None

    def rotated(self) -> "SealedSecret":
        """The same secret encrypted under the newest key."""
        try:
            return SealedSecret(fernet().rotate(self.ciphertext.encode()).decode())
        except InvalidToken:
            raise SecretUnreadable(
                "a stored secret cannot be decrypted with any configured key"
            ) from None

    def __bool__(self) -> bool:
        return bool(self.ciphertext)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SealedSecret) and other.ciphertext == self.ciphertext

    def __hash__(self) -> int:
        return hash(self.ciphertext)

    def __str__(self) -> str:
        return "********" if self.ciphertext else ""

    def __repr__(self) -> str:
        return "<SealedSecret ********>"


class EncryptedTextField(models.TextField):
    """Stores a str encrypted; reads back a SealedSecret.

    Assign a plain str to set a new secret; assign the SealedSecret you read to
    keep the stored one.
    """

    def from_db_value(self, value, expression, connection) -> SealedSecret:
        return SealedSecret(value or "")

    def to_python(self, value) -> SealedSecret | str:
        if value is None:
            return SealedSecret("")
        return value

    def get_prep_value(self, value) -> str:
        if isinstance(value, SealedSecret):
            return value.ciphertext
        if not value:
            return ""
        return encrypt(str(value))

    def value_to_string(self, obj) -> str:
        # Serialisation (dumpdata) keeps the ciphertext, never the secret.
        value = self.value_from_object(obj)
        return value.ciphertext if isinstance(value, SealedSecret) else self.get_prep_value(value)
