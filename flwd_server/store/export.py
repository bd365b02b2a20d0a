"""The audit export: runs with their events as NDJSON, in constant memory for any size.

One JSON object per line, each with a ``record`` field::

    {"record": "export", "format": 4, "generated_at": "...", "filters": {...}, "runless_hash": "...", ...}
    {"record": "event", "hash": "...", "ts": 1764756000.5, "event": {"id": 1, "run_id": null, ...}}
    {"record": "run", "hash": "...", "run": {...the run, as GET /runs/ID shows it, its "outputs" included...}}
    {"record": "event", "hash": "...", "ts": ..., "event": {"id": 2, "run_id": "...", "type": "run.queued", ...}}
    ...every event of that run, in order...
    {"record": "artifact", "artifact": {"run_id": "...", "path": "report.txt", "size": 15, "sha256": "..."}}
    ...every artifact of that run, by path, then the next run...
    {"record": "finished", "run_id": "...", "run_hash": "...", "hash": "..."}
    ...the chain of finished runs (unfiltered exports)...
    {"record": "end", "runs": 2, "events": 17, "artifacts": 1}

Runs come oldest first.  Events without a run (``source.synced``,
``source.failed``, a refused downgrade) are part of the audit trail too: in id
order, each before the first run queued after it (format 2; format 1 left them
out; format 3 added the ``artifact`` records and their count; format 4 the audit trail's
hashes, :mod:`.chain`).  ``since``/``until`` apply to their time and ``source`` to the source
their data names; ``status`` and ``job`` leave them out (they have neither).  The last line says how many runs and events were
written, so a reader can tell a complete export from a cut one (an HTTP
stream cannot change its status once it has started).

Memory stays flat: runs are read by keyset pagination on their sequence
number and each run's events by keyset on the event id, a bounded page at a
time, on the generator's own connection.  Every page is fetched completely
before anything is yielded, so no read transaction is held while the client
reads (a long export never pins the WAL).  Retention does not prune while an
export runs (:func:`export_lines`), so no run goes missing between the header
and its lines; a client that stops reading for ``HOLD_SECONDS`` lets it resume.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import BadRequest, FlwdError
from ..models import Event, RunStatus, iso, parse_iso
from .backend import Store
from .deliveries import callback_views
from .event_filter import DATA_SOURCE_SQL, SYNTAX
from .queries import EXPORT_HOLD, RUN_COLUMNS, RUN_WIDTH, SET_META, run_from_row

FORMAT = 4
PARAMETERS = ("since", "until", "status", "job", "source")
LAST_ID = 2**63 - 1
RUN_PAGE = 200
EVENT_PAGE = 500
CHUNK_BYTES = 64 * 1024
HOLD_SECONDS = 60.0  # retention waits this long after an export's last chunk went out (or its start)


@dataclass(frozen=True)
class ExportFilter:
    """Which runs to export: created in ``[since, until)``, with one of ``statuses``, of ``job``, from ``source``."""

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
        job, source = params.get("job") or None, params.get("source") or None
        if source is not None and not SYNTAX["source"].fullmatch(source):
            raise BadRequest(f"'source' must be a source name; got {source[:64]!r}")
        if job is not None:
            if len(job) > 256 or any(ord(c) < 32 for c in job):
                raise BadRequest("'job' must be a job name or SOURCE:NAME")
            if ":" in job:
                named, _, job = job.partition(":")
                if not named or not job:
                    raise BadRequest("'job' must be a job name or SOURCE:NAME")
                if source is not None and named != source:
                    raise BadRequest(f"'job' names source {named!r} but 'source' is {source!r}")
                source = named
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

    def runless(self, dialect: str) -> tuple[str, list[Any]] | None:
        """The SQL selecting the events without a run that pass, after ``?`` and before ``?``; None for none."""
        if self.statuses or self.job is not None:
            return None
        clauses, params = ["e.run_id IS NULL", "e.id > ?", "e.id < ?"], []
        if self.since is not None:
            clauses.append("e.ts >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("e.ts < ?")
            params.append(self.until)
        if self.source is not None:
            clauses.append(f"{DATA_SOURCE_SQL[dialect]} = ?")
            params.append(self.source)
        where = " AND ".join(clauses)
        sql = f"SELECT e.id, e.run_id, e.type, e.ts, e.data, e.hash FROM events e WHERE {where} ORDER BY e.id LIMIT ?"
        return sql, params


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


def _event_line(row: Any) -> bytes:
    """An event record: its chain hash and exact time first, the event (its stored data text last) after."""
    event = Event(row[0], row[1], row[2], row[3], row[4])
    digest = "null" if row[5] is None else f'"{row[5]}"'
    return f'{{"record":"event","hash":{digest},"ts":{float(row[3])!r},"event":{event.to_json()}}}\n'.encode()


_RUN_EVENTS = (
    "SELECT id, run_id, type, ts, data, hash FROM events WHERE run_id = ? AND id > ? AND id <= ? ORDER BY id LIMIT ?"
)
_RUN_HEAD = "SELECT id, hash FROM events WHERE run_id = ? ORDER BY id DESC LIMIT 1"
_RUNLESS_HEAD = "SELECT id, hash FROM events WHERE run_id IS NULL ORDER BY id DESC LIMIT 1"


class _Chunk:
    """Lines gathered until about ``CHUNK_BYTES``: one write per chunk, not per line."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.size = 0

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)

    def take_if_full(self) -> bytes | None:
        return self.take() if self.size >= CHUNK_BYTES else None

    def take(self) -> bytes:
        out = b"".join(self.lines)
        self.lines, self.size = [], 0
        return out


