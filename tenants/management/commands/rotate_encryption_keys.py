"""Re-encrypt every stored secret under the newest key of SCOREBOARD_ENCRYPTION_KEYS."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants.crypto import SealedSecret, SecretUnreadable
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Re-encrypt every tenant secret under the first (newest) key in "
        "SCOREBOARD_ENCRYPTION_KEYS. Run it after putting a new key first; once it "
        "reports success the old keys can be removed from the list."
    )

    def handle(self, *args, **options) -> None:
        rotated = 0
        unreadable = []
        with transaction.atomic():
            for tenant in Tenant.objects.select_for_update().only("pk", "name", "client_secret"):
                sealed = tenant.client_secret
                if not isinstance(sealed, SealedSecret) or not sealed:
                    continue
                try:
                    tenant.client_secret = sealed.rotated()
                except SecretUnreadable:
                    unreadable.append(tenant.name)
                    continue
                tenant.save(update_fields=["client_secret"])
                rotated += 1
            if unreadable:
                # All or nothing: a half-rotated table would need the old key anyway.
                raise CommandError(
                    f"{len(unreadable)} secret(s) cannot be decrypted with any configured key "
                    f"({', '.join(unreadable[:10])}); nothing was changed. Add the key they were "
                    "encrypted with to SCOREBOARD_ENCRYPTION_KEYS (after the newest), or enter "
                    "those secrets again in admin, then run this again."
                )
        self.stdout.write(f"Re-encrypted {rotated} secret(s) under the newest key.")
