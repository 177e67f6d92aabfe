"""Production: the Dockerfile, docker-compose.yml, .env.example and the settings they rely on.

There is no Docker engine here, so the compose file is read as data, its interpolation
is done the way Compose documents it, and the processes it describes (gunicorn, a
Celery worker and beat, migrate) are started as plain processes on this machine
against PostgreSQL and Redis, with its health checks run as written.
"""

import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import requests
import yaml
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connection

from scoreboard import defender, fetching
from scoreboard.models import Reading
from scoreboard.settings import longest_retry_countdown
from tests.processes import Processes, wait_for

BASE_DIR = Path(settings.BASE_DIR)
BIN = Path(sys.executable).parent
APP_SERVICES = ("migrate", "web", "worker", "beat")
LONG_RUNNING = ("postgres", "redis", "web", "worker", "beat")
# Blank in a child's environment, these hide whatever a developer's .env holds
# (settings read .env for what the environment lacks); blank means unset for each.
SHADOWED = ("SECRET_KEY", "SCOREBOARD_ENCRYPTION_KEYS", "ALLOWED_HOSTS", "DEBUG")


# --- Reading the files ------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())


def service(name: str) -> dict:
    return compose()["services"][name]


def example_env() -> dict[str, str]:
    """The assignments .env.example makes (its commented lines keep defaults)."""
    values = {}
    for line in (BASE_DIR / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def documented_names() -> set[str]:
    text = (BASE_DIR / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def names_read_by_the_code() -> set[str]:
    pattern = re.compile(
        r"""(?:env\.\w+|os\.environ\.get|os\.getenv)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
        r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
    )
    names = set()
    for folder in ("scoreboard", "tenants"):
        for path in (BASE_DIR / folder).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                names.add(match.group(1) or match.group(2))
    return names


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (BASE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_env() -> dict[str, str]:
    values = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def dockerfile_cmd() -> list[str]:
    return json.loads(next(rest for keyword, rest in dockerfile_instructions() if keyword == "CMD"))


# --- Compose interpolation, as the Compose specification describes it -------------


BARE_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(Exception):
    pass


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """`$$`, `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`,
    `${NAME?error}`, with nesting inside defaults."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, end = 1, i + 2
            while depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            out.append(_expression(text[i + 2 : end - 1], variables))
            i = end
        elif match := BARE_VARIABLE.match(text, i):
            out.append(variables.get(match.group(1), ""))
            i = match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _expression(expression: str, variables: Mapping[str, str]) -> str:
    name, operator, argument = re.fullmatch(
        r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?", expression, re.DOTALL
    ).groups()
    value = variables.get(name)
    missing = not value if operator and operator.startswith(":") else value is None
    if operator in (":-", "-"):
        return interpolate(argument, variables) if missing else value
    if operator in (":?", "?"):
        if missing:
            raise MissingVariable(f"{name}: {interpolate(argument, variables)}")
        return value
    return value or ""


def interpolated(node, variables: Mapping[str, str]):
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, variables) for key, value in node.items()}
    return node


def container_env(name: str, dotenv: Mapping[str, str]) -> dict[str, str]:
    """What a service's container gets: the image's ENV, then env_file (.env), then environment."""
    spec = interpolated(compose(), dotenv)["services"][name]
    env = dict(dockerfile_env())
    if spec.get("env_file") == ".env":
        env.update(dotenv)
    env.update({key: str(value) for key, value in (spec.get("environment") or {}).items()})
    return env


def production_dotenv(**overrides: str) -> dict[str, str]:
    """.env.example with its blanks filled in, as an operator would."""
    values = example_env()
    values.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        SCOREBOARD_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        POSTGRES_PASSWORD=secrets.token_hex(24),
    )
    values.update(overrides)
    return values


