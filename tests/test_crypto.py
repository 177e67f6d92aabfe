"""Secrets at rest: encrypted, unreadable without the key, never shown."""

import pytest
from cryptography.fernet import Fernet

from scoreboard.defender import Credential, DefenderError, ErrorKind
from tenants.crypto import SealedSecret, SecretUnreadable
from tenants.models import Tenant

OTHER_KEY = Fernet.generate_key().decode()


def test_a_sealed_secret_prints_as_a_mask(make_tenant):
    tenant = Tenant.objects.get(pk=make_tenant(client_secret="s3cr3t-value").pk)
    assert isinstance(tenant.client_secret, SealedSecret)
    assert "s3cr3t-value" not in str(tenant.client_secret)
    assert "s3cr3t-value" not in repr(tenant.client_secret)
    assert "s3cr3t-value" not in repr(tenant.__dict__)
    assert tenant.client_secret.reveal() == "s3cr3t-value"


def test_a_wrong_key_raises_a_clear_error_instead_of_returning_ciphertext(
    make_tenant, settings, sim
):
    tenant = make_tenant(client_secret="s3cr3t-value")
    settings.SCOREBOARD_ENCRYPTION_KEYS = [OTHER_KEY]
    tenant = Tenant.objects.get(pk=tenant.pk)  # loading never decrypts, so this works
    with pytest.raises(SecretUnreadable, match="SCOREBOARD_ENCRYPTION_KEYS"):
        tenant.client_secret.reveal()
    with pytest.raises(DefenderError) as caught:
        Credential.from_tenant(tenant)
    assert caught.value.kind == ErrorKind.CONFIG
    assert "enter the secret again in admin" in str(caught.value)


def test_the_old_key_after_a_new_one_still_decrypts_and_rotates(make_tenant, settings):
    tenant = make_tenant(client_secret="s3cr3t-value")
    old = settings.SCOREBOARD_ENCRYPTION_KEYS[0]
    settings.SCOREBOARD_ENCRYPTION_KEYS = [OTHER_KEY, old]
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.client_secret.reveal() == "s3cr3t-value"
    tenant.client_secret = tenant.client_secret.rotated()
    tenant.save()
    settings.SCOREBOARD_ENCRYPTION_KEYS = [OTHER_KEY]
    assert Tenant.objects.get(pk=tenant.pk).client_secret.reveal() == "s3cr3t-value"


def test_a_missing_secret_is_a_config_error(make_tenant, sim):
    tenant = make_tenant(client_secret="")
    with pytest.raises(DefenderError, match="no client secret is stored"):
        Credential.from_tenant(Tenant.objects.get(pk=tenant.pk))


def test_rotate_encryption_keys_re_encrypts_every_secret(make_tenant, settings):
    import io

    from django.core.management import call_command

    old = settings.SCOREBOARD_ENCRYPTION_KEYS[0]
    tenants = [make_tenant(client_secret=f"secret-{n}") for n in range(3)]
    settings.SCOREBOARD_ENCRYPTION_KEYS = [OTHER_KEY, old]
    out = io.StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert out.getvalue().strip() == "Re-encrypted 3 secret(s) under the newest key."
    settings.SCOREBOARD_ENCRYPTION_KEYS = [OTHER_KEY]  # the old key is gone
    for n, tenant in enumerate(tenants):
        assert Tenant.objects.get(pk=tenant.pk).client_secret.reveal() == f"secret-{n}"


def test_rotation_with_an_unreadable_secret_changes_nothing(make_tenant, settings):
    from django.core.management import CommandError, call_command

    orphan = make_tenant(name="Lost Key Co", client_secret="under-a-key-now-gone")
    settings.SCOREBOARD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    current = make_tenant(name="Current Co", client_secret="under-the-current-key")
    before = {t.pk: Tenant.objects.get(pk=t.pk).client_secret.ciphertext for t in (orphan, current)}
    with pytest.raises(CommandError, match=r"1 secret\(s\) cannot be decrypted.*Lost Key Co"):
        call_command("rotate_encryption_keys")
    for pk, ciphertext in before.items():
        assert Tenant.objects.get(pk=pk).client_secret.ciphertext == ciphertext


def test_a_wrong_key_stops_the_start_with_a_clear_message(make_tenant, settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    make_tenant(name="Contoso", client_secret="s3cr3t-value")
    call_command("check")  # the right key: no error
    settings.SCOREBOARD_ENCRYPTION_KEYS = [OTHER_KEY]
    with pytest.raises(SystemCheckError, match=r"cannot decrypt the stored secret of Contoso"):
        call_command("check")
