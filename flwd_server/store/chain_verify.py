"""Checking an export's hash chains offline (``flwd :export --verify``): no server, no database.

Each run's events must chain from the run's first event to the head its ``run``
record names, so a run checks on its own in any export, filtered or not.  An
unfiltered export also carries the heads of the events without a run and of the
chain of finished runs: every finished run must then be in the file or named by
a ``runs.pruned`` event, so a whole run cut out is found too.
"""

from __future__ import annotations

import json
from typing import Any

from ..models import EventType, iso
from .chain import GENESIS, event_hash, run_link

FIRST_FORMAT = 4  # the first export format with hashes
_RUN_FINISHED = EventType.RUN_FINISHED.value
_RUNS_PRUNED = EventType.RUNS_PRUNED.value
_MOVED = "does not follow the previous event of its chain: this line was edited, or one before it was deleted, inserted or moved"


class Tampered(Exception):
    """An export that fails verification: ``line`` (1-based) is the first line that is not what was written."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def _event_data(text: str) -> str:
    """The stored data text of an event line, exactly as written (``"data"`` is its last field)."""
    start = text.index('"event":{')
    at = text.index(',"data":', start) + len(',"data":')
    if not text.endswith("}}"):
        raise ValueError("an event line ends with its data")
    return text[at:-2]


def _digest(value: Any) -> bytes:
    """A hash as the export writes it (hex, or null for none) -> bytes (GENESIS for none)."""
    if value is None:
        return GENESIS
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("not a sha256")
    return bytes.fromhex(value)


class _Verifier:
    """The state of one pass over an export's lines."""

    def __init__(self) -> None:
        self.heads: dict[str | None, bytes] = {}
        self.run: str | None = None
        self.run_head = GENESIS
        self.run_line = 0
        self.counts = {"runs": 0, "events": 0, "artifacts": 0}
        self.header: dict[str, Any] | None = None
        self.at_finish: dict[str, bytes] = {}  # each exported run's hash at its run.finished event
        self.pruned: set[str] = set()  # the runs a runs.pruned event names
        self.finished_head = GENESIS

    def close_run(self, number: int) -> None:
        if self.run is not None and self.heads.get(self.run, GENESIS) != self.run_head:
            raise Tampered(
                number, f"run {self.run} (line {self.run_line}) does not end at its recorded head: events are missing"
            )
        self.run = None

    def event(self, number: int, text: str, record: dict[str, Any]) -> None:
        try:
            event, ts = record["event"], float(record["ts"])
            data = _event_data(text)
            if json.loads(data) != event["data"] or event["time"] != iso(ts):
                raise ValueError("fields disagree")
            id, run_id, type_ = int(event["id"]), event["run_id"], str(event["type"])
            digest = None if record["hash"] is None else _digest(record["hash"])
        except (ValueError, KeyError, TypeError):
            raise Tampered(number, "a malformed event record") from None
        if run_id is not None and run_id != self.run:
            raise Tampered(number, f"an event of run {run_id} outside that run's records")
        self.counts["events"] += 1
        previous = self.heads.get(run_id, GENESIS)
        if digest is None:
            if previous != GENESIS:
                raise Tampered(number, "an event without a hash inside a chain")
            return  # stored before the audit trail existed
        if event_hash(previous, id, run_id, type_, ts, data) != digest:
            raise Tampered(number, _MOVED)
        self.heads[run_id] = digest
        if type_ == _RUN_FINISHED and run_id is not None:
            self.at_finish[run_id] = digest
        elif type_ == _RUNS_PRUNED and run_id is None:
            runs = event["data"].get("runs", []) if isinstance(event["data"], dict) else []
            self.pruned.update(str(item.get("id")) for item in runs if isinstance(item, dict))

    def run_record(self, number: int, record: dict[str, Any]) -> None:
        self.close_run(number)
        try:
            self.run, self.run_head = str(record["run"]["id"]), _digest(record.get("hash"))
        except (ValueError, KeyError, TypeError):
            raise Tampered(number, "a malformed run record") from None
        self.run_line = number
        if self.run in self.heads:
            raise Tampered(number, f"run {self.run} appears twice")
        self.heads[self.run] = GENESIS
        self.counts["runs"] += 1

    def finished(self, number: int, record: dict[str, Any]) -> None:
        self.close_run(number)
        try:
            run_id, run_hash = str(record["run_id"]), _digest(record["run_hash"])
            digest = _digest(record["hash"])
        except (ValueError, KeyError, TypeError):
            raise Tampered(number, "a malformed finished record") from None
        self.finished_head = run_link(self.finished_head, run_id, run_hash)
        if self.finished_head != digest:
            raise Tampered(number, "does not follow the previous line of the chain of finished runs")
        if run_id in self.heads:
            if self.at_finish.get(run_id) != run_hash:
                raise Tampered(number, f"run {run_id} did not finish with the hash the chain of finished runs holds")
        elif run_id not in self.pruned:
            raise Tampered(number, f"run {run_id} finished, was not pruned, and is not in the export")

    def end(self, number: int, record: dict[str, Any]) -> dict[str, Any]:
        self.close_run(number)
        for name, value in self.counts.items():
            if record.get(name) != value:
                raise Tampered(number, f"the export says {record.get(name)} {name}, it holds {value}")
        header = self.header or {}
        try:
            if "runless_hash" in header and self.heads.get(None, GENESIS) != _digest(header["runless_hash"]):
                raise Tampered(number, "the events without a run do not end at their recorded head")
            if "finished_hash" in header and self.finished_head != _digest(header["finished_hash"]):
                raise Tampered(number, "the chain of finished runs does not end at its recorded head")
        except ValueError:
            raise Tampered(1, "a malformed export header") from None
        return {**self.counts, "lines": number, "end": record}


def verify_export(lines: Any) -> dict[str, Any]:
    """Check an export's chains line by line; return its counts, or raise :class:`Tampered` naming the first bad line."""
    state = _Verifier()
    done: dict[str, Any] | None = None
    number = 0
    for number, raw_line in enumerate(lines, 1):
        try:
            text = (raw_line.decode() if isinstance(raw_line, bytes) else raw_line).rstrip("\n")
            record = json.loads(text)
            kind = record["record"]
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            raise Tampered(number, "not an export record") from None
        if done is not None:
            if kind != "signature":
                raise Tampered(number, "a record after the end record")
            continue
        if state.header is None:
            if kind != "export" or not isinstance(record.get("format"), int) or record["format"] < FIRST_FORMAT:
                raise Tampered(number, f"not the header of an export with hashes (format {FIRST_FORMAT} or later)")
            state.header = record
        elif kind == "event":
            state.event(number, text, record)
        elif kind == "run":
            state.run_record(number, record)
        elif kind == "artifact":
            state.counts["artifacts"] += 1
        elif kind == "finished":
            state.finished(number, record)
        elif kind == "end":
            done = state.end(number, record)
        else:
            raise Tampered(
                number, f"an unknown record {kind!r}" if kind != "signature" else "a signature before the end"
            )
    if done is None:
        raise Tampered(number + 1, "the export ends before its end record: lines are missing")
    return done
