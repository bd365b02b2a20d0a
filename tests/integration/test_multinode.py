"""Three ``flwd :serve`` nodes on loopback ports, one PostgreSQL: they act as one server.

* 200 runs submitted round-robin, ``max_concurrent_runs: 4``: never more than 4 run at
  once across the nodes (from the events' timestamps), every run finishes, in queue order;
* a client follows a run through node A while node B executes it, drops, and resumes through
  node C with ``Last-Event-ID``: every event once, in order;
* node B killed with SIGKILL mid-run: its runs end ``lost`` within ``liveness_timeout``, the
  others keep serving and take the queued runs; B restarted does not resurrect them;
* an owner on another host (a row with another host name) is judged by its heartbeat alone;
* a concurrency group of limit 1 never runs two at once across the nodes, in submission order,
  and another group's run does not wait behind it (start and end times written by the steps).
* a run awaiting approval, approved on one node, runs on whichever node claims it; an approval
  and a denial racing on two nodes leave exactly one outcome.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from flwd_server.models import parse_iso
from tests.fixtures.helpers import processes_of_run, read_stream, sse_events, wait_until
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

LIVENESS = 10.0
JOBS = {
    "nap": "name: nap\nargs:\n  ms: {type: integer, default: 50}\nsteps:\n  - run: 'sleep $(( FLWD_ARG_MS / 1000 )).$(( FLWD_ARG_MS % 1000 / 100 ))$(( FLWD_ARG_MS % 100 / 10 ))'\n",
    "gated": "name: gated\napproval: {required: 1}\nsteps:\n  - run: echo approved\n",
    "ticker": "name: ticker\nargs:\n  count: {type: integer, default: 20}\nsteps:\n  - run: 'i=0; while [ $i -lt $FLWD_ARG_COUNT ]; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done'\n",
}
LOCKED = """name: locked
args:
  group: {type: string, default: a}
concurrency: {group: 'lock-{{ args.group }}'}
steps:
  - run: 'echo "start $FLWD_RUN_ID $(date +%s.%N)" >> LOG; sleep 0.3; echo "end $FLWD_RUN_ID $(date +%s.%N)" >> LOG'
