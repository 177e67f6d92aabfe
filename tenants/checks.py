"""Start-up check: the configured keys can read the stored secrets.

Runs with `manage.py check` and before `migrate`, which every start path runs
first (`make run`, `make demo`, compose's migrate service), so a wrong key
stops the deployment there instead of failing every fetch later.
"""

from django.core.checks import Error, register
from django.db import DatabaseError

SAMPLE = 20


@register("scoreboard")
def stored_secrets_are_readable(app_configs=None, **kwargs) -> list[Error]:
    from tenants.crypto import SecretUnreadable
    from tenants.models import Tenant

    try:
        rows = list(
            Tenant.objects.exclude(client_secret="", private_key="").only(
                "name", "client_secret", "private_key"
            )[:SAMPLE]
        )
    except DatabaseError:
        return []  # no database or no table yet: nothing stored to check
    unreadable = []
    for tenant in rows:
        for sealed in (tenant.client_secret, tenant.private_key):
            try:
                sealed.reveal()
            except SecretUnreadable:
                unreadable.append(tenant.name)
                break
    if not unreadable:
        return []
    return [
        Error(
            f"SCOREBOARD_ENCRYPTION_KEYS cannot decrypt the stored secret of "
            f"{', '.join(unreadable[:5])}{' and others' if len(unreadable) > 5 else ''}.",
            hint="The key they were encrypted with is missing: put it back in "
            "SCOREBOARD_ENCRYPTION_KEYS (after the newest key). If it is lost, enter those "
            "secrets again in admin.",
            id="scoreboard.E001",
        )
    ]
