"""Thin Celery tasks: take ids, call scoreboard.fetching."""

import logging

from celery import shared_task
from django.utils import timezone

from scoreboard import fetching
from scoreboard.models import FetchAttempt

log = logging.getLogger(__name__)


@shared_task(name="scoreboard.tasks.dispatch_due_fetches")
def dispatch_due_fetches() -> int:
    return fetching.dispatch_due_fetches()


@shared_task(name="scoreboard.tasks.prune_fetch_attempts")
def prune_fetch_attempts() -> int:
    deleted = fetching.prune_attempts(now=timezone.now())
    log.info("pruned %d fetch attempt(s) past the retention period", deleted)
    return deleted


@shared_task(bind=True, name="scoreboard.tasks.fetch", max_retries=None)
def fetch(self, attempt_id: int) -> str:
    # The number of tries is bounded by the attempt row (SCOREBOARD_FETCH_MAX_TRIES),
    # not by Celery, so a redelivered task cannot reset the count.
    try:
        outcome = fetching.run_attempt(attempt_id=attempt_id)
    except FetchAttempt.DoesNotExist:
        log.warning("fetch attempt %s no longer exists (tenant deleted?); skipped", attempt_id)
        return "missing"
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.attempt.status
