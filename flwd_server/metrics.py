"""Prometheus metrics that are exact across every worker process.

Three sources, each chosen so that a scrape of *any* worker gives the same
answer:

* **State in the database** is read at scrape time: runs kept in history by
  job and status, queue depth, running runs, the age of the oldest queued run.
* **Cumulative counters and histograms** (runs submitted and finished, run
  and step durations, policy decisions, profile downgrades, source syncs) are
  a fold over the event log.  Every such fact is already an event
  (``run.queued``, ``run.finished``, ``step.finished``, ``policy.decision``,
  ``source.synced`` ...), whichever process or code path wrote it (a runner,
  a cancel, the lost-run sweep, a rejection at submit, a CLI's local run).
  :func:`fold` adds the events after a cursor to ``metric_totals`` and moves
  the cursor in the same write transaction, so each event is counted exactly
  once.  It runs at every scrape and before every prune (pruned events are
  counted first), so totals never go down.  A partial index on the
  non-output events keeps this cheap: an insert of a ``step.output`` row
  costs nothing extra (a trigger would cost 20-50% of insert throughput).
* **Per-process gauges** (open SSE streams) are written by each process into
  ``process_gauges`` under its owner id (``host:pid:starttime``) whenever they
  change; a scrape sums the rows of live owners and drops the others.

The events-written counter is the events table's id sequence (SQLite's
``AUTOINCREMENT`` counter, PostgreSQL's sequence): every event id ever handed
out, pruned or not.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .store import Store
from .store.owners import owner_id, owner_is_dead
from .store.queries import SET_META

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
SSE_CLIENTS = "sse_clients"
CURSOR_KEY = "metrics_cursor"
FOLD_BATCH = 2000

_UPSERT = (
    "INSERT INTO metric_totals(name, labels, value) VALUES (?, ?, ?) "
    "ON CONFLICT(name, labels) DO UPDATE SET value = metric_totals.value + excluded.value"
)


def _le_label(le: float) -> str:
    return "+Inf" if math.isinf(le) else repr(float(le))


class _Deltas:
    """Increments gathered by one fold, written with one upsert each."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], float] = defaultdict(float)

    def inc(self, name: str, labels: dict[str, Any], value: float = 1.0) -> None:
        self.values[(name, json.dumps(labels, ensure_ascii=False))] += value

    def observe(self, family: str, labels: dict[str, Any], seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        for le in (*DURATION_BUCKETS, math.inf):
            if seconds <= le:  # buckets are stored cumulative, as they are exposed
                self.inc(family + "_bucket", {**labels, "le": _le_label(le)})
        self.inc(family + "_sum", labels, seconds)


def fold(conn: sqlite3.Connection) -> int:
    """Add the events written since the last fold to ``metric_totals``; returns how many were read.

    Call inside a write transaction: the totals and the cursor move together.
    """
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CURSOR_KEY,)).fetchone()
    cursor = int(row[0]) if row else 0
    seen = 0
    runs: dict[str | None, tuple[str, str, float | None, float | None]] = {}

    def run_of(run_id: str | None) -> tuple[str, str, float | None, float | None]:
        if run_id not in runs:
            if len(runs) > 10000:
                runs.clear()
            found = conn.execute(
                "SELECT source, job, started_at, finished_at FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            runs[run_id] = (found[0], found[1], found[2], found[3]) if found else ("", "", None, None)
        return runs[run_id]

    while True:
        rows = conn.execute(
            "SELECT id, run_id, type, data FROM events INDEXED BY events_counted WHERE type <> 'step.output' AND id > ? ORDER BY id LIMIT ?",
            (cursor, FOLD_BATCH),
        ).fetchall()
        if not rows:
            break
        deltas = _Deltas()
        for _id, run_id, kind, raw in rows:
            if kind == "run.queued":
                source, job, _, _ = run_of(run_id)
                deltas.inc("flwd_runs_submitted_total", {"source": source, "job": job})
            elif kind == "run.finished":
                source, job, started, finished = run_of(run_id)
                data = json.loads(raw)
                deltas.inc("flwd_runs_finished_total", {"source": source, "job": job, "status": data.get("status", "")})
                if started is not None and finished is not None:
                    deltas.observe("flwd_run_duration_seconds", {"source": source, "job": job}, finished - started)
            elif kind == "step.finished":
                data = json.loads(raw)
                if isinstance(data.get("duration"), (int, float)):
                    source, job, _, _ = run_of(run_id)
                    deltas.observe("flwd_step_duration_seconds", {"source": source, "job": job}, data["duration"])
            elif kind == "policy.decision":
                data = json.loads(raw)
                deltas.inc(
                    "flwd_policy_decisions_total", {"check": data.get("check", ""), "outcome": data.get("outcome", "")}
                )
            elif kind == "policy.profile_downgrade":
                data = json.loads(raw)
                deltas.inc("flwd_profile_downgrades_total", {"granted": "true" if data.get("granted") else "false"})
            elif kind in ("source.synced", "source.failed"):
                data = json.loads(raw)
                name = "flwd_source_syncs_total" if kind == "source.synced" else "flwd_source_sync_failures_total"
                deltas.inc(name, {"source": data.get("source") or data.get("name") or ""})
        conn.executemany(_UPSERT, [(name, labels, value) for (name, labels), value in deltas.values.items()])
        cursor = rows[-1][0]
        seen += len(rows)
        if len(rows) < FOLD_BATCH:
            break
    if seen:
        conn.execute(SET_META, (CURSOR_KEY, str(cursor)))
    return seen


def install(store: Store) -> None:
    """Count pruned events before they go (the metric tables are in the store's schema)."""
    store.add_prune_listener(fold)


# -- the exposition format ------------------------------------------------------


@dataclass
class Family:
    """One metric family: name, type, help, and samples ``(name, labels, value)``."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)


def _escape(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def render(families: Iterable[Family]) -> str:
    """Prometheus text exposition format 0.0.4."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        out.append(f"# TYPE {family.name} {family.type}")
        for name, labels, value in family.samples:
            if labels:
                body = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
                out.append(f"{name}{{{body}}} {_number(value)}")
            else:
                out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


# -- collection -----------------------------------------------------------------

COUNTERS = {
    "flwd_runs_submitted_total": "Runs submitted (queued or rejected at once), by source and job.",
    "flwd_runs_finished_total": "Runs that ended, by source, job and final status.",
    "flwd_policy_decisions_total": "Policy decisions recorded for runs, by check and outcome.",
    "flwd_profile_downgrades_total": "Requests for a less strict profile, by whether they were granted.",
    "flwd_source_syncs_total": "Successful source syncs, by source.",
    "flwd_source_sync_failures_total": "Failed source syncs, by source.",
}
HISTOGRAMS = {
    "flwd_run_duration_seconds": "Time from a run's start to its end, by source and job.",
    "flwd_step_duration_seconds": "Duration of finished steps, by source and job.",
}


class Metrics:
    """Collects every metric family from the database; per-process gauges are published here."""

    def __init__(self, store: Store, max_run_history: int | None = None) -> None:
        self.store = store
        self.max_run_history = max_run_history
        self._gauges: dict[str, float] = {}
        self._lock = threading.Lock()
        self._owner: tuple[int, str] | None = None

    def owner(self) -> str:
        pid = os.getpid()
        if self._owner is None or self._owner[0] != pid:
            self._owner = (pid, owner_id(pid))
            self._gauges = {}
        return self._owner[1]

    def set_process_gauge(self, name: str, value: float) -> None:
        """Record this process's value; the writer stores the newest value without making the caller wait."""
        owner = self.owner()
        with self._lock:
            self._gauges[name] = value

        def op(conn: sqlite3.Connection) -> None:
            with self._lock:
                current = self._gauges.get(name, 0.0)
            conn.execute(
                "INSERT INTO process_gauges(owner, name, value, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(owner, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (owner, name, current, time.time()),
            )

        self.store.write_later(op)

    def collect(self) -> list[Family]:
        self.store.write(fold)
        conn = self.store.reader()
        families = [
            Family("flwd_build_info", "gauge", "flwd's version.", [("flwd_build_info", {"version": __version__}, 1)])
        ]
        families += self._state(conn)
        families += self._totals(conn)
        families += self._process_gauges(conn)
        return families

    def exposition(self) -> str:
        return render(self.collect())

    def _state(self, conn: sqlite3.Connection) -> list[Family]:
        runs = Family("flwd_runs", "gauge", "Runs kept in history (limits.max_run_history), by source, job and status.")
        for source, job, status, count in conn.execute(
            "SELECT source, job, status, count(*) FROM runs GROUP BY source, job, status ORDER BY 1, 2, 3"
        ):
            runs.samples.append(("flwd_runs", {"source": source, "job": job, "status": status}, count))
        queued, oldest = conn.execute("SELECT count(*), min(created_at) FROM runs WHERE status = 'queued'").fetchone()
        running = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
        families = [
            runs,
            Family("flwd_queue_depth", "gauge", "Runs waiting for a free slot.", [("flwd_queue_depth", {}, queued)]),
            Family(
                "flwd_runs_running",
                "gauge",
                "Runs executing now, across all processes.",
                [("flwd_runs_running", {}, running)],
            ),
            Family(
                "flwd_oldest_queued_run_age_seconds",
                "gauge",
                "How long the oldest queued run has waited (0 when none waits).",
                [("flwd_oldest_queued_run_age_seconds", {}, max(0.0, time.time() - oldest) if oldest else 0.0)],
            ),
            Family(
                "flwd_events_written_total",
                "counter",
                "Events committed to the event store since it was created.",
                [("flwd_events_written_total", {}, self.store.events_sequence())],
            ),
        ]
        if self.max_run_history is not None:
            families.append(
                Family(
                    "flwd_run_history_limit",
                    "gauge",
                    "Finished runs kept (limits.max_run_history).",
                    [("flwd_run_history_limit", {}, self.max_run_history)],
                )
            )
        return families

    def _totals(self, conn: sqlite3.Connection) -> list[Family]:
        rows: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for name, labels, value in conn.execute("SELECT name, labels, value FROM metric_totals ORDER BY name, labels"):
            rows.setdefault(name, []).append((json.loads(labels), value))
        families = []
        for name, help_text in COUNTERS.items():
            families.append(
                Family(name, "counter", help_text, [(name, labels, value) for labels, value in rows.get(name, [])])
            )
        for name, help_text in HISTOGRAMS.items():
            families.append(
                self._histogram(name, help_text, rows.get(name + "_bucket", []), rows.get(name + "_sum", []))
            )
        return families

    @staticmethod
    def _histogram(
        name: str, help_text: str, buckets: list[tuple[dict[str, Any], float]], sums: list[tuple[dict[str, Any], float]]
    ) -> Family:
        groups: dict[str, dict[str, float]] = {}
        keys: dict[str, dict[str, Any]] = {}
        for labels, value in buckets:
            base = {k: v for k, v in labels.items() if k != "le"}
            key = json.dumps(base, sort_keys=True)
            keys[key] = base
            groups.setdefault(key, {})[labels["le"]] = value
        totals = {json.dumps(labels, sort_keys=True): value for labels, value in sums}
        family = Family(name, "histogram", help_text)
        for key in sorted(groups):
            counts = groups[key]
            base = keys[key]
            running = 0.0
            for le in [*DURATION_BUCKETS, math.inf]:
                # Every bucket a duration fell under was counted, so counts are already cumulative;
                # a bucket no observation reached is missing and takes the value of the one below.
                running = max(running, counts.get(_le_label(le), 0.0))
                family.samples.append((name + "_bucket", {**base, "le": _le_label(le)}, running))
            family.samples.append((name + "_sum", base, totals.get(key, 0.0)))
            family.samples.append((name + "_count", base, counts.get("+Inf", 0.0)))
        return family

    def _process_gauges(self, conn: sqlite3.Connection) -> list[Family]:
        owners = {row[0]: row[1:] for row in conn.execute("SELECT owner, host, pid, heartbeat_at FROM owners")}
        me = self.owner()
        live, dead = 0, []
        total = 0.0
        for owner, name, value in conn.execute("SELECT owner, name, value FROM process_gauges").fetchall():
            host, pid, beat = owners.get(owner, ("", 0, None))
            if owner_is_dead(owner, host, pid, beat, me=me):
                dead.append(owner)
                continue
            if name == SSE_CLIENTS:
                total += value
        for owner, (host, pid, beat) in owners.items():
            if not owner_is_dead(owner, host, pid, beat, me=me):
                live += 1
        if dead:
            stale = sorted(set(dead))
            self.store.write_later(
                lambda c: c.executemany("DELETE FROM process_gauges WHERE owner = ?", [(o,) for o in stale])
            )
        return [
            Family(
                "flwd_sse_clients",
                "gauge",
                "Event streams open now, across all worker processes.",
                [("flwd_sse_clients", {}, total)],
            ),
            Family(
                "flwd_processes",
                "gauge",
                "Live flwd processes sharing this database (server workers, local CLI runs).",
                [("flwd_processes", {}, live)],
            ),
        ]