"""


class Nodes:
    def __init__(self, root: Path, url: str) -> None:
        folder = root / "jobs-src"
        (folder / "jobs").mkdir(parents=True)
        for name, text in JOBS.items():
            (folder / "jobs" / f"{name}.yaml").write_text(text)
        self.log = root / "locked.log"  # each run of t:locked appends its start and end here
        (folder / "jobs" / "locked.yaml").write_text(LOCKED.replace("LOG", str(self.log)))
        self.url = url
        config = {
            "db_url": url,
            "liveness_timeout": LIVENESS,
            "limits": {"max_concurrent_runs": 4},
            "sse": {"heartbeat": 1.0},
            "sources": [{"type": "local", "name": "t", "path": str(folder)}],
        }
        # Node A has two worker processes: the bound holds across every process of every node.
        self.all = [
            ServerProcess(root / name, {**config, "workers": 2 if name == "a" else 1}, dev=True, env=None)
            for name in ("a", "b", "c")
        ]

    def __getitem__(self, index: int) -> ServerProcess:
        return self.all[index]

    def owner_pids(self, node: ServerProcess) -> set[int]:
        return set(node.worker_pids())


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Iterator[Nodes]:
    url = postgres.create_database()
    cluster = Nodes(tmp_path_factory.mktemp("multinode"), url)
    try:
        for node in cluster.all:
            node.start(wait=False)
        for node in cluster.all:
            node.wait_ready(60)
        yield cluster
    finally:
        for node in cluster.all:
            if node.proc is not None:
                node.stop(timeout=30)
        postgres.drop_database(url)


def export(node: ServerProcess) -> dict[str, dict[str, Any]]:
    """Every run with its events, from one node (the audit export reads the shared database)."""
    runs: dict[str, dict[str, Any]] = {}
    response = node.get("/export", timeout=60)
    assert response.status_code == 200, response.text
    for line in response.text.splitlines():
        record = json.loads(line)
        if record["record"] == "run":
            runs[record["run"]["id"]] = {"run": record["run"], "events": []}
        elif record["record"] == "event":
            runs[record["event"]["run_id"]]["events"].append(record["event"])
    return runs


def run_owner(node: ServerProcess, run_id: str) -> str:
    events = read_stream(
        f"{node.url}/runs/{run_id}/events", node.headers(), until=lambda e: e["event"] == "run.started", timeout=60
    )
    return next(e for e in events if e["event"] == "run.started")["data"]["data"]["owner"]


def test_two_hundred_runs_round_robin_never_exceed_four_running_across_nodes(nodes):
    ids = []
    for index in range(200):
        ids.append(nodes[index % 3].submit("t:nap", {"ms": 50})["id"])
    for run_id in ids:
        nodes[0].wait_finished(run_id, timeout=240)
    runs = export(nodes[1])
    mine = [runs[run_id] for run_id in ids]
    assert [r["run"]["status"] for r in mine] == ["succeeded"] * 200

    intervals = []
    for item in mine:
        times = {e["type"]: parse_iso(e["time"]) for e in item["events"]}
        intervals.append((times["run.started"], times["run.finished"]))
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = list(itertools.accumulate(delta for _, delta in edges))
    assert max(running) <= 4
    assert max(running) >= 2  # the nodes did run side by side

    owners = {next(e for e in item["events"] if e["type"] == "run.started")["data"]["owner"] for item in mine}
    pids = {int(o.split(":")[1]) for o in owners}
    assert len({node.url for node in nodes.all if pids & nodes.owner_pids(node)}) >= 2  # executed on several nodes
    started = [parse_iso(item["run"]["started_at"]) for item in mine]
    submitted_order = sorted(range(200), key=lambda i: started[i])
    assert sum(1 for a, b in itertools.pairwise(submitted_order) if a > b) <= 10  # queue order, up to claims in flight


def test_a_group_of_limit_one_never_runs_two_at_once_across_three_nodes(nodes):
    ids = [nodes[index % 3].submit("t:locked", {"group": "a"})["id"] for index in range(9)]
    other = nodes[1].submit("t:locked", {"group": "b"})["id"]
    for run_id in [*ids, other]:
        assert nodes[2].wait_finished(run_id, timeout=120)["status"] == "succeeded"
    times = {}
    for line in nodes.log.read_text().splitlines():
        what, run_id, stamp = line.split()
        times[(what, run_id)] = float(stamp)
    spans = [(times[("start", r)], times[("end", r)]) for r in ids]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlap, in submission order
    assert times[("start", other)] < spans[1][1]  # group b did not wait behind the eight queued runs of a


def executor_of(nodes: Nodes, owner: str) -> ServerProcess:
    pid = int(owner.split(":")[1])
    return next(node for node in nodes.all if node.proc is not None and pid in nodes.owner_pids(node))


def test_a_client_follows_through_one_node_and_resumes_through_another_while_a_third_executes(nodes):
    # Which node claims a run is up to the nodes; name them by what they do: B executes, A and C serve the client.
    run = nodes[0].submit("t:ticker", {"count": 40})
    b = executor_of(nodes, run_owner(nodes[0], run["id"]))
    a, c = [node for node in nodes.all if node is not b]

    url_a = f"{a.url}/runs/{run['id']}/events"
    seen: list[dict[str, Any]] = []
    with requests.get(url_a, headers=a.headers(), stream=True, timeout=(5, 30)) as response:
        assert response.status_code == 200
        for event in sse_events(response.iter_lines(chunk_size=None)):
            if "comment" in event:
                continue
            seen.append(event)
            if event["event"] == "step.output" and event["data"]["data"]["line"] == "line 10":
                break  # the client drops its connection mid-run
    assert b.run_status(run["id"]) == "running"
    rest = read_stream(
        f"{c.url}/runs/{run['id']}/events", {**c.headers(), "Last-Event-ID": str(seen[-1]["id"])}, timeout=60
    )
    got = [int(e["id"]) for e in seen + rest]
    everything = [int(e["id"]) for e in b.events(run["id"])]
    assert got == everything  # no gap, no duplicate, in order
    lines = [e["data"]["data"]["line"] for e in seen + rest if e["event"] == "step.output"]
    assert lines == [f"line {i}" for i in range(1, 41)]
    assert rest[-1]["event"] == "run.finished" and rest[-1]["data"]["data"]["status"] == "succeeded"


def test_an_approval_on_one_node_releases_the_run_to_any_and_a_race_with_a_deny_has_one_outcome(nodes):
    run = nodes[2].submit("t:gated")
    assert run["status"] == "awaiting_approval"
    approved = nodes[0].post(f"/runs/{run['id']}/approve", {"digest": run["plan_digest"]}, token="dev-approver")
    assert approved.status_code == 200, approved.text
    assert executor_of(nodes, run_owner(nodes[1], run["id"])) in nodes.all
    assert nodes[1].wait_finished(run["id"])["status"] == "succeeded"
    for _ in range(5):
        run = nodes[2].submit("t:gated")
        with ThreadPoolExecutor(2) as pool:  # approve on A, deny on B, at once
            racing = {
                "approve": pool.submit(
                    nodes[0].post, f"/runs/{run['id']}/approve", {"digest": run["plan_digest"]}, token="dev-approver"
                ),
                "deny": pool.submit(nodes[1].post, f"/runs/{run['id']}/deny", {"reason": "race"}, token="dev-approver"),
            }
            replies = {action: future.result(30) for action, future in racing.items()}
        assert sorted(r.status_code for r in replies.values()) == [200, 409], {k: r.text for k, r in replies.items()}
        ended = nodes[2].wait_finished(run["id"])
        assert ended["status"] == ("succeeded" if replies["approve"].status_code == 200 else "rejected"), ended
        types = [e["event"] for e in read_stream(f"{nodes[0].url}/runs/{run['id']}/events", nodes[0].headers())]
        assert types.count("run.finished") == 1 and types.count("run.approved") == (ended["status"] == "succeeded")


def test_a_node_killed_mid_run_loses_its_runs_within_the_liveness_timeout_and_the_others_take_the_queue(nodes):
    long_runs = [nodes[i % 3].submit("t:ticker", {"count": 100000})["id"] for i in range(4)]  # every slot taken...
    owners = {run_id: run_owner(nodes[0], run_id) for run_id in long_runs}
    victim = executor_of(nodes, owners[long_runs[0]])  # B: a node that executes at least one of them
    survivors = [node for node in nodes.all if node is not victim]
    held = [run_id for run_id, owner in owners.items() if executor_of(nodes, owner) is victim]
    queued = [survivors[1].submit("t:nap", {"ms": 50})["id"] for _ in range(5)]  # ...so these wait in the queue
    assert all(survivors[0].run_status(r) == "queued" for r in queued)
    orphans = {r: processes_of_run(r) for r in held}

    victim.kill()  # SIGKILL master and workers at once; the jobs' own process groups survive them
    killed = time.monotonic()

    for run_id in held:
        done = survivors[0].wait_finished(run_id, timeout=LIVENESS + 20)
        assert done["status"] == "lost" and "stopped" in done["reason"]
    assert time.monotonic() - killed <= LIVENESS  # within the liveness timeout (same host: the pid tells at once)
    for node in survivors:
        assert node.get("/healthz").status_code == 200
    for run_id in long_runs:  # the survivors' own long runs: cancel them, so the queue moves
        if run_id not in held:
            assert survivors[0].post(f"/runs/{run_id}/cancel").status_code in (200, 202)
    for run_id in queued:
        assert survivors[1].wait_finished(run_id, timeout=60)["status"] == "succeeded"
    for run_id, pids in orphans.items():
        assert pids
        wait_until(
            lambda run_id=run_id: processes_of_run(run_id) == [], 15, message="the lost run's processes to be killed"
        )

    victim.start()  # a new process is a new owner: its old runs stay lost
    for run_id in held:
        assert victim.run_status(run_id) == "lost"
    again = victim.submit("t:nap", {"ms": 10})
    assert victim.wait_finished(again["id"], timeout=60)["status"] == "succeeded"


def test_an_owner_on_another_host_is_lost_only_after_its_heartbeat_is_older_than_the_timeout(nodes):
    import psycopg

    run_id = uuid.uuid4().hex[:26]
    owner = "far-away-host:4242:1"
    with psycopg.connect(nodes.url, autocommit=True) as conn:
        now = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
        conn.execute(
            "INSERT INTO owners(owner, host, pid, started_at, heartbeat_at) VALUES (%s, 'far-away-host', 4242, %s, %s)",
            (owner, now, now),
        )
        conn.execute(
            "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, started_at, plan, owner) "
            "VALUES (%s, 'nap', 't', '{}', 'running', 'secure', 'dev', %s, %s, '{}', %s)",
            (run_id, now, now, owner),
        )
    # pid 4242 means nothing on another host (and may even exist here): only the heartbeat counts.
    wait_until(
        lambda: nodes[0].run_status(run_id) == "lost", LIVENESS + 15, 0.2, message="the far node's run to end lost"
    )
    with psycopg.connect(nodes.url, autocommit=True) as conn:
        finished = conn.execute("SELECT finished_at FROM runs WHERE id = %s", (run_id,)).fetchone()[0]
        gone = conn.execute("SELECT count(*) FROM owners WHERE owner = %s", (owner,)).fetchone()[0]
    assert finished - now >= LIVENESS  # not before the timeout...
    assert gone == 0
    events = nodes[2].events(run_id)
    assert events[-1]["event"] == "run.finished" and events[-1]["data"]["data"]["status"] == "lost"


def test_serve_takes_db_url_on_the_command_line_and_a_local_cli_run_shares_the_database(postgres, tmp_path):
    import subprocess
    import sys

    from tests.fixtures.helpers import free_port
    from tests.fixtures.server import REPO

    url = postgres.create_database()
    with_password = url.replace("flwd@", "flwd:never-logged-pw@")  # trust auth ignores it; no log may show it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flwd_cli",
                ":serve",
                "--dev",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--data-dir",
                str(tmp_path / "node"),
                "--db-url",
                with_password,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: proc.poll() is None and _healthy(base), 30, 0.05, message="flwd :serve --db-url to answer")
        local = subprocess.run(
            [sys.executable, "-m", "flwd_cli", "hello-world", "--name", "Local"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**env, "FLWD_DB_URL": with_password, "FLWD_DATA_DIR": str(tmp_path / "cli")},
        )
        assert local.returncode == 0 and local.stdout == "Hello, Local\n", local.stderr
        runs = requests.get(f"{base}/runs", headers={"Authorization": "Bearer dev-token"}, timeout=10).json()["runs"]
        assert [(r["job"], r["status"], r["submitted_by"].startswith("local:")) for r in runs] == [
            ("hello-world", "succeeded", True)
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        postgres.drop_database(url)
    text = log_path.read_text()
    assert "never-logged-pw" not in text and "flwd:***@127.0.0.1" in text


def _healthy(base: str) -> bool:
    try:
        return requests.get(base + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False
