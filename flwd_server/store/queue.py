"""The queue: concurrency groups at submit and at claim, and a queued run's place in line.

Both backends share this SQL (SQLite's spelling).  Everything here runs inside a
transaction that is alone for what it decides: a submission in the writer's
transaction (SQLite's ``BEGIN IMMEDIATE``; PostgreSQL's write lock, one across
nodes), a claim in SQLite's writer or under PostgreSQL's claim lock.  So the
counts of a group's runs read here are exact: only a claim adds running runs,
and claims are serialised.

The order of the queue (docs/policy.rst, "Concurrency groups"): the claim takes
queued runs oldest first (``seq``), skipping every run of a group that is at
its limit - its running runs reach the limit of the queued run - and, once a
run of a group is skipped, every later run of that group (FIFO within a
group).  A group one of whose running runs is being stopped (a cancel, a
``replace``) starts nothing until that run has ended, so a replacing run never
runs beside the run it replaces, whatever the limit.  A run without a group, or
of another group, never waits behind a busy group.
"""

from __future__ import annotations

from typing import Any

from ..models import EventType, Run, RunStatus
from .chain import insert_events
from .queries import dumps, insert_run_finished

# INDEXED BY (SQLite; PostgreSQL drops it): the few running rows, not every group's history.  The last
# column: a run of the group is being stopped (cancel, replace) - the group starts nothing until it has ended.
_RUNNING_GROUPS = (
    "SELECT concurrency_group, count(*), max(concurrency_limit), max(cancel_requested) FROM runs "
    "INDEXED BY runs_status_seq "
    "WHERE status = 'running' AND concurrency_group IS NOT NULL GROUP BY concurrency_group"
)


def admit(
    conn: Any, run_id: str, concurrency: tuple[str, int, str], subject: str, now: float, lock: str = ""
) -> str | None:
    """Apply ``when_busy`` for a run about to be queued in its group (before it is inserted).

    Returns the reason the run is refused, or None: it may be queued.
    ``reject``: the group is busy when its running *and queued* runs reach the limit - a new
    run would wait, and refusing is what the job asked instead of waiting.  ``replace``: the
    group's queued runs end ``cancelled`` now, its running runs get a cancel request; the new
    run is claimed only once they have left ``running`` (their processes gone), by the limit.
    ``lock`` is PostgreSQL's ``FOR UPDATE``: a queued run a claim holds is read once it is
    settled (then ``running``, and asked to stop).
    """
    group, limit, when_busy = concurrency
    if when_busy == "reject":
        busy = conn.execute(
            "SELECT count(*) FROM runs WHERE concurrency_group = ? AND status IN ('queued', 'running')", (group,)
        ).fetchone()[0]
        if busy >= limit:
            return f"concurrency group {group} is busy ({busy} of {limit} running or queued; when_busy: reject)"
        return None
    if when_busy != "replace":
        return None
    reason = f"replaced by {run_id}"
    queued = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM runs WHERE concurrency_group = ? AND status = 'queued' ORDER BY seq{lock}", (group,)
        ).fetchall()
    ]
    for old in queued:
        if conn.execute(
            "UPDATE runs SET status = 'cancelled', finished_at = ?, reason = ? WHERE id = ? AND status = 'queued'",
            (now, reason, old),
        ).rowcount:
            payload = {"status": "cancelled", "exit_code": None, "duration": 0.0, "reason": reason}
            insert_run_finished(conn, old, now, payload)
    running = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM runs WHERE concurrency_group = ? AND status = 'running' AND cancel_requested = 0", (group,)
        ).fetchall()
    ]
    for old in running:
        conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (old,))
        data = dumps({"by": subject, "reason": reason})
        insert_events(conn, [(old, EventType.RUN_CANCEL_REQUESTED.value, now, data)])
    return None


