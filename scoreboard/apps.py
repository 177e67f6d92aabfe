import logging

from django.apps import AppConfig
from django.conf import settings

log = logging.getLogger("scoreboard")


class ScoreboardConfig(AppConfig):
    name = "scoreboard"
    verbose_name = "Score history"

    def ready(self) -> None:
        if settings.SCOREBOARD_SIMULATOR_URL and not settings.DEBUG:
            # Every process says it at start (web, worker, beat): made-up scores in
            # a production history would be worse than none.
            log.warning(
                "SCOREBOARD_SIMULATOR_URL is set (%s): the simulator cloud is on and tenants "
                "on it read made-up scores. Unset it in production.",
                settings.SCOREBOARD_SIMULATOR_URL,
            )
