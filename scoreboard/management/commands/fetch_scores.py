"""Fetch scores in this process, without a broker: for cron users and for debugging."""

import time

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from scoreboard import fetching
from scoreboard.models import FetchAttempt
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Fetch the secure score of the due tenants (default), of every enabled tenant "
        "(--all) or of one tenant (--tenant SLUG), in this process. Prints one line per "
        "tenant; exits with status 1 if any fetch failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--tenant", metavar="SLUG", help="fetch this tenant only")
        group.add_argument("--all", action="store_true", help="fetch every enabled tenant now")

    def handle(self, *args, tenant: str | None = None, all: bool = False, **options) -> None:
        attempts = self._attempts(slug=tenant, everyone=all)
        if not attempts:
            self.stdout.write("No tenant is due. Use --all to fetch every enabled tenant now.")
            return
        width = max(len(attempt.tenant.slug) for attempt in attempts)
        failures = 0
        for attempt in attempts:
            outcome = self._run(attempt, width)
            if outcome.score is not None:
                measured = outcome.score.measured_at.strftime("%Y-%m-%d %H:%M:%S UTC")
                self.stdout.write(
                    f"{attempt.tenant.slug:<{width}}  ok      {outcome.score.value:g}  "
                    f"(measured {measured})"
                )
            elif outcome.ok:
                self.stdout.write(f"{attempt.tenant.slug:<{width}}  ok      (already fetched)")
            else:
                failures += 1
                self.stdout.write(
                    f"{attempt.tenant.slug:<{width}}  FAILED  {outcome.error.kind}: {outcome.error}"
                )
        if failures:
            raise CommandError(f"{failures} of {len(attempts)} fetch(es) failed.", returncode=1)

    def _attempts(self, *, slug: str | None, everyone: bool) -> list[FetchAttempt]:
        if slug:
            try:
                chosen = Tenant.objects.get(slug=slug)
            except Tenant.DoesNotExist:
                known = ", ".join(Tenant.objects.values_list("slug", flat=True)[:20]) or "none"
                raise CommandError(f"No tenant with slug {slug!r}. Known slugs: {known}.") from None
            return [self._create(chosen)]
        if everyone:
            return [self._create(t) for t in Tenant.objects.filter(enabled=True).order_by("name")]
        now = timezone.now()
        due = fetching.due_tenant_ids(now=now)
        claimed = []
        for start in range(0, len(due), fetching.DISPATCH_BATCH):
            attempt_ids = fetching.claim(
                tenant_ids=due[start : start + fetching.DISPATCH_BATCH],
                now=now,
                trigger=FetchAttempt.Trigger.COMMAND,
            )
            attempts = FetchAttempt.objects.filter(pk__in=attempt_ids).select_related("tenant")
            claimed += attempts.order_by("scheduled_for", "tenant__name")
        return claimed

    def _create(self, tenant: Tenant) -> FetchAttempt:
        return FetchAttempt.objects.create(
            tenant=tenant, scheduled_for=timezone.now(), trigger=FetchAttempt.Trigger.COMMAND
        )

    def _run(self, attempt: FetchAttempt, width: int) -> fetching.Outcome:
        while True:
            outcome = fetching.run_attempt(attempt_id=attempt.pk)
            if outcome.retry_in is None:
                return outcome
            self.stderr.write(
                f"{attempt.tenant.slug:<{width}}  retry   in {outcome.retry_in:.0f} s "
                f"({outcome.error.kind}: {outcome.error})"
            )
            time.sleep(outcome.retry_in)