def export_lines(
    store: Store, filters: ExportFilter, *, run_page: int = RUN_PAGE, event_page: int = EVENT_PAGE
) -> Iterator[bytes]:
    """Yield the export in chunks of about ``CHUNK_BYTES``; see the module docstring.

    Retention is held off while it runs (a ``meta`` row every process's prune reads, renewed
    as chunks go out, lapsing ``HOLD_SECONDS`` after the last): a run pruned between the
    header and its lines would break the chains the file carries.
    """
    hold = EXPORT_HOLD + uuid.uuid4().hex

    def renew() -> float:
        try:
            store.write(lambda conn: conn.execute(SET_META, (hold, repr(time.time() + HOLD_SECONDS))))
        except FlwdError:  # a database that cannot be written is not pruned either: export what it holds
            pass
        return time.monotonic() + HOLD_SECONDS / 4

    renew_at = renew()  # before anything is read: a prune that commits later waits for this export
    lines = _export_lines(store, filters, run_page, event_page)
    try:
        for chunk in lines:
            if time.monotonic() > renew_at:
                renew_at = renew()
            yield chunk
    finally:
        lines.close()  # its connection, now
        try:
            store.write(lambda conn: conn.execute("DELETE FROM meta WHERE key = ?", (hold,)))
        except FlwdError:  # the store is closing or failing: the hold lapses by itself
            pass


def _export_lines(store: Store, filters: ExportFilter, run_page: int, event_page: int) -> Iterator[bytes]:
    conn: sqlite3.Connection | None = None
    try:
        conn = store.connect()  # the generator's own, closed in its own ``finally``
        where, params = filters.where()
        # Events without a run up to the chain head seen now: a later one belongs to a later export.
        head_row = conn.execute(_RUNLESS_HEAD).fetchone()
        runless_last, runless_head = (head_row[0], head_row[1]) if head_row else (0, None)
        header = {"record": "export", "format": FORMAT, "generated_at": iso(time.time()), "filters": filters.describe()}
        everything = filters == ExportFilter()  # every event without a run is here: their chain can be checked
        finished_last = 0
        if everything:
            header["runless_hash"] = runless_head
            last = conn.execute("SELECT seq, hash FROM run_chain ORDER BY seq DESC LIMIT 1").fetchone()
            finished_last, header["finished_hash"] = (last[0], last[1]) if last else (0, None)
        yield _line(header)
        chunk = _Chunk()
        runs = events = artifacts = 0
        last_seq = 0
        runless = filters.runless(store.dialect)
        runless_after = 0

        def runless_before(bound: int) -> Iterator[Any]:
            """The events without a run, not yet written, with ``id < bound`` (a page fetched whole at a time)."""
            nonlocal runless_after
            bound = min(bound, runless_last + 1)
            while runless is not None:
                sql, params_ = runless
                rows = conn.execute(sql, (runless_after, bound, *params_, event_page)).fetchall()
                if rows:
                    runless_after = rows[-1][0]
                yield from rows
                if len(rows) < event_page:
                    return

        while True:
            rows = conn.execute(
                f"SELECT {RUN_COLUMNS}, seq FROM runs WHERE {where} ORDER BY seq LIMIT ?", (last_seq, *params, run_page)
            ).fetchall()
            callbacks = callback_views(conn, [row[0] for row in rows])
            for row in rows:
                run = run_from_row(row, callbacks.get(row[0]))
                head_row = conn.execute(_RUN_HEAD, (run.id,)).fetchone()
                last_id, head = (head_row[0], head_row[1]) if head_row else (0, None)
                page = conn.execute(_RUN_EVENTS, (run.id, 0, last_id, event_page)).fetchall()
                for event in runless_before(page[0][0] if page else 0):
                    chunk.add(_event_line(event))
                    events += 1
                    if full := chunk.take_if_full():
                        yield full
                chunk.add(_line({"record": "run", "hash": head, "run": run.to_dict()}))
                runs += 1
                while True:
                    for event in page:
                        chunk.add(_event_line(event))
                    events += len(page)
                    if full := chunk.take_if_full():
                        yield full
                    if len(page) < event_page:
                        break
                    page = conn.execute(_RUN_EVENTS, (run.id, page[-1][0], last_id, event_page)).fetchall()
                for path, file_size, sha256 in conn.execute(
                    "SELECT path, size, sha256 FROM artifacts WHERE run_id = ? ORDER BY path", (run.id,)
                ).fetchall():
                    artifact = {"run_id": run.id, "path": path, "size": file_size, "sha256": sha256}
                    chunk.add(_line({"record": "artifact", "artifact": artifact}))
                    artifacts += 1
            if len(rows) < run_page:
                break
            last_seq = rows[-1][RUN_WIDTH]
        for event in runless_before(LAST_ID):
            chunk.add(_event_line(event))
            events += 1
            if full := chunk.take_if_full():
                yield full
        finished_after = 0
        while finished_after < finished_last:  # the chain over finished runs, as it stood when the export began
            chain_rows = conn.execute(
                "SELECT seq, run_id, run_hash, hash FROM run_chain WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (finished_after, finished_last, event_page),
            ).fetchall()
            if not chain_rows:
                break
            for _seq, run_id, run_hash, digest in chain_rows:
                chunk.add(_line({"record": "finished", "run_id": run_id, "run_hash": run_hash, "hash": digest}))
            finished_after = chain_rows[-1][0]
            if full := chunk.take_if_full():
                yield full
        chunk.add(_line({"record": "end", "runs": runs, "events": events, "artifacts": artifacts}))
        yield chunk.take()
    finally:
        if conn is not None:
            conn.close()
