"""Create the first admin account, once."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = (
        "Create a superuser if none exists. The password comes from "
        "SCOREBOARD_ADMIN_PASSWORD, or is generated and printed once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default=os.environ.get("SCOREBOARD_ADMIN_USER", "admin"))

    def handle(self, *args, username: str, **options) -> None:
        users = get_user_model()
        if users.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "An admin account exists already (its password was printed when it was "
                f"created; reset it with: manage.py changepassword {username})."
            )
            return
        password = os.environ.get("SCOREBOARD_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=password)
        if os.environ.get("SCOREBOARD_ADMIN_PASSWORD"):
            self.stdout.write(f"Created admin account {username!r} with SCOREBOARD_ADMIN_PASSWORD.")
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"Created admin account {username!r} with password: {password}\n"
                    "It is shown this once; note it now."
                )
            )