def run_manage(env: Mapping[str, str], *args: str, var_dir: Path) -> subprocess.CompletedProcess:
    child = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/")}
    child.update({name: "" for name in SHADOWED})
    child.update(env)
    # Not the image's /var/lib/scoreboard: nothing here may touch this machine's folders.
    child["SCOREBOARD_VAR_DIR"] = str(var_dir)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=child,
        capture_output=True,
        text=True,
        timeout=60,
    )


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(number) * units[unit] for number, unit in parts)


# --- The compose file -------------------------------------------------------------


def test_compose_runs_the_production_services():
    assert set(compose()["services"]) == {"postgres", "redis", "migrate", "web", "worker", "beat"}


def test_web_worker_and_beat_wait_for_migrate_and_healthy_stores():
    for name in ("web", "worker", "beat"):
        assert service(name)["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    assert service("migrate")["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert service("migrate")["command"] == ["python", "manage.py", "migrate", "--noinput"]


def test_services_restart_unless_stopped_and_migrate_runs_once():
    for name in LONG_RUNNING:
        assert service(name)["restart"] == "unless-stopped", name
    assert service("migrate")["restart"] == "no"


def test_app_services_take_their_settings_from_dot_env():
    for name in APP_SERVICES:
        assert service(name)["env_file"] == ".env", name
        assert service(name)["image"] == "scoreboard:latest", name
        assert service(name)["build"] == ".", name


def test_every_long_running_service_has_a_bounded_health_check():
    checks = {name: service(name)["healthcheck"] for name in LONG_RUNNING}
    for name, check in checks.items():
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert seconds(check["timeout"]) < seconds(check["interval"]), name
        assert check["retries"] >= 3, name
    assert "pg_isready" in checks["postgres"]["test"]
    assert "redis-cli ping" in checks["redis"]["test"][1]
    assert "http://localhost:8000/healthz" in " ".join(checks["web"]["test"])
    for name, node in (("worker", "celery"), ("beat", "celerybeat")):
        probe = checks[name]["test"][1]
        # $$ is Compose's escape: the container's shell expands $HOSTNAME.
        assert f"inspect ping --destination {node}@$$HOSTNAME --timeout 10" in probe, name
        # The probe's own timeout, plus starting Celery, fits in the check's timeout.
        assert seconds(checks[name]["timeout"]) >= 10 + 15, name
        assert f"--hostname={node}@%h" in service(name)["command"], name
    assert "--enable-remote-control" in service("beat")["command"]


def test_redis_never_evicts_and_keeps_queued_tasks_on_disk():
    command = " ".join(service("redis")["command"])
    assert "--maxmemory-policy noeviction" in command
    assert "--appendonly yes" in command
    assert "redis-data:/data" in service("redis")["volumes"]


def test_state_lives_in_named_volumes():
    declared = set(compose()["volumes"])
    assert declared == {"postgres-data", "redis-data", "beat-state"}
    for spec in compose()["services"].values():
        for volume in spec.get("volumes", []):
            assert volume.split(":")[0] in declared, volume
    assert "postgres-data:/var/lib/postgresql/data" in service("postgres")["volumes"]
    assert f"beat-state:{dockerfile_env()['SCOREBOARD_VAR_DIR']}" in service("beat")["volumes"]


def test_interpolation_points_the_app_at_the_bundled_database_and_redis():
    dotenv = {"POSTGRES_PASSWORD": "pw0", "ALLOWED_HOSTS": "scoreboard.example.com"}
    for name in APP_SERVICES:
        env = container_env(name, dotenv)
        assert env["DATABASE_URL"] == "postgres://scoreboard:pw0@postgres:5432/scoreboard"
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    postgres = interpolated(compose(), dotenv)["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"] == "pw0"
    # The web's own health check asks for localhost.
    assert container_env("web", dotenv)["ALLOWED_HOSTS"] == "scoreboard.example.com,localhost"
    assert container_env("worker", dotenv)["ALLOWED_HOSTS"] == "scoreboard.example.com"


def test_a_worker_on_another_host_uses_the_database_and_redis_its_env_names():
    dotenv = {
        "POSTGRES_PASSWORD": "pw0",
        "ALLOWED_HOSTS": "scoreboard.example.com",
        "DATABASE_URL": "postgres://scoreboard:pw0@10.0.0.5:5432/scoreboard",
        "CELERY_BROKER_URL": "redis://10.0.0.5:6379/0",
    }
    env = container_env("worker", dotenv)
    assert env["DATABASE_URL"] == "postgres://scoreboard:pw0@10.0.0.5:5432/scoreboard"
    assert env["CELERY_BROKER_URL"] == "redis://10.0.0.5:6379/0"


def test_compose_refuses_to_start_without_the_database_password():
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolated(compose(), {"ALLOWED_HOSTS": "scoreboard.example.com"})


def test_every_variable_passed_is_one_the_code_reads_and_every_one_is_documented():
    read = names_read_by_the_code()
    assert {"SECRET_KEY", "DATABASE_URL", "SCOREBOARD_ENCRYPTION_KEYS"} <= read
    compose_text = (BASE_DIR / "docker-compose.yml").read_text()
    interpolation_only = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text)) - read
    for name in APP_SERVICES:
        passed = set(service(name).get("environment") or {})
        assert passed <= read, f"{name} passes variables nothing reads: {passed - read}"
    documented = documented_names()
    assert documented - read <= interpolation_only, "in .env.example but read by nothing"
    assert interpolation_only <= set(example_env()), "compose needs it: .env.example must set it"
    assert read <= documented, f".env.example does not list {read - documented}"
    scoreboard_env = {name for name in dockerfile_env() if name.startswith("SCOREBOARD_")}
    assert scoreboard_env <= read


