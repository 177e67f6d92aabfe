"""Thin Celery tasks: take ids, call scoreboard.fetching."""

from celery import shared_task

from scoreboard import fetching


@shared_task(name="scoreboard.tasks.dispatch_due_fetches")
def dispatch_due_fetches() -> int:
    return fetching.dispatch_due_fetches()


@shared_task(bind=True, name="scoreboard.tasks.fetch", max_retries=None)
def fetch(self, attempt_id: int) -> str:
    # The number of tries is bounded by the attempt row (SCOREBOARD_FETCH_MAX_TRIES),
    # not by Celery, so a redelivered task cannot reset the count.
    outcome = fetching.run_attempt(attempt_id=attempt_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.attempt.status