AWAITING_APPROVAL = "awaiting approval"  # the reason of a run awaiting approval (runs/approvals.py)
CLAIMABLE = "waiting to be claimed"  # a queued run's reason when nothing holds it back: a claim takes it shortly
_QUEUED = "SELECT id, seq, concurrency_group, concurrency_limit FROM runs"
MAX_HEAD_GROUPS = 200  # groups whose heads one claim reads by index; with more, it scans the queue in order
# The queued groups, in name order: one index probe each (a skip scan of runs_queued_group).
_QUEUED_GROUPS = (
    "WITH RECURSIVE g(name) AS ("
    "SELECT min(concurrency_group) FROM runs INDEXED BY runs_queued_group "
    "WHERE status = 'queued' AND concurrency_group IS NOT NULL UNION ALL SELECT (SELECT min(concurrency_group) "
    "FROM runs INDEXED BY runs_queued_group WHERE status = 'queued' AND concurrency_group > g.name) "
    "FROM g WHERE g.name IS NOT NULL) SELECT name FROM g WHERE name IS NOT NULL LIMIT ?"
)


class _Picking:
    """The claim's choice as it reads queued runs in order: runs to start, and the groups that are full."""

    def __init__(self, running: dict[str, int], room: int) -> None:
        self.running = running
        self.room = room
        self.blocked: set[str] = set()
        self.picked: list[str] = []

    @property
    def done(self) -> bool:
        return len(self.picked) >= self.room

    def take(self, rows: list[Any]) -> int:
        """Consider ``rows`` (in queue order); returns the last ``seq`` considered."""
        last = 0
        for run_id, seq, group, limit in rows:
            if self.done:
                break
            last = seq
            if group is None:
                self.picked.append(run_id)
            elif group not in self.blocked:
                count = self.running.get(group, 0)
                if count < limit:
                    self.picked.append(run_id)
                    self.running[group] = count = count + 1
                if count >= limit:
                    self.blocked.add(group)  # and every later run of it: FIFO within the group
        return last


def pick(conn: Any, room: int, affinity: str, owner: str, held: frozenset[str] = frozenset()) -> list[str]:
    """The ids of up to ``room`` queued runs the claim may start now, in queue order.

    The head of the queue is read first; usually that is all.  If runs of full groups are
    in the way, the rest comes from each other group's first runs (an index probe per
    group) and the first runs without a group, merged in queue order, so a busy group's
    thousands of queued runs are never read.  With more than ``MAX_HEAD_GROUPS`` groups
    queued, the queue is read in order, runs of full groups left out by the query.  ``held``:
    runs to leave out (PostgreSQL: runs another transaction holds, found when locking).
    """
    running = conn.execute(_RUNNING_GROUPS).fetchall()
    picking = _Picking({row[0]: row[1] for row in running}, room)
    picking.blocked.update(row[0] for row in running if row[3])  # replace: never beside the run it replaces
    mine = f" AND {affinity}" + (f" AND id NOT IN ({','.join('?' * len(held))})" if held else "")
    owner_params = [owner, *held]
    rows = conn.execute(
        f"{_QUEUED} INDEXED BY runs_queued WHERE status = 'queued'{mine} ORDER BY seq LIMIT ?", (*owner_params, room)
    ).fetchall()
    after = picking.take(rows)
    if picking.done or len(rows) < room:
        return picking.picked
    groups = [row[0] for row in conn.execute(_QUEUED_GROUPS, (MAX_HEAD_GROUPS + 1,)).fetchall()]
    if len(groups) <= MAX_HEAD_GROUPS:
        want = room - len(picking.picked)
        parts = [
            f"SELECT * FROM ({_QUEUED} INDEXED BY runs_queued_plain WHERE status = 'queued' "
            f"AND concurrency_group IS NULL AND seq > ?{mine} ORDER BY seq LIMIT ?) AS plain"
        ]
        params: list[Any] = [after, *owner_params, want]
        for group in groups:
            if group not in picking.blocked:
                parts.append(
                    f"SELECT * FROM ({_QUEUED} INDEXED BY runs_queued_group WHERE status = 'queued' "
                    f"AND concurrency_group = ? AND seq > ?{mine} ORDER BY seq LIMIT ?) AS g{len(parts)}"
                )
                params += [group, after, *owner_params, want]
        heads = conn.execute(" UNION ALL ".join(parts), params).fetchall()
        picking.take(sorted(heads, key=lambda row: row[1]))
        return picking.picked
    while not picking.done:
        skip = ",".join("?" * len(picking.blocked))
        rows = conn.execute(
            f"{_QUEUED} INDEXED BY runs_queued WHERE status = 'queued' AND seq > ?{mine} "
            f"AND (concurrency_group IS NULL OR concurrency_group NOT IN ({skip})) ORDER BY seq LIMIT ?",
            (after, *owner_params, *picking.blocked, room - len(picking.picked)),
        ).fetchall()
        if not rows:
            break
        after = picking.take(rows)
    return picking.picked


