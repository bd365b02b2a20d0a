"""The audit export: runs with their events as NDJSON, in constant memory for any size.

One JSON object per line, each with a ``record`` field::

    {"record": "export", "format": 1, "generated_at": "...", "filters": {...}}
    {"record": "run", "run": {...the run, as GET /runs/ID shows it...}}
    {"record": "event", "event": {"id": 1, "run_id": "...", "type": "run.queued", "time": "...", "data": {...}}}
    ...every event of that run, in order, then the next run...
    {"record": "end", "runs": 2, "events": 17}

Runs come oldest first.  The last line says how many runs and events were
written, so a reader can tell a complete export from a cut one (an HTTP
stream cannot change its status once it has started).

Memory stays flat: runs are read by keyset pagination on their sequence
number and each run's events by keyset on the event id, a bounded page at a
time, on the generator's own connection.  Every page is fetched completely
before anything is yielded, so no read transaction is held while the client
reads (a long export never pins the WAL).  A run pruned while the export runs
may appear with fewer events, or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BadRequest
from ..models import Event, RunStatus, iso, parse_iso
from .backend import Store
from .queries import RUN_COLUMNS, run_from_row

FORMAT = 1
PARAMETERS = ("since", "until", "status", "job")
RUN_PAGE = 200
EVENT_PAGE = 500
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExportFilter:
    """Which runs to export: created in ``[since, until)``, with one of ``statuses``, of ``job``."""

    since: float | None = None
    until: float | None = None
    statuses: tuple[str, ...] = ()
    job: str | None = None
    source: str | None = None

    @classmethod
    def parse(cls, params: Mapping[str, str | None]) -> ExportFilter:
        """Validate query parameters (or CLI options); a bad one is a 400 that names it."""
        unknown = sorted(k for k in params if k not in PARAMETERS)
        if unknown:
            raise BadRequest(f"unknown export parameter(s): {', '.join(unknown)} (allowed: {', '.join(PARAMETERS)})")
        since = _time(params, "since")
        until = _time(params, "until")
        if since is not None and until is not None and until <= since:
            raise BadRequest("'until' must be later than 'since'")
        statuses: tuple[str, ...] = ()
        raw = params.get("status")
        if raw:
            statuses = tuple(s.strip() for s in raw.split(","))
            valid = [s.value for s in RunStatus]
            bad = [s for s in statuses if s not in valid]
            if bad:
                raise BadRequest(
                    f"'status' must be one or more (comma-separated) of {', '.join(valid)}; got {', '.join(map(repr, bad))}"
                )
        job, source = params.get("job") or None, None
        if job is not None:
            if len(job) > 256 or any(ord(c) < 32 for c in job):
                raise BadRequest("'job' must be a job name or SOURCE:NAME")
            if ":" in job:
                source, _, job = job.partition(":")
                if not source or not job:
                    raise BadRequest("'job' must be a job name or SOURCE:NAME")
        return cls(since, until, statuses, job, source)

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out["since"], out["until"] = iso(self.since), iso(self.until)
        out["statuses"] = list(self.statuses)
        return out

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["seq > ?"], []
        if self.since is not None:
            clauses.append("created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("created_at < ?")
            params.append(self.until)
        if self.statuses:
            clauses.append(f"status IN ({','.join('?' * len(self.statuses))})")
            params.extend(self.statuses)
        if self.job is not None:
            clauses.append("job = ?")
            params.append(self.job)
        if self.source is not None:
            clauses.append("source = ?")
            params.append(self.source)
        return " AND ".join(clauses), params


def _time(params: Mapping[str, str | None], name: str) -> float | None:
    raw = params.get(name)
    if raw in (None, ""):
        return None
    try:
        return parse_iso(str(raw))
    except ValueError:
        raise BadRequest(
            f"{name!r} must be an ISO 8601 time such as 2026-01-31T12:00:00Z; got {str(raw)[:64]!r}"
        ) from None


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def export_lines(
    store: Store, filters: ExportFilter, *, run_page: int = RUN_PAGE, event_page: int = EVENT_PAGE
) -> Iterator[bytes]:
    """Yield the export in chunks of about ``CHUNK_BYTES``; see the module docstring."""
    conn: sqlite3.Connection | None = None
    try:
        conn = store.connect()  # the generator's own, closed in its own ``finally``
        where, params = filters.where()
        yield _line(
            {"record": "export", "format": FORMAT, "generated_at": iso(time.time()), "filters": filters.describe()}
        )
        buffer: list[bytes] = []
        size = 0
        runs = events = 0
        last_seq = 0
        while True:
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS}, seq FROM runs WHERE {where} ORDER BY seq LIMIT ?", (last_seq, *params, run_page)
            ).fetchall()
            for row in rows:
                run = run_from_row(row)
                buffer.append(_line({"record": "run", "run": run.to_dict()}))
                runs += 1
                after = 0
                while True:
                    page: list[Event] = store.events_after(after, run.id, event_page, conn=conn)
                    for event in page:
                        text = f'{{"record":"event","event":{event.to_json()}}}\n'.encode()
                        buffer.append(text)
                        size += len(text)
                    events += len(page)
                    if size >= CHUNK_BYTES:
                        yield b"".join(buffer)
                        buffer, size = [], 0
                    if len(page) < event_page:
                        break
                    after = page[-1].id
            if len(rows) < run_page:
                break
            last_seq = rows[-1][14]
        buffer.append(_line({"record": "end", "runs": runs, "events": events}))
        yield b"".join(buffer)
    finally:
        if conn is not None:
            conn.close()