# --- The Dockerfile ---------------------------------------------------------------


def test_image_is_slim_python_311_with_pinned_requirements_and_a_non_root_user():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    assert "pip install -r requirements.txt" in runs
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    # Nothing runs as root after the switch, and the server is gunicorn.
    keywords = [keyword for keyword, _ in instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]
    command = dockerfile_cmd()
    assert command[:2] == ["gunicorn", "scoreboard.wsgi"]
    assert command[command.index("--bind") + 1] == "0.0.0.0:8000"
    for line in (BASE_DIR / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[\w.]+", line), line


def test_image_leaves_secrets_and_local_state_out():
    ignored = set((BASE_DIR / ".dockerignore").read_text().split())
    assert {".env", ".venv", "var", ".git", "staticfiles"} <= ignored
    for keyword, rest in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert "SECRET_KEY" not in rest
            assert "ENCRYPTION_KEYS" not in rest


def test_collectstatic_at_build_needs_no_secrets_from_outside(tmp_path):
    """The Dockerfile's collectstatic line, run as written (dry), in a bare environment."""
    build = next(
        rest
        for keyword, rest in dockerfile_instructions()
        if keyword == "RUN" and "collectstatic" in rest
    )
    env = {**dockerfile_env(), "SCOREBOARD_VAR_DIR": str(tmp_path)}
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        **{name: "" for name in SHADOWED},
        **env,
    }
    done = subprocess.run(
        ["sh", "-c", f"{build} --dry-run"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# --- Settings with DEBUG off --------------------------------------------------------


def test_check_deploy_is_clean_with_the_production_values(tmp_path):
    env = container_env("web", production_dotenv())
    done = run_manage(env, "check", "--deploy", "--fail-level", "WARNING", var_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert "WARNING" not in done.stdout + done.stderr


def test_the_readme_key_commands_make_values_production_accepts(tmp_path):
    readme = (BASE_DIR / "README.md").read_text()
    section = readme[readme.index("## Production with docker compose") :]
    section = section[: section.index("\n## ")]
    made = {}
    for command, name in re.findall(r"^ *python3 (-c '[^']*') +# (\w+)$", section, re.MULTILINE):
        done = subprocess.run(
            [sys.executable, *shlex.split(command)], capture_output=True, text=True, check=True
        )
        made[name] = done.stdout.strip()
    assert set(made) == {"SECRET_KEY", "SCOREBOARD_ENCRYPTION_KEYS", "POSTGRES_PASSWORD"}
    # It goes into DATABASE_URL as it is.
    assert re.fullmatch(r"[A-Za-z0-9]+", made["POSTGRES_PASSWORD"])
    env = container_env("web", production_dotenv(**made))
    done = run_manage(env, "check", "--deploy", "--fail-level", "WARNING", var_dir=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["SECRET_KEY", "ALLOWED_HOSTS", "SCOREBOARD_ENCRYPTION_KEYS"])
def test_debug_off_refuses_to_start_without(name, tmp_path):
    env = {**container_env("worker", production_dotenv()), name: ""}
    done = run_manage(env, "check", var_dir=tmp_path)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"django.core.exceptions.ImproperlyConfigured: {name} is ")


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("", "sqlite3"),  # a blank line in .env: the embedded default
        ("mysql://scoreboard:pw0@db/scoreboard", None),
        ("nonsense", None),
    ],
)
def test_database_url_is_postgresql_sqlite_or_unset(url, engine, tmp_path):
    done = run_manage(
        {
            "DEBUG": "true",
            "SCOREBOARD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "DATABASE_URL": url,
        },
        "shell",
        "--verbosity=0",
        "-c",
        "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])",
        var_dir=tmp_path,
    )
    if engine:
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"django.db.backends.{engine}"
    else:
        assert done.returncode != 0
        last_line = done.stderr.strip().splitlines()[-1]
        assert "ImproperlyConfigured: DATABASE_URL starts with" in last_line
        assert "Scoreboard runs on PostgreSQL or SQLite" in last_line
        assert "pw0" not in done.stderr