# -- a queued run's place -------------------------------------------------------------


def held_entry(run: Run) -> dict[str, Any] | None:
    """The ``queue`` of a run that waits for something other than a slot (None: it does not wait).

    A run awaiting approval is in no line yet: no position, the reason says what it waits for.
    """
    if run.status is RunStatus.AWAITING_APPROVAL:
        return {"position": None, "reason": AWAITING_APPROVAL}
    return None


def queue_entries(conn: Any, runs: list[Run], max_running: int) -> dict[str, dict[str, Any]]:
    """``{"position", "reason"}`` for each queued run of ``runs``, computed together.

    Position 1 is the run the claim takes next.  A run's position is one more than the queued
    runs ahead of it: the older ones, except those of *other* groups that are at their limit
    now (the claim skips them).  Older runs of its own group count even when the group is full:
    they start first.  Costs a count of the older queued runs and one of each full group's (over
    covering indexes: a few milliseconds per 100,000), and one read of the queued runs between
    the oldest and newest run asked about.
    """
    entries = {run.id: entry for run in runs if run.status is not RunStatus.QUEUED and (entry := held_entry(run))}
    ids = [run.id for run in runs if run.status is RunStatus.QUEUED]
    if not ids:
        return entries
    marks = ",".join("?" * len(ids))
    mine = conn.execute(
        f"SELECT id, seq, concurrency_group, concurrency_limit FROM runs WHERE status = 'queued' AND id IN ({marks})",
        ids,
    ).fetchall()
    if not mine:
        return entries
    mine.sort(key=lambda row: row[1])
    total = conn.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
    groups = {row[0]: (row[1], row[2], bool(row[3])) for row in conn.execute(_RUNNING_GROUPS).fetchall()}
    full = {group for group, (count, limit, stopping) in groups.items() if count >= limit or stopping}
    first = mine[0][1]
    # Older queued runs, less those of full groups (counted apart: a run of a full group counts its own).
    older = conn.execute("SELECT count(*) FROM runs WHERE status = 'queued' AND seq < ?", (first,)).fetchone()[0]
    own = {
        group: conn.execute(
            "SELECT count(*) FROM runs WHERE concurrency_group = ? AND status = 'queued' AND seq < ?", (group, first)
        ).fetchone()[0]
        for group in full
    }
    base = older - sum(own.values())
    between = conn.execute(
        "SELECT seq, concurrency_group FROM runs INDEXED BY runs_queued "
        "WHERE status = 'queued' AND seq >= ? AND seq < ? ORDER BY seq",
        (first, mine[-1][1]),
    ).fetchall()
    ahead_open, ahead_own, index = base, dict(own), 0
    for run_id, seq, group, limit in mine:
        while index < len(between) and between[index][0] < seq:
            other = between[index][1]
            if other in full:
                ahead_own[other] = ahead_own.get(other, 0) + 1
            else:
                ahead_open += 1
            index += 1
        ahead = ahead_open + (ahead_own.get(group, 0) if group in full else 0)
        entries[run_id] = {"position": ahead + 1, "reason": _reason(group, limit, groups, total, max_running)}
    return entries


def _reason(
    group: str | None, limit: int | None, groups: dict[str, tuple[int, int, bool]], total: int, most: int
) -> str:
    running, _, stopping = groups.get(group, (0, 0, False)) if group is not None else (0, 0, False)
    if group is not None and limit is not None and (running >= limit or stopping):
        wait = ", one being stopped" if stopping else ""
        return f"concurrency group {group} ({running} of {limit} running{wait})"
    if total >= most:
        return f"max_concurrent_runs ({total} running)"
    return CLAIMABLE


def with_queue(runs: list[Run], entries: dict[str, dict[str, Any]]) -> list[Run]:
    """The runs, each queued one with its ``queue``."""
    return [Run(**{**run.__dict__, "queue": entries[run.id]}) if run.id in entries else run for run in runs]
