"""Measure Scoreboard at MSSP scale: see scoreboard/bench.py and docs/benchmarks.md."""

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from scoreboard import bench


class Command(BaseCommand):
    help = (
        "Generate (or reuse) a data set of TENANTS x DAYS x PER-DAY readings, then time the "
        "overview, a tenant page, the fleet chart, the CSV export, a fetch cycle and the "
        "dispatcher, each beside the database's own time for the same answer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenants", type=int, default=1000, help="tenants (1000)")
        parser.add_argument("--days", type=int, default=730, help="days of history (730)")
        parser.add_argument("--per-day", type=int, default=24, help="readings a day (24)")
        parser.add_argument(
            "--fetch-tenants", type=int, default=1000, help="fetches in the fetch cycle (1000)"
        )
        parser.add_argument("--fetch-threads", type=int, default=50, help="fetches at once (50)")
        parser.add_argument(
            "--fetch-delay", type=float, default=0.25, help="simulator answer time, s (0.25)"
        )
        parser.add_argument(
            "--dispatch-tenants", type=int, default=10_000, help="due tenants to dispatch (10000)"
        )
        parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (5)")
        parser.add_argument(
            "--export-runs", type=int, default=3, help="timed runs of the full export (3)"
        )
        parser.add_argument(
            "--only",
            action="append",
            choices=bench.FIGURE_GROUPS,
            help="measure only these figures (repeatable)",
        )
        parser.add_argument("--regenerate", action="store_true", help="make the data set again")
        parser.add_argument("--generate-only", action="store_true", help="make the data, stop")
        parser.add_argument("--json", type=Path, help="also write the figures to this file")

    def handle(self, *args: Any, **options: Any) -> None:
        # Measure what production runs: no query log, no template debugging.
        settings.DEBUG = False
        size = bench.Size(options["tenants"], options["days"], options["per_day"])
        if min(size.tenants, size.days, size.per_day) < 1 or 86400 % size.per_day:
            raise CommandError(
                "--tenants and --days must be positive; --per-day must divide 86400."
            )
        if options["regenerate"] or not bench.data_present(size):
            self.stderr.write(f"generating {size.readings:,} readings...")
            bench.generate(size, now=timezone.now(), out=self.stderr)
        else:
            self.stderr.write(f"reusing the {size.readings:,} readings already there")
        if options["generate_only"]:
            return
        figures = bench.run(
            size=size,
            groups=options["only"] or list(bench.FIGURE_GROUPS),
            runs=options["runs"],
            export_runs=options["export_runs"],
            fetch=bench.FetchCycle(
                attempts=options["fetch_tenants"],
                threads=options["fetch_threads"],
                delay=options["fetch_delay"],
            ),
            dispatch_tenants=options["dispatch_tenants"],
            out=self.stderr,
        )
        self.stdout.write(bench.table(figures, size=size))
        if options["json"]:
            bench.write_json(figures, options["json"], size=size)
            self.stderr.write(f"figures written to {options['json']}")
