"""Event filters (GET /events?type=&run=&job=&source=): parsing, the SQL of the replay, the live routing."""

from __future__ import annotations

import json
import socket

import pytest

from flwd_server.auth.scopes import Grant, grants_of
from flwd_server.errors import BadRequest
from flwd_server.events.broadcast import Broadcaster
from flwd_server.events.routing import RunOrigins, route
from flwd_server.models import Event
from flwd_server.store.event_filter import EventFilter
from flwd_server.store.queries import new_run_id

RUNS = [new_run_id() for _ in range(4)]
ORIGINS = {RUNS[0]: ("build", "ops"), RUNS[1]: ("deploy", "ops"), RUNS[2]: ("build", "tools"), RUNS[3]: ("noop", "x")}
FILTERS = [
    {},
    {"type": "run.*"},
    {"type": "run.finished,source.synced"},
    {"run": RUNS[0]},
    {"run": f"{RUNS[1]},{RUNS[2]}", "type": "step.*"},
    {"job": "build"},
    {"job": "build,deploy", "type": "run.finished"},
    {"source": "ops"},
    {"source": "tools,ops", "type": "source.*"},
    {"source": "tools", "job": "build"},
    {"job": "build", "run": RUNS[1]},  # runs of build AND this run of deploy: nothing
]


def fill(store) -> list[Event]:
    """Runs of several jobs and sources with their events, and events without a run, interleaved."""

    def op(conn) -> None:
        for run_id, (job, source) in ORIGINS.items():
            conn.execute(
                "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, plan) "
                "VALUES (?, ?, ?, '{}', 'succeeded', 'secure', 'me', 1, '{}')",
                (run_id, job, source),
            )
        rows = []
        for round_ in range(3):
            for run_id in RUNS:
                rows.append((run_id, ("run.queued", "step.output", "run.finished")[round_], json.dumps({"n": round_})))
            rows.append((None, "source.synced", json.dumps({"source": ("ops", "tools", "elsewhere")[round_]})))
        rows.append((None, "policy.profile_downgrade", json.dumps({"job": "build", "granted": False})))
        rows.append(("pruned-run", "step.output", "{}"))  # a run that no longer exists
        conn.executemany("INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, 1, ?)", rows)

    store.write(op)
    return store.events_after(0, None, 1000)


def brute_force(events: list[Event], event_filter: EventFilter) -> list[int]:
    return [e.id for e in events if event_filter.matches(e, ORIGINS.get(e.run_id))]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"type": "run"}, "type"),  # a type that does not exist
        ({"type": "Run.*"}, "type"),
        ({"type": "run.**"}, "type"),
        ({"type": "nosuch.*"}, "type"),
        ({"type": "run.finished,"}, "type"),
        ({"type": " run.finished"}, "type"),
        ({"run": "abc"}, "run"),
        ({"run": RUNS[0].upper()}, "run"),
        ({"run": f"{RUNS[0]};drop"}, "run"),
        ({"job": "Build"}, "job"),
        ({"source": "a b"}, "source"),
        ({"job": ",".join(["a"] * 101)}, "job"),
    ],
)
def test_a_bad_filter_value_is_a_400_naming_its_parameter(params, parameter):
    with pytest.raises(BadRequest) as caught:
        EventFilter.parse(params)
    assert caught.value.status == 400 and caught.value.detail.startswith(f"query parameter {parameter!r}")


def test_prefixes_expand_to_the_exact_types_and_empty_means_absent():
    parsed = EventFilter.parse({"type": "run.*,step.finished", "job": "", "run": None})
    assert parsed.types == {
        "run.queued",
        "run.approval_requested",
        "run.approved",
        "run.started",
        "run.cancel_requested",
        "run.finished",
        "step.finished",
    }
    assert not parsed.jobs and not parsed.runs and EventFilter.parse({}).everything


