"""Metrics: exposition that a real Prometheus parser reads, totals folded exactly once, never lost to pruning."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flwd_server import metrics
from flwd_server.metrics import Family, Metrics, render
from flwd_server.store import Store
from tests.fixtures.postgres import open_backend


def add_run(
    store: Store,
    run_id: str,
    job: str = "hello",
    status: str = "succeeded",
    started: float = 10.0,
    finished: float = 12.5,
    steps: tuple[float, ...] = (0.3,),
) -> None:
    """A run and the events a real one writes, inserted directly."""

    def op(conn):
        conn.execute(
            "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, started_at, finished_at, plan) "
            "VALUES (?, ?, 'ex', '{}', ?, 'secure', 'me', 1, ?, ?, '{}')",
            (run_id, job, status, started, finished),
        )
        events = [("run.queued", {}), ("policy.decision", {"check": "host-env", "outcome": "allow", "reason": "ok"})]
        events += [("step.output", {"line": "x"})] * 3
        events += [("step.finished", {"step": f"s{i}", "duration": d}) for i, d in enumerate(steps)]
        events.append(("run.finished", {"status": status, "duration": finished - started}))
        conn.executemany(
            "INSERT INTO events(run_id, type, ts, data) VALUES (?, ?, 1, ?)",
            [(run_id, t, json.dumps(d)) for t, d in events],
        )

    store.write(op)


def families(store: Store) -> dict:
    text = Metrics(store).exposition()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str, **labels: str) -> float:
    matches = [
        s.value
        for s in fams[family].samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (sample, labels, fams[family].samples)
    return matches[0]


def test_the_exposition_parses_and_counts_what_happened(store):
    add_run(store, "r1")
    add_run(store, "r2", status="failed", started=0, finished=0.05, steps=(0.01, 0.02))
    fams = families(store)
    assert value(fams, "flwd_runs_finished", "flwd_runs_finished_total", job="hello", status="succeeded") == 1
    assert value(fams, "flwd_runs_finished", "flwd_runs_finished_total", job="hello", status="failed") == 1
    assert value(fams, "flwd_runs_submitted", "flwd_runs_submitted_total", job="hello") == 2
    assert value(fams, "flwd_policy_decisions", "flwd_policy_decisions_total", check="host-env", outcome="allow") == 2
    assert value(fams, "flwd_step_duration_seconds", "flwd_step_duration_seconds_count", job="hello") == 3
    assert value(fams, "flwd_step_duration_seconds", "flwd_step_duration_seconds_bucket", job="hello", le="0.1") == 2
    assert value(fams, "flwd_run_duration_seconds", "flwd_run_duration_seconds_bucket", job="hello", le="0.1") == 1
    assert value(fams, "flwd_run_duration_seconds", "flwd_run_duration_seconds_bucket", job="hello", le="2.5") == 2
    assert value(fams, "flwd_run_duration_seconds", "flwd_run_duration_seconds_sum", job="hello") == pytest.approx(2.55)
    assert value(fams, "flwd_events_written", "flwd_events_written_total") == 2 * 7 + 1
    assert value(fams, "flwd_runs", "flwd_runs", job="hello", status="failed") == 1


def test_each_event_is_counted_once_however_often_and_wherever_metrics_are_read(store, store_spec):
    add_run(store, "r1")
    first = families(store)
    again = families(store)  # a second scrape (another worker) folds nothing twice
    other = open_backend(store_spec)  # another process's store on the same database
    try:
        third = families(other)
    finally:
        other.close()
    for fams in (first, again, third):
        assert value(fams, "flwd_runs_finished", "flwd_runs_finished_total", job="hello", status="succeeded") == 1


def test_pruning_never_makes_a_counter_go_down(store):
    metrics.install(store)
    for i in range(5):
        add_run(store, f"r{i}")
    assert store.prune(2) == 3  # never scraped before: the pruned runs' events are folded first
    fams = families(store)
    assert value(fams, "flwd_runs_finished", "flwd_runs_finished_total", job="hello", status="succeeded") == 5
    assert value(fams, "flwd_runs", "flwd_runs", job="hello", status="succeeded") == 2
    assert value(fams, "flwd_step_duration_seconds", "flwd_step_duration_seconds_count", job="hello") == 5


def test_a_histogram_is_cumulative_and_complete(store):
    add_run(store, "r1", started=0, finished=7.0)
    samples = [s for s in families(store)["flwd_run_duration_seconds"].samples if s.name.endswith("_bucket")]
    les = [s.labels["le"] for s in samples]
    assert les[-1] == "+Inf" and len(les) == len(metrics.DURATION_BUCKETS) + 1
    counts = [s.value for s in samples]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 1


def test_label_values_are_escaped():
    text = render([Family("x_total", "counter", "a \\ help", [("x_total", {"job": 'a"b\\c\nd'}, 3)])])
    (family,) = text_string_to_metric_families(text)
    assert family.samples[0].labels["job"] == 'a"b\\c\nd' and family.samples[0].value == 3


def test_a_process_gauge_counts_only_while_its_process_lives(store):
    m = Metrics(store)
    m.set_process_gauge(metrics.SSE_CLIENTS, 3)
    dead_owner = "somehost-that-is-not-this:999999:1"
    store.write(
        lambda conn: conn.execute(
            "INSERT INTO process_gauges(owner, name, value, updated_at) VALUES (?, ?, 5, ?)",
            (dead_owner, metrics.SSE_CLIENTS, time.time()),
        )
    )
    store.flush()
    assert value(families(store), "flwd_sse_clients", "flwd_sse_clients") == 3
    store.flush()  # the scrape queued the dead owner's row for deletion
    assert (
        store.reader().execute("SELECT count(*) FROM process_gauges WHERE owner = ?", (dead_owner,)).fetchone()[0] == 0
    )
    m.set_process_gauge(metrics.SSE_CLIENTS, 0)
    store.flush()
    assert value(families(store), "flwd_sse_clients", "flwd_sse_clients") == 0


def test_output_lines_do_not_enter_the_index_the_fold_reads(store):
    add_run(store, "r1")
    if store.dialect == "postgres":  # no INDEXED BY there: the partial index exists, and the planner may use it
        definition = (
            store.reader().execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'events_counted'").fetchone()[0]
        )
        assert "WHERE (type <> 'step.output'::text)" in definition
        return
    plan = (
        store.reader()
        .execute(
            "EXPLAIN QUERY PLAN SELECT id FROM events INDEXED BY events_counted WHERE type <> 'step.output' AND id > 0"
        )
        .fetchall()
    )
    assert "events_counted" in str(plan)
    indexed = (
        store.reader()
        .execute("SELECT count(*) FROM events INDEXED BY events_counted WHERE type <> 'step.output'")
        .fetchone()[0]
    )
    assert indexed == 4  # queued, decision, step.finished, run.finished - not the 3 output lines
