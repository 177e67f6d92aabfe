"""Run the local Defender for Endpoint simulator until Ctrl+C or SIGTERM."""

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from scoreboard import simulator


class Command(BaseCommand):
    help = (
        "Serve a local HTTPS stand-in for Microsoft Defender for Endpoint and its Entra ID "
        "sign-in (client credentials), with a deterministic score per tenant and optional "
        "faults. Loopback only unless --allow-remote."
    )
    # The simulator needs nothing from the project's models: let it run even when they are
    # mid-change.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
        parser.add_argument("--port", type=int, default=8443, help="port, 0 = any free (8443)")
        parser.add_argument(
            "--cert-dir",
            type=Path,
            default=None,
            help="where the self-signed certificate lives (BASE_DIR/var/simulator)",
        )
        parser.add_argument(
            "--secret",
            default=simulator.DEFAULT_CLIENT_SECRET,
            help=f"the client secret the sign-in accepts ({simulator.DEFAULT_CLIENT_SECRET})",
        )
        parser.add_argument(
            "--fault",
            action="append",
            default=[],
            metavar="TENANT_ID=KIND",
            help=(
                "start with this fault for the tenant (repeatable; TENANT_ID * = every tenant). "
                f"Kinds: {', '.join(simulator.FAULT_KINDS)}"
            ),
        )
        parser.add_argument(
            "--allow-remote",
            action="store_true",
            help="allow a non-loopback --host (anyone who can reach it can sign in)",
        )
        parser.add_argument("--verbose", action="store_true", help="log each request to stderr")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        host: str = options["host"]
        if not simulator.is_loopback_host(host) and not options["allow_remote"]:
            raise CommandError(
                f"--host {host} is not a loopback address: the simulator accepts a well-known "
                "secret and must not be reachable from other machines. Use 127.0.0.1, ::1 or "
                "localhost, or pass --allow-remote if you really mean it."
            )
        if not 0 <= options["port"] <= 65535:
            raise CommandError(f"--port {options['port']} is not a port number (0-65535).")
        faults = [_parse_fault(spec) for spec in options["fault"]]
        cert_dir = options["cert_dir"] or Path(settings.BASE_DIR) / "var" / "simulator"
        sim = self._create(host, options, cert_dir)
        for tenant_id, kind in faults:
            sim.set_fault(tenant_id, kind)
        self._announce(sim, faults)
        self._serve(sim)

    def _create(self, host: str, options: dict[str, Any], cert_dir: Path) -> simulator.Simulator:
        try:
            return simulator.Simulator(
                host=host,
                port=options["port"],
                cert_dir=cert_dir,
                client_secret=options["secret"],
                verbose=options["verbose"],
            )
        except OSError as exc:
            raise CommandError(
                f"Cannot listen on {host}:{options['port']} (certificate in {cert_dir}): "
                f"{exc.strerror or exc}. Is another simulator already running? Pick another "
                "--port, or --port 0 for any free one."
            ) from None

    def _announce(self, sim: simulator.Simulator, faults: list[tuple[str, str]]) -> None:
        lines = [
            f"Defender simulator listening on {sim.url}",
            f"  certificate (CA file): {sim.cert_path}",
            f"  accepted client secret: {sim.client_secret}",
            *(f"  fault: {tenant_id} = {kind}" for tenant_id, kind in faults),
            "Point Scoreboard at it:",
            f"  export SCOREBOARD_SIMULATOR_URL={sim.url}",
            f"  export SCOREBOARD_CA_BUNDLE={sim.cert_path}",
            "Any tenant id and client id sign in with that secret. Faults at runtime: "
            f"PUT {sim.url}/_simulator/faults/<tenant_id> with a JSON body such as "
            '{"kind": "throttle", "count": 2}.',
            "Press Ctrl+C to stop.",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()  # when piped, whoever waits for the URL must not wait for a buffer

    def _serve(self, sim: simulator.Simulator) -> None:
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = _install_handlers(request_stop)
        try:
            sim.start()
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:  # no handler could be installed (not the main thread)
            pass
        finally:
            sim.stop()
            _restore_handlers(previous)
        self.stdout.write("Defender simulator stopped.")
        self.stdout.flush()


def _parse_fault(spec: str) -> tuple[str, str]:
    tenant_id, sep, kind = spec.partition("=")
    tenant_id, kind = tenant_id.strip(), kind.strip()
    if not sep or not tenant_id or not kind:
        raise CommandError(f"--fault {spec!r}: expected TENANT_ID=KIND, e.g. <tenant>=throttle.")
    if kind not in simulator.FAULT_KINDS:
        raise CommandError(
            f"--fault {spec!r}: unknown kind {kind!r}. Kinds: {', '.join(simulator.FAULT_KINDS)}"
        )
    return tenant_id, kind


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _install_handlers(handler: Any) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # signal handlers can only be set from the main thread
    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
