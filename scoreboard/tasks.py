"""Thin Celery tasks: take ids, call scoreboard.fetching."""

import logging
import random

from celery import shared_task
from django.db import DatabaseError, close_old_connections
from django.db.models import Min
from django.utils import timezone

from scoreboard import fetching, history
from scoreboard.models import DailyScore, FetchAttempt

log = logging.getLogger(__name__)

# A database that is away for a moment: retry with backoff, then leave the
# attempt open for the dispatcher's stall detection to pick up later.
DATABASE_RETRIES = 8
DATABASE_BACKOFF_CAP = 300.0


@shared_task(name="scoreboard.tasks.dispatch_due_fetches")
def dispatch_due_fetches() -> int:
    return fetching.dispatch_due_fetches()


@shared_task(name="scoreboard.tasks.fetch_batch")
def fetch_batch(attempt_ids: list[int]) -> int:
    # The dispatcher sends one of these per batch it claims, and the sending of
    # a fetch per attempt happens here, off the dispatcher's clock. Acknowledged
    # late like every task: a batch redelivered after its worker died sends some
    # fetches twice, which is harmless.
    return fetching.enqueue_each(attempt_ids=attempt_ids)


@shared_task(name="scoreboard.tasks.prune_fetch_attempts")
def prune_fetch_attempts() -> int:
    deleted = fetching.prune_attempts(now=timezone.now())
    log.info("pruned %d fetch attempt(s) past the retention period", deleted)
    return deleted


@shared_task(name="scoreboard.tasks.refresh_fleet_days")
def refresh_fleet_days() -> int:
    """Compute the fleet band's stale or missing closed days, up to yesterday."""
    first = DailyScore.objects.aggregate(first=Min("day"))["first"]
    if first is None:
        return 0
    refreshed = history.refresh_fleet_days(first=first, stop=timezone.now().date())
    if refreshed:
        log.info("computed the fleet band of %d day(s)", refreshed)
    return refreshed


@shared_task(bind=True, name="scoreboard.tasks.fetch", max_retries=None)
def fetch(self, attempt_id: int) -> str:
    # Tries against Microsoft are bounded by the attempt row
    # (SCOREBOARD_FETCH_MAX_TRIES), not by Celery, so a redelivered task cannot
    # reset the count.
    try:
        outcome = fetching.run_attempt(attempt_id=attempt_id)
    except FetchAttempt.DoesNotExist:
        log.warning("fetch attempt %s no longer exists (tenant deleted?); skipped", attempt_id)
        return "missing"
    except DatabaseError as error:
        # Every write of an attempt is one transaction, so nothing half-written
        # is left behind; drop the broken connection and try the task again.
        close_old_connections()
        if self.request.retries >= DATABASE_RETRIES:
            log.error("attempt %s: database still unavailable, giving up: %s", attempt_id, error)
            raise
        countdown = min(DATABASE_BACKOFF_CAP, 2.0 ** (self.request.retries + 1))
        log.warning("attempt %s: database unavailable (%s); retrying", attempt_id, error)
        raise self.retry(countdown=countdown * random.uniform(0.8, 1.2)) from error
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.attempt.status