@pytest.mark.parametrize("params", FILTERS, ids=lambda p: "&".join(f"{k}={v[:8]}" for k, v in p.items()) or "all")
def test_the_sql_of_the_replay_selects_exactly_what_the_live_test_passes(store, params):
    """Both backends, in id order, resumable at any position; events without a run match on their source."""
    events = fill(store)
    event_filter = EventFilter.parse(params)
    expected = brute_force(events, event_filter)
    assert [e.id for e in store.events_matching(0, event_filter, 1000)] == expected
    middle = events[len(events) // 2].id
    assert [e.id for e in store.events_matching(middle, event_filter, 1000)] == [i for i in expected if i > middle]
    assert [e.id for e in store.events_matching(0, event_filter, 2)] == expected[:2]


def test_events_without_a_run_match_source_filters_only():
    synced = Event(1, None, "source.synced", 0, '{"source": "ops"}')
    assert EventFilter.parse({"source": "ops"}).matches(synced)
    assert not EventFilter.parse({"source": "tools"}).matches(synced)
    assert not EventFilter.parse({"job": "build"}).matches(synced)
    assert not EventFilter.parse({"run": RUNS[0]}).matches(synced)


def test_routing_tests_only_the_filters_an_event_is_filed_under(sqlite_store, monkeypatch):
    """A thousand streams on other runs cost an event nothing: only the filters of its run are tested."""
    events = fill(sqlite_store)
    origins = RunOrigins(sqlite_store)
    others = [EventFilter.for_run(new_run_id()) for _ in range(1000)]
    mine = [EventFilter.for_run(RUNS[0]), EventFilter.parse({"job": "build", "type": "run.finished"})]
    tested = []
    real = EventFilter.matches
    monkeypatch.setattr(EventFilter, "matches", lambda self, e, o=None: tested.append(self) or real(self, e, o))
    routed = route(events, [*others, *mine, EventFilter()], origins)
    monkeypatch.undo()
    assert not set(tested) & set(others)
    assert len(tested) == 3 + 6  # the three events of RUNS[0]; the six of the two runs of job build
    for event_filter in [*mine, EventFilter()]:
        assert [e.id for e in routed.get(event_filter, [])] == brute_force(events, event_filter)
    assert all(f not in routed for f in others)


def test_the_broadcaster_sends_a_filtered_stream_only_its_events_and_never_ends_it(hub):
    caster = Broadcaster(hub, heartbeat=5, max_duration=60)
    server, client = socket.socketpair()
    run_a, run_b = new_run_id(), new_run_id()
    sub = caster.attach(server, hub.last_id, None, chunked=False, event_filter=EventFilter.parse({"run": run_a}))
    hub.store.emit(run_b, "step.output", {"line": "not yours"})
    hub.store.emit(run_a, "step.output", {"line": "yours"})
    hub.store.emit(run_a, "run.finished", {"status": "succeeded"})
    hub.store.emit(run_b, "run.finished", {"status": "succeeded"})
    client.settimeout(5)
    data = b""
    while data.count(b"event: ") < 2:
        data += client.recv(65536)
    assert b"not yours" not in data and b"yours" in data and b"event: run.finished" in data
    hub.store.emit(run_a, "step.output", {"line": "still there"})  # a global stream goes on after run.finished
    while b"still there" not in data:
        data += client.recv(65536)
    assert not sub.done.is_set() and b"not yours" not in data
    server.close()
    client.close()


NARROWED = [
    (["runs:read:ops:build"], False),
    (["runs:read:ops:build"], True),
    (["runs:read:*:build", "runs:read:x:*"], False),
    (["runs:read:o*:*"], True),
    (["runs:read:op:build"], False),  # 'op' is not a prefix match of 'ops'
    ([], True),  # narrowed to no job at all (a token holding only runs:read:...; none here): source events only
]


@pytest.mark.parametrize(("scopes", "runless"), NARROWED, ids=lambda v: str(v))
def test_a_narrowed_token_stream_selects_the_same_in_sql_live_and_routed(store, scopes, runless):
    """A job-scoped token's stream: the replay's SQL, the live test and the broadcaster's routing agree."""
    events = fill(store)
    for params in ({}, {"type": "run.*"}, {"job": "build"}):
        event_filter = EventFilter.parse(params).narrowed(grants_of(scopes, "runs:read"), runless)
        expected = brute_force(events, event_filter)
        grants = [Grant(*scope.split(":")[2:]) for scope in scopes]
        independent = [  # the query's filter, then: a run of a granted job, or a source's event without a run
            e.id
            for e in events
            if EventFilter.parse(params).matches(e, ORIGINS.get(e.run_id))
            and (
                (e.run_id is None and runless and e.type.startswith("source."))
                or (e.run_id in ORIGINS and any(g.matches(ORIGINS[e.run_id][1], ORIGINS[e.run_id][0]) for g in grants))
            )
        ]
        assert expected == independent, params
        assert [e.id for e in store.events_matching(0, event_filter, 1000)] == expected, params
        if store.dialect == "sqlite":
            routed = route(events, [event_filter, EventFilter.for_run(RUNS[3])], RunOrigins(store))
            assert [e.id for e in routed.get(event_filter, [])] == expected, params
