"""SSE framing and the event hub: resume, heartbeats, closing, one poller per process."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from flwd_server.errors import BadRequest, Unavailable
from flwd_server.events.hub import EventHub, control_only
from flwd_server.events.sse import HEARTBEAT, ClosingStream, StreamSlots, event_stream, parse_last_event_id
from flwd_server.store.chain import insert_events
from tests.fixtures.helpers import wait_until
from tests.fixtures.postgres import open_backend


def frames(stream, count):
    out = []
    for frame in stream:
        out.append(frame)
        if len(out) == count:
            break
    return out


def parse(frame: bytes) -> list[dict]:
    events = []
    for block in frame.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":") and ": " in line)
        if "data" in lines:
            events.append({"id": int(lines["id"]), "event": lines["event"], "data": json.loads(lines["data"])})
    return events


@pytest.mark.parametrize(
    ("header", "query", "expected"), [(None, None, 0), ("12", None, 12), ("", "7", 7), ("5", "9", 5)]
)
def test_resume_position_comes_from_last_event_id_or_after(header, query, expected):
    assert parse_last_event_id(header, query) == expected


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5", "9" * 25, "99999999999999999999"])
def test_a_forged_last_event_id_is_a_400(bad):
    with pytest.raises(BadRequest):
        parse_last_event_id(bad, None)


def test_history_then_live_then_the_stream_ends_after_the_run_finishes(sqlite_store, hub):
    sqlite_store.emit("r1", "run.queued", {})
    sqlite_store.emit("r2", "run.queued", {})
    sqlite_store.flush()
    stream = event_stream(hub, after=0, run_id="r1", heartbeat=5)
    assert next(stream).startswith(b"retry: ")
    assert [e["event"] for e in parse(next(stream))] == ["run.queued"]
    sqlite_store.emit("r1", "step.output", {"line": "hi"})
    sqlite_store.emit("r1", "run.finished", {"status": "succeeded"})
    rest = b"".join(stream)  # ends by itself
    assert [e["event"] for e in parse(rest)] == ["step.output", "run.finished"]
    assert all(e["data"]["run_id"] == "r1" for e in parse(rest))


def test_an_idle_stream_sends_heartbeat_comments(sqlite_store, hub):
    stream = event_stream(hub, after=0, heartbeat=0.1, max_duration=0.35)
    got = list(stream)
    assert got[0].startswith(b"retry:")
    assert got[1:].count(HEARTBEAT) >= 2 and set(got[1:]) == {HEARTBEAT}  # then it closed at max_duration


def test_streams_end_when_the_server_shuts_down(sqlite_store, hub):
    stream = event_stream(hub, after=0, heartbeat=10, max_duration=60)
    next(stream)
    closer = threading.Timer(0.2, hub.close)
    closer.start()
    started = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - started < 2


def test_a_reader_behind_the_buffer_reads_history_from_the_database(sqlite_store, hub):
    for i in range(200):
        sqlite_store.emit("r", "step.output", {"i": i})
    sqlite_store.flush()
    wait_until(lambda: hub.last_id >= 200, 5, message="the hub to see 200 events")
    assert len(hub._events) <= 50  # the buffer is bounded
    got, position = [], 0
    while True:
        events, position = hub.read(position, "r", limit=64)
        if not events:
            break
        got.extend(e.data["i"] for e in events)
    assert got == list(range(200))


def test_an_idle_server_runs_no_query_on_the_events_table(sqlite_store, hub):
    sqlite_store.emit(None, "x", {})
    sqlite_store.flush()
    wait_until(lambda: hub.last_id == 1, 5, message="the first event")
    queries = hub.queries
    polls = hub.polls
    wait_until(lambda: hub.polls >= polls + 50, 5, message="fifty polls")
    assert hub.queries == queries  # data_version did not move: no SELECT on events


def test_a_write_from_another_process_is_seen_promptly(sqlite_store, hub, tmp_path):
    import subprocess
    import sys

    code = f"from flwd_server.store.sqlite import SQLiteStore; s = SQLiteStore({sqlite_store.path!r}); s.emit('other', 'from.elsewhere', {{}}); s.close()"
    subprocess.run([sys.executable, "-c", code], check=True)
    started = time.monotonic()
    wait_until(lambda: hub.last_id >= 1, 2, 0.005, message="the other process's event")
    assert time.monotonic() - started < 0.5
    assert hub.read(0)[0][0].type == "from.elsewhere"


def test_idle_streams_do_not_let_the_wal_grow(sqlite_store, hub, tmp_path):
    streams = [event_stream(hub, after=0, heartbeat=0.05, max_duration=30) for _ in range(20)]
    for s in streams:
        next(s)
    for _ in range(10):
        for i in range(1000):
            sqlite_store.emit("w", "step.output", {"i": i, "pad": "x" * 100})
        sqlite_store.flush()
        for s in streams:
            next(s)  # each stream reads, nothing holds a snapshot across yields
        busy, _, _ = sqlite_store.checkpoint("PASSIVE")
        assert busy == 0
    sqlite_store.checkpoint("TRUNCATE")
    wal = tmp_path / "flwd.db-wal"
    assert wal.stat().st_size < 4 * 1024 * 1024


def test_stream_slots_cap_streams_and_are_released_exactly_once():
    slots = StreamSlots(2)
    slots.acquire()
    slots.acquire()
    with pytest.raises(Unavailable) as caught:
        slots.acquire()
    assert caught.value.retry_after > 0

    def never_started():
        yield b"x"

    body = ClosingStream(never_started(), slots.release)
    body.close()
    body.close()
    assert slots.open == 1  # released once, although the generator never ran


def test_a_commit_in_another_process_wakes_the_poller_at_once(sqlite_store):
    import subprocess
    import sys

    slow = EventHub(sqlite_store, poll_interval=30.0)  # polling alone would take 30 s
    slow.start()
    wait_until(lambda: slow.polls >= 0 and slow._thread.is_alive(), 2)
    wait_until(lambda: slow.wakeups.prefix in Path("/proc/net/unix").read_text(), 5, message="the poller's socket")
    code = (
        "from flwd_server.store.sqlite import SQLiteStore; from flwd_server.events.hub import EventHub; "
        f"s = SQLiteStore({sqlite_store.path!r}); EventHub(s); s.emit('other', 'from.elsewhere', {{}}); s.close()"
    )
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True)
    wait_until(lambda: slow.last_id >= 1, 5, 0.005, message="the other process's event")
    assert time.monotonic() - started < 5  # far below the 30 s poll interval: the datagram woke it
    slow.close()


def test_a_crowded_worker_pauses_streams_between_writes_and_a_lone_stream_never_waits():
    from flwd_server.events.sse import crowd_pause

    assert crowd_pause(1, 0.05) == 0.0
    assert 0 < crowd_pause(100, 0.05) < crowd_pause(1000, 0.05) == 0.05
    assert crowd_pause(5000, 0.05) == 0.05


def test_many_waiting_streams_are_all_woken_by_one_batch(sqlite_store, hub):
    woken = []
    ready = threading.Barrier(201)

    def follower():
        ready.wait()
        if hub.wait(hub.last_id, 10):
            woken.append(1)

    threads = [threading.Thread(target=follower) for _ in range(200)]
    for t in threads:
        t.start()
    ready.wait()
    wait_until(lambda: len(hub._waiters) == 200, 5, message="every follower to park")
    sqlite_store.emit("busy", "step.output", {"line": "x"})
    for t in threads:
        t.join(10)
    assert len(woken) == 200 and hub._waiters == []


def test_without_followers_the_hub_reads_only_control_events_and_still_serves_history(sqlite_store, hub):
    sqlite_store.emit("r", "run.queued", {})
    for i in range(100):
        sqlite_store.emit("r", "step.output", {"i": i})
    sqlite_store.emit("r", "run.finished", {"status": "succeeded"})
    sqlite_store.flush()
    wait_until(lambda: hub.last_id == 102, 5, message="the hub to move past every event")
    assert hub._events == []  # nobody watches: output was not read into memory
    hub.watch()
    try:
        events, _ = hub.read(0, "r")
        assert [e.type for e in events] == ["run.queued"] + ["step.output"] * 100 + ["run.finished"]
        sqlite_store.emit("r2", "step.output", {"i": 1})
        sqlite_store.flush()
        wait_until(lambda: [e.run_id for e in hub._events] == ["r2"], 5, message="a watched hub to buffer output")
    finally:
        hub.unwatch()


def test_control_only_listeners_get_no_output_lines_and_others_get_every_event(sqlite_store, hub):
    everything, control, marked = [], [], []

    @control_only
    def marked_listener(events):
        marked.append([e.type for e in events])

    hub.add_listener(lambda events: everything.extend(e.type for e in events))
    hub.add_listener(lambda events: control.append([e.type for e in events]), control_only=True)
    hub.add_listener(marked_listener)
    hub.watch()  # a follower: the hub reads output too, and must still keep it from control listeners
    try:
        sqlite_store.emit("r", "run.queued", {})
        sqlite_store.flush()
        wait_until(lambda: control and marked, 5, message="the control listeners to get run.queued")
        sqlite_store.emit_rows([("r", "step.output", time.time(), '{"line":"x"}')] * 20)
        sqlite_store.flush()
        wait_until(lambda: len(everything) == 21, 5, message="the plain listener to get every line")
        sqlite_store.emit("r", "run.finished", {"status": "succeeded"})
        sqlite_store.flush()
        wait_until(lambda: everything[-1:] == ["run.finished"], 5, message="every listener to get run.finished")
        wait_until(lambda: len(control) == len(marked) == 2, 5, message="the control listeners to get run.finished")
    finally:
        hub.unwatch()
    assert everything == ["run.queued"] + ["step.output"] * 20 + ["run.finished"]
    assert control == marked == [["run.queued"], ["run.finished"]]  # a batch of output only is not handed on


@pytest.mark.parametrize(
    ("max_events", "max_bytes", "kept"), [(10, 10**6, 10), (1000, 5 * 80, 5), (1, 10**6, 1), (50, 1, 1)]
)
def test_the_buffer_keeps_the_newest_events_within_both_bounds(sqlite_store, max_events, max_bytes, kept):
    hub = EventHub(sqlite_store, poll_interval=0.01, max_events=max_events, max_bytes=max_bytes)
    hub.start()
    hub.watch()
    try:
        rows = [("r", "step.output", time.time(), f'{{"line":"{i % 10}"}}') for i in range(25)]  # 16 bytes: 80 each
        for start, end in ((0, 7), (7, 20), (20, 25)):  # batches smaller and larger than the buffer
            sqlite_store.emit_rows(rows[start:end])
            sqlite_store.flush()
        last = sqlite_store.last_event_id()
        wait_until(lambda: hub.last_id == last, 5, message="the hub to read every event")
        buffered = hub._events
        assert [e.id for e in buffered] == list(range(last - kept + 1, last + 1))
        assert hub._bytes == sum(len(e.raw) + 64 for e in buffered)
        floor = hub._view[0]
        assert floor == last - kept
    finally:
        hub.unwatch()
        hub.close()


def test_a_followed_hub_publishes_its_own_writes_unread_and_interleaves_another_writers_in_id_order(store_spec):
    mine, other = open_backend(store_spec), open_backend(store_spec)  # other: another process's writer
    mine.migrate()
    hub = EventHub(mine, poll_interval=0.01, max_events=10_000)
    hub.start()
    hub.watch()

    def failing(conn):
        insert_events(conn, [("r", "lost.event", time.time(), "{}")])
        raise RuntimeError("this operation fails: its event is rolled back")

    try:
        for i in range(30):
            store = mine if i % 3 else other
            store.emit_rows([("r", "step.output", time.time(), f'{{"line":"{i}.{j}"}}') for j in range(40)])
            store.flush()
            if i == 10:
                with pytest.raises(RuntimeError):
                    mine.write(failing)
        last = mine.last_event_id()
        wait_until(lambda: hub.last_id == last, 5, message="the hub to publish every event")
        stored = [(e.id, e.type, e.raw) for e in mine.events_after(0, limit=10_000)]
        assert [(e.id, e.type, e.raw) for e in hub._events] == stored
        assert len(stored) == 1200 and "lost.event" not in {e[1] for e in stored}
        assert hub.handed > 0  # some batches were this process's, published without reading them back
    finally:
        hub.unwatch()
        hub.close()
        mine.close()
        other.close()


def test_iso_timestamps_match_datetime_to_the_millisecond():
    import datetime
    import random

    from flwd_server.models import iso

    for _ in range(20000):
        ts = random.choice([random.uniform(0, 2e9), round(random.uniform(0, 2e9), 3)])
        expected = (
            datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        assert iso(ts) == expected


def test_a_closed_hub_keeps_no_committed_batches_for_a_poller_that_is_gone(sqlite_store):
    """Shutdown closes the hub while streams may still be attached: nothing would ever take them."""
    hub = EventHub(sqlite_store, poll_interval=0.01)
    hub.start()
    hub.watch()
    try:
        hub.close()
        for i in range(20):
            sqlite_store.emit_rows([("r", "step.output", time.time(), f'{{"line":"{i}"}}')])
            sqlite_store.flush()
        assert len(hub._local) == 0
    finally:
        hub.unwatch()
