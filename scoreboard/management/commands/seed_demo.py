"""Add the demo tenants (simulator cloud) and backfill their history."""

import uuid
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from scoreboard import simulator
from scoreboard.models import Metric, Reading
from tenants import clouds
from tenants.models import Tenant

# Fixed ids so the demo shows the same series on every machine.
DEMO_NAMESPACE = uuid.UUID("5c0eb0a2-6d1f-4b7e-9a57-0d3c1f2e8b41")
DEMO_TENANTS = [
    ("Contoso", "contoso"),
    ("Fabrikam", "fabrikam"),
    ("Northwind Traders", "northwind"),
]
BATCH = 2000


class Command(BaseCommand):
    help = (
        "Add three demo tenants on the simulator cloud and backfill their hourly history "
        "from the simulator's score series. Safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=180, help="days of history (180)")
        parser.add_argument(
            "--secret", default=simulator.DEFAULT_CLIENT_SECRET, help="client secret to store"
        )

    def handle(self, *args, days: int, secret: str, **options) -> None:
        if not clouds.simulator_enabled():
            raise CommandError(
                "SCOREBOARD_SIMULATOR_URL is not set: the demo tenants live on the simulator "
                "cloud. `make demo` sets it; by hand, start `manage.py simulate_defender` and "
                "export the URL and SCOREBOARD_CA_BUNDLE it prints."
            )
        if days < 0 or days > 3650:
            raise CommandError("--days must be between 0 and 3650.")
        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        for name, slug in DEMO_TENANTS:
            tenant, created = Tenant.objects.get_or_create(
                slug=slug,
                defaults={
                    "name": name,
                    "tenant_id": uuid.uuid5(DEMO_NAMESPACE, slug),
                    "client_id": uuid.uuid5(DEMO_NAMESPACE, f"{slug}-app"),
                    "client_secret": secret,
                    "cloud": clouds.SIMULATOR,
                    "next_fetch_at": timezone.now(),
                },
            )
            added = self._backfill(tenant, now=now, days=days)
            state = "added" if created else "exists"
            self.stdout.write(f"{tenant.name:<20} {state}; {added} historic readings added")

    def _backfill(self, tenant: Tenant, *, now, days: int) -> int:
        start = now - timedelta(days=days)
        # Backfill only the hours before the tenant's oldest reading, so a rerun adds nothing.
        oldest = (
            Reading.objects.filter(tenant=tenant, metric=Metric.SECURE_SCORE)
            .order_by("measured_at")
            .values_list("measured_at", flat=True)
            .first()
        )
        end = min(now, oldest) if oldest else now
        tenant_id = str(tenant.tenant_id)
        hours = int((end - start).total_seconds() // 3600)
        rows = [
            Reading(
                tenant=tenant,
                metric=Metric.SECURE_SCORE,
                value=simulator.score_at(tenant_id, start + timedelta(hours=h)),
                measured_at=start + timedelta(hours=h),
                fetched_at=start + timedelta(hours=h),
            )
            for h in range(hours)
        ]
        with transaction.atomic():
            Reading.objects.bulk_create(rows, batch_size=BATCH)
        if rows:
            last = rows[-1]
            Tenant.objects.filter(pk=tenant.pk, last_measured_at__isnull=True).update(
                last_score=last.value, last_measured_at=last.measured_at
            )
        return len(rows)
