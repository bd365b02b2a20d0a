"""``scripts/bench``: start flwd and webhook on loopback, measure, print the table, write JSON.

Each figure starts the servers it needs, fresh, in the bench's temp dir and
stops them when it is done, so one figure's leftovers (queued runs, a warm
cache, thousands of stored events) never flatter or burden the next one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import (
    fig_dashboard,
    fig_fanout,
    fig_first_output,
    fig_idle,
    fig_multinode,
    fig_queue,
    fig_runs,
    fig_streams,
    fig_throughput,
)
from .harness import FlwdServer, Workspace
from .jobsrc import write_bench_source
from .report import Row, combine, machine, table

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Figure:
    title: str
    measure: Callable[[Context], tuple[list[Row], dict[str, Any]]]
    # Repetitions without --repeat: a noisy figure gets more; a long one (PostgreSQL, the
    # browser) fewer, so that a full run stays within about 20 minutes (docs/performance.rst).
    repeat: int = 3


FIGURES: dict[int, Figure] = {
    1: Figure("completed runs/s: flwd vs the stack's limit vs webhook", fig_runs.measure),
    2: Figure("POST /runs -> first output line on SSE", fig_first_output.measure),
    3: Figure("SSE fan-out to many clients", fig_fanout.measure),
    4: Figure("output throughput", fig_throughput.measure, repeat=5),
    5: Figure("idle memory and GET /jobs", fig_idle.measure),
    6: Figure("runs/s on PostgreSQL: 1, 2 and 3 nodes, and the database's cost per run", fig_multinode.measure, 2),
    7: Figure("the dashboard in a browser: first paint, live list, a million lines", fig_dashboard.measure, 1),
    8: Figure("1,000 event streams on default settings, and the API meanwhile", fig_streams.measure, 2),
    9: Figure("the queue: claims and queue positions with 10,000 and 100,000 queued", fig_queue.measure, 1),
}


@dataclass(frozen=True)
class Options:
    quick: bool = False
    only: tuple[int, ...] = tuple(FIGURES)
    json_path: Path = Path("bench-results.json")
    flwd_workers: int | None = None
    flwd_threads: int | None = None
    clients: int = 16
    duration: int = 10
    fanout_clients: int = 1000
    keep: bool = False
    repeat: int | None = None  # None: each figure's own default (Figure.repeat); --quick: 1
    py_spy: Path | None = None

    def repetitions(self, figure: Figure) -> int:
        if self.repeat is not None:
            return self.repeat
        return 1 if self.quick else figure.repeat

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


@dataclass
class Context:
    """What every figure gets: the workspace, the options and a way to start flwd."""

    ws: Workspace
    opts: Options
    python: str = sys.executable
    bench_source: dict[str, str] = field(default_factory=dict)

    def flwd(self, name: str, *, sources: list[dict[str, str]] | None = None, **config: Any) -> FlwdServer:
        """A fresh flwd with the bench's own job source (plus ``sources``) and flwd's defaults
        for anything the figure does not set; ``--flwd-workers/--flwd-threads`` win."""
        settings: dict[str, Any] = {"workers": 2, "threads": 32, **config}
        if self.opts.flwd_workers:
            settings["workers"] = self.opts.flwd_workers
        if self.opts.flwd_threads:
            settings["threads"] = self.opts.flwd_threads
        settings["sources"] = [self.bench_source, *(sources or [])]
        return FlwdServer(self.ws, name, self.python, settings).start()


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts and shorter windows: a smoke run, not figures to quote"
    )
    parser.add_argument(
        "--only", default=",".join(map(str, FIGURES)), help="figures to measure, e.g. 1,3 (default: all)"
    )
    parser.add_argument(
        "--json",
        dest="json_path",
        default="bench-results.json",
        help="where to write the results as JSON (default: %(default)s)",
    )
    parser.add_argument(
        "--flwd-workers",
        type=int,
        help="gunicorn workers of every flwd started (default: 2, flwd's default; figure 6: 1 per node)",
    )
    parser.add_argument(
        "--flwd-threads",
        type=int,
        help="threads per worker of every flwd started (default: 32; figure 3: fan-out clients + 24)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=16,
        help="figures 1 and 6: concurrent client connections, the same for every server (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=int, help="figures 1 and 6: seconds of load per server (default: 10, --quick: 3)"
    )
    parser.add_argument("--fanout-clients", type=int, help="figure 3: SSE clients (default: 1000, --quick: 100)")
    parser.add_argument(
        "--repeat",
        type=int,
        help="measure each figure N times and report the median with min-max "
        "(default: 3; figure 4: 5; figure 6: 2; figure 7: 1; --quick: 1)",
    )
    parser.add_argument(
        "--py-spy",
        dest="py_spy",
        metavar="DIR",
        help="figure 1: record a py-spy profile of each flwd worker under the load into DIR "
        "(needs py-spy on PATH or in .venv, and ptrace rights)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp dir (server logs, configs) for a look afterwards"
    )
    ns = parser.parse_args(argv)
    try:
        only = tuple(sorted({int(x) for x in ns.only.split(",") if x.strip()}))
    except ValueError:
        parser.error(f"--only: expected figure numbers like 1,3, got {ns.only!r}")
    unknown = [n for n in only if n not in FIGURES]
    if unknown or not only:
        parser.error(f"--only: figures are {', '.join(map(str, FIGURES))}; got {ns.only!r}")
    for name in ("flwd_workers", "flwd_threads", "duration", "fanout_clients", "repeat"):
        value = getattr(ns, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')}: must be at least 1")
    if ns.clients < 1:
        parser.error("--clients: must be at least 1")
    return Options(
        quick=ns.quick,
        only=only,
        json_path=Path(ns.json_path),
        flwd_workers=ns.flwd_workers,
        flwd_threads=ns.flwd_threads,
        clients=ns.clients,
        duration=ns.duration or (3 if ns.quick else 10),
        fanout_clients=ns.fanout_clients or (100 if ns.quick else 1000),
        keep=ns.keep,
        repeat=ns.repeat,
        py_spy=Path(ns.py_spy).resolve() if ns.py_spy else None,
    )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_open_files_limit() -> None:
    """1,000 SSE clients need more than the common soft limit of 1,024 descriptors (servers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_repeatedly(ctx: Context, number: int, figure: Figure) -> tuple[list[Row], dict[str, Any]]:
    """Measure ``figure`` as often as asked; its rows are the medians (report.combine).

    The details are the first good repetition's (so readers of one run's details keep
    working) plus ``repetitions``: every good repetition's details in order.  A repetition
    that fails does not end the figure, and is not hidden either: the table gets an
    ``ERROR`` row saying how many failed and why, the details an ``error`` (the bench then
    exits 1), and the medians are of the repetitions that worked (``n`` says how many)."""
    count = ctx.opts.repetitions(figure)
    all_rows: list[list[Row]] = []
    all_details: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    for i in range(count):
        log(f"figure {number}: {figure.title} ..." + (f" ({i + 1} of {count})" if count > 1 else ""))
        try:
            figure_rows, figure_details = figure.measure(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            log(f"figure {number} failed: {exc}")
            failures.append({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
            continue
        all_rows.append(figure_rows)
        all_details.append(figure_details)
    details: dict[str, Any] = {**(all_details[0] if all_details else {}), "repeat": count, "repetitions": all_details}
    rows = combine(all_rows)
    if failures:
        error = failures[0]["error"]
        what = figure.title if count == 1 else f"{figure.title}: {len(failures)} of {count} repetitions failed"
        rows.append(Row(number, what, None, error=error))
        details.update(error=error, traceback=failures[0]["traceback"], failures=failures)
    return rows, details


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "scripts/bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    # Also SIGINT: a shell starts background jobs with it ignored, and Python keeps it so.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    _raise_open_files_limit()
    started = dt.datetime.now(dt.UTC)
    info = machine(REPO)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    errors = 0
    interrupted = False
    ws = Workspace(keep=opts.keep)
    log(f"temp dir {ws.root}; figures {', '.join(map(str, opts.only))}{' (quick)' if opts.quick else ''}")
    try:
        ctx = Context(ws, opts, bench_source=write_bench_source(ws.path("bench-source")))
        for number in opts.only:
            figure = FIGURES[number]
            began = time.monotonic()
            figure_rows, figure_details = measure_repeatedly(ctx, number, figure)
            if "error" in figure_details:
                errors += 1
            figure_details["seconds"] = round(time.monotonic() - began, 1)
            rows += figure_rows
            details[str(number)] = figure_details
            log(f"figure {number} done in {figure_details['seconds']} s")
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping servers and removing the temp dir")
    finally:
        ws.close()
    info["load_average_after"] = os.getloadavg()
    result = {
        "schema": 1,
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": opts.quick,
        "interrupted": interrupted,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()},
        "machine": info,
        "rows": [row.to_dict() for row in rows],
        "figures": details,
    }
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nflwd bench, {started:%Y-%m-%d %H:%M} UTC, {info['cpus']} CPUs ({info['cpu_model']}), load {info['load_average'][0]:.1f}, commit {info['commit']}"
    )
    print(f"command: {command}{'  [QUICK: smoke figures, not for quoting]' if opts.quick else ''}")
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    print(f"each value: the median of its repetitions; spread: min-max (count); {seconds / 60:.1f} minutes\n")
    print(table(rows))
    for row in rows:
        if row.error:
            print(f"figure {row.figure}: {row.error}")
    print(f"\nJSON: {opts.json_path}")
    if interrupted:
        return 130
    return 1 if errors else 0
