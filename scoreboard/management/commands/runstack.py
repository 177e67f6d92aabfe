"""Run the whole application in the foreground: web, worker, beat (and the simulator).

What `make run` and `make demo` start. Ctrl-C (or SIGTERM) stops every process
and waits for them; if one of them dies, the others are stopped too and the
command says which one failed.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from scoreboard import simulator

STOP_GRACE_SECONDS = 15


class Command(BaseCommand):
    help = (
        "Run web (gunicorn), Celery worker and beat together until Ctrl-C; "
        "--demo adds the simulator and the demo tenants."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--demo", action="store_true", help="start the simulator and demo tenants"
        )
        parser.add_argument("--bind", default="127.0.0.1:8000", help="web address (127.0.0.1:8000)")
        parser.add_argument("--simulator-port", type=int, default=8443)
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")

    def handle(
        self, *args, demo: bool, bind: str, simulator_port: int, concurrency: int, **options
    ):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            if demo:
                self._start_simulator(simulator_port)
                call_command("seed_demo", stdout=self.stdout)
            python = sys.executable
            bindir = Path(python).parent
            self._spawn(
                "web",
                [
                    str(bindir / "gunicorn"),
                    "scoreboard.wsgi",
                    "--bind",
                    bind,
                    "--workers",
                    "2",
                    "--threads",
                    "4",
                    "--access-logfile",
                    "-",
                ],
            )
            celery = [str(bindir / "celery"), "-A", "scoreboard"]
            self._spawn("worker", [*celery, "worker", "-l", "info", "-c", str(concurrency)])
            self._spawn("beat", [*celery, "beat", "-l", "info"])
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nScoreboard is running: http://{bind}/ (admin: http://{bind}/admin/). "
                    "Ctrl-C stops everything.\n"
                )
            )
            self._watch()
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, frame) -> None:
        self.stopping = True

    def _spawn(self, name: str, argv: list[str]) -> None:
        # Own process group: the terminal's Ctrl-C reaches us, and we stop the
        # children in order instead of all of them racing to exit.
        process = subprocess.Popen(argv, cwd=settings.BASE_DIR, start_new_session=True)  # noqa: S603
        self.children.append((name, process))

    def _start_simulator(self, port: int) -> None:
        url = settings.SCOREBOARD_SIMULATOR_URL
        if not url:
            raise CommandError("--demo needs SCOREBOARD_SIMULATOR_URL (make demo sets it).")
        cert_dir = settings.VAR_DIR / "simulator"
        cert, _key = simulator.ensure_certificate(cert_dir)
        self._spawn(
            "simulator",
            [
                sys.executable,
                "manage.py",
                "simulate_defender",
                "--port",
                str(port),
                "--cert-dir",
                str(cert_dir),
            ],
        )
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                session.get(f"{url}/_simulator/health", verify=str(cert), timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.3)
        raise CommandError(f"The simulator did not answer at {url} within 20 s.")

    def _watch(self) -> None:
        while not self.stopping:
            for name, process in self.children:
                code = process.poll()
                if code is not None:
                    raise CommandError(
                        f"The {name} process exited with status {code}; stopping the others. "
                        "Its output above says why."
                    )
            time.sleep(0.5)
        self.stdout.write("Stopping...")

    def _stop_all(self) -> None:
        # SIGTERM to each main process only: gunicorn and Celery stop their own
        # children in order (warm shutdown); the process group is killed only as a last resort.
        for _name, process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for name, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in {STOP_GRACE_SECONDS} s; killing it.")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self.children:
            self.stdout.write("Stopped.")