def test_debug_on_serves_localhost_without_allowed_hosts(tmp_path):
    done = run_manage(
        {"DEBUG": "true", "SCOREBOARD_ENCRYPTION_KEYS": Fernet.generate_key().decode()},
        "shell",
        "--verbosity=0",
        "-c",
        "from django.conf import settings; print(settings.ALLOWED_HOSTS)",
        var_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['localhost', '127.0.0.1', '[::1]']"


def test_the_env_make_run_writes_starts_with_debug_off(tmp_path):
    target = tmp_path / ".env"
    subprocess.run([sys.executable, "scripts/init_env.py", str(target)], cwd=BASE_DIR, check=True)
    written = {}
    for line in target.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            written[name] = value
    done = run_manage(written, "check", var_dir=tmp_path)
    assert done.returncode == 0, done.stderr


# --- Celery settings ----------------------------------------------------------------


def test_celery_is_json_only_acks_late_one_at_a_time_and_time_limited():
    assert settings.CELERY_ACCEPT_CONTENT == ["json"]
    assert settings.CELERY_TASK_SERIALIZER == "json"
    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    five_calls = 5 * (
        settings.SCOREBOARD_HTTP_CONNECT_TIMEOUT + settings.SCOREBOARD_HTTP_READ_TIMEOUT
    )
    assert five_calls < settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.CELERY_TASK_TIME_LIMIT


@pytest.mark.parametrize(
    ("max_tries", "base_seconds", "max_retry_after"),
    [(4, 30.0, 600), (1, 30.0, 600), (10, 60.0, 600), (3, 5.0, 7200), (2, 1.0, 0)],
)
def test_longest_retry_countdown_bounds_every_retry_delay(
    settings, monkeypatch, max_tries, base_seconds, max_retry_after
):
    settings.SCOREBOARD_FETCH_MAX_TRIES = max_tries
    settings.SCOREBOARD_RETRY_BASE_SECONDS = base_seconds
    settings.SCOREBOARD_MAX_RETRY_AFTER = max_retry_after
    # The most jitter the delay can have.
    monkeypatch.setattr(fetching.random, "uniform", lambda low, high: high)
    errors = [
        defender.DefenderError(defender.ErrorKind.TRANSIENT, "down"),
        defender.DefenderError(
            defender.ErrorKind.THROTTLED, "slow down", retry_after=max_retry_after
        ),
        defender.DefenderError(defender.ErrorKind.THROTTLED, "no Retry-After"),
    ]
    delays = [
        fetching.retry_delay(error=error, tries=tries)
        for error in errors
        for tries in range(1, max_tries + 1)
    ]
    longest = max((delay for delay in delays if delay is not None), default=0.0)
    bound = longest_retry_countdown(
        max_tries=max_tries, base_seconds=base_seconds, max_retry_after=max_retry_after
    )
    assert longest <= bound < longest + 60


def celery_settings(var_dir: Path, **env: str) -> dict:
    script = (
        "import json; from django.conf import settings as s; print(json.dumps({"
        "'visibility': s.CELERY_BROKER_TRANSPORT_OPTIONS.get('visibility_timeout'), "
        "'hard': s.CELERY_TASK_TIME_LIMIT}))"
    )
    base = container_env("worker", production_dotenv())
    done = run_manage({**base, **env}, "shell", "--verbosity=0", "-c", script, var_dir=var_dir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("env", "longest"),
    [
        ({}, 605),
        ({"SCOREBOARD_MAX_RETRY_AFTER": "7200"}, 7205),
        ({"SCOREBOARD_FETCH_MAX_TRIES": "12", "SCOREBOARD_RETRY_BASE_SECONDS": "30"}, 38400),
    ],
)
def test_redis_visibility_timeout_outlasts_the_longest_retry_and_its_run(env, longest, tmp_path):
    values = celery_settings(tmp_path, **env)
    assert values["visibility"] > longest + values["hard"]


def test_dispatch_expires_before_the_next_one_is_due(tmp_path):
    script = (
        "from scoreboard.celery import app; "
        "entry = app.conf.beat_schedule['dispatch-due-fetches']; "
        "print(entry['schedule'], entry['options']['expires'])"
    )
    base = container_env("worker", production_dotenv())
    for interval in ("10", "60", "3600"):
        env = {**base, "SCOREBOARD_DISPATCH_INTERVAL_SECONDS": interval}
        done = run_manage(env, "shell", "--verbosity=0", "-c", script, var_dir=tmp_path)
        assert done.returncode == 0, done.stderr
        schedule, expires = (float(word) for word in done.stdout.split())
        assert 0 < expires < schedule == float(interval)


# --- The process set, for real ------------------------------------------------------


def database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{db['USER']}{password}@" if db.get("USER") else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Stack(Processes):
    """The compose services as local processes; `stop()` ends every one."""

    def __init__(self, logs: Path) -> None:
        super().__init__(env={}, logs=logs)

    @staticmethod
    def local(argv: list[str]) -> list[str]:
        # The image has the virtualenv's commands on PATH; here they are in BIN.
        head = str(BIN / argv[0]) if (BIN / argv[0]).exists() else argv[0]
        return [sys.executable if argv[0] == "python" else head, *argv[1:]]

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.spawn(name, self.local(argv), env)

    def check(self, test: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        """A compose health check, run as Docker would run it."""
        kind, *argv = test
        if kind == "CMD-SHELL":
            argv = ["sh", "-c", argv[0].replace("$$", "$")]
        return subprocess.run(
            self.local(argv), cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
        )


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        yield running
    finally:
        running.stop()
        connection.close()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_compose_services_fetch_a_reading_and_answer_healthy(sim, make_tenant, stack, tmp_path):
    if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip(
            "the compose stack runs on PostgreSQL and Redis: set DATABASE_URL=postgres://... "
            "and CELERY_BROKER_URL=redis://... (as .ci/run does)"
        )
    tenant = make_tenant(name="Compose Co")
    host = f"scoreboard-{uuid.uuid4().hex[:8]}"  # the container's host name, unique per run
    port = free_port()
    var_dir = tmp_path / "var"  # the image's /var/lib/scoreboard
    var_dir.mkdir()
    dotenv = production_dotenv(
        # The test process must read the secret the worker decrypts.
        SCOREBOARD_ENCRYPTION_KEYS=",".join(settings.SCOREBOARD_ENCRYPTION_KEYS),
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        SCOREBOARD_SIMULATOR_URL=sim.url,
        SCOREBOARD_CA_BUNDLE=str(sim.cert_path),
        # Beat dispatches at start; a short interval also survives a shared broker.
        SCOREBOARD_DISPATCH_INTERVAL_SECONDS="5",
    )
    os_env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # The image's user has the state folder as home (gunicorn keeps a socket there).
        "HOME": str(var_dir),
        "HOSTNAME": host,
        **{name: "" for name in SHADOWED},
    }

    def env_of(name: str) -> dict[str, str]:
        return {**os_env, **container_env(name, dotenv), "SCOREBOARD_VAR_DIR": str(var_dir)}

    def here(argv: list[str]) -> list[str]:
        return [
            arg.replace("%h", host).replace("0.0.0.0:8000", f"127.0.0.1:{port}") for arg in argv
        ]

    migrate = stack.check(["CMD", *service("migrate")["command"]], env_of("migrate"))
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    stack.start("web", here(dockerfile_cmd()), env_of("web"))
    stack.start("worker", here(service("worker")["command"]), env_of("worker"))
    stack.start("beat", here(service("beat")["command"]), env_of("beat"))

    wait_for(
        lambda: Reading.objects.filter(tenant=tenant).exists(),
        timeout=90,
        processes=stack,
        what="a reading from the simulator",
    )
    reading = Reading.objects.get(tenant=tenant)
    assert reading.value > 0

    # What the reverse proxy sends: the public host name and the scheme it served.
    proxy = requests.Session()
    proxy.trust_env = False
    origin = f"http://127.0.0.1:{port}"
    public = {"Host": dotenv["ALLOWED_HOSTS"].split(",")[0], "X-Forwarded-Proto": "https"}

    def healthy() -> bool:
        try:
            return proxy.get(f"{origin}/healthz", headers=public, timeout=10).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, timeout=90, processes=stack, what="/healthz to answer 200")
    health = proxy.get(f"{origin}/healthz", headers=public, timeout=10)
    assert health.json() == {"ok": True, "database": "ok", "broker": "ok", "dispatcher": "ok"}
    page = proxy.get(f"{origin}/", headers=public, timeout=10, allow_redirects=False)
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/accounts/login/")
    assert "max-age=" in page.headers["Strict-Transport-Security"]
    plain = proxy.get(f"{origin}/", headers={"Host": public["Host"]}, allow_redirects=False)
    assert plain.status_code == 301
    assert plain.headers["Location"] == f"https://{public['Host']}/"

    # Every health check compose runs, as written, against these processes.
    web_check = [
        arg.replace("localhost:8000", f"localhost:{port}")
        for arg in service("web")["healthcheck"]["test"]
    ]
    checks = {
        "web": web_check,
        "worker": service("worker")["healthcheck"]["test"],
        "beat": service("beat")["healthcheck"]["test"],
        "postgres": service("postgres")["healthcheck"]["test"],
        "redis": service("redis")["healthcheck"]["test"],
    }
    for name, test in checks.items():
        done = stack.check(test, env_of(name if name in APP_SERVICES else "worker"))
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}\n{stack.output()}"

    logs = stack.output()
    assert "Traceback" not in logs
    assert dotenv["SECRET_KEY"] not in logs
