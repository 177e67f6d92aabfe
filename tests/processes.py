"""Real Celery worker and beat processes for tests, on the test database."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

BASE_DIR = Path(settings.BASE_DIR)
CELERY = str(Path(sys.executable).parent / "celery")


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def child_env(sim, var_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a production-like child process pointed at the simulator."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "SCOREBOARD_RETRY_BASE_SECONDS")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="scoreboard.settings",
        DEBUG="false",
        SECRET_KEY=os.environ["SECRET_KEY"],
        SCOREBOARD_ENCRYPTION_KEYS=",".join(settings.SCOREBOARD_ENCRYPTION_KEYS),
        DATABASE_URL=database_url(),
        SCOREBOARD_SIMULATOR_URL=sim.url,
        SCOREBOARD_CA_BUNDLE=str(sim.cert_path),
        SCOREBOARD_VAR_DIR=str(var_dir),
        SCOREBOARD_DISPATCH_INTERVAL_SECONDS="1",
        SCOREBOARD_RETRY_BASE_SECONDS="1",
    )
    env.update(overrides)
    return env


class Processes:
    """Celery processes started by a test; `stop()` always ends them."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen]] = []

    def purge(self) -> None:
        # Tasks left in a shared broker by an earlier run would only add noise.
        subprocess.run(
            [CELERY, "-A", "scoreboard", "purge", "-f"],
            cwd=BASE_DIR,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start a process in its own session, its output in `<logs>/<name>.log`."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            argv,
            cwd=BASE_DIR,
            env=self.env if env is None else env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.running.append((name, process))
        return process

    def start(self, name: str, *args: str) -> subprocess.Popen:
        return self.spawn(name, [CELERY, "-A", "scoreboard", *args])

    def worker(self, name: str = "worker", concurrency: int = 2) -> subprocess.Popen:
        return self.start(
            name,
            "worker",
            "-l",
            "info",
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
        )

    def beat(self, name: str = "beat") -> subprocess.Popen:
        schedule = self.logs / f"{name}-schedule"
        return self.start(name, "beat", "-l", "info", "-s", str(schedule))

    def output(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + (self.logs / f"{name}.log").read_text()[-4000:]
            for name in dict(self.running)
        )

    def stop(self) -> None:
        for _, process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.running:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_for(condition, *, timeout: float, processes: Processes, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    pytest.fail(
        f"timed out after {timeout} s waiting for {what or condition}\n{processes.output()}"
    )
