"""Figure 1: completed runs per second of a trivial job: flwd, the stack's own limit, webhook.

The stack's limit is ``stack_app``: a minimal Flask app on flwd's gunicorn shape
whose ``POST`` runs ``sh -c true`` and stores six events in SQLite.  All three
servers get the same load: ``wrk`` with the same number of keep-alive
connections, each sending its next request as soon as the previous one is
answered, for the same number of seconds.

* webhook answers when ``/bin/true`` has exited, so every 2xx answer is a
  completed run: runs/s = answers / seconds.
* flwd answers ``202 Accepted`` once the run is queued, and runs execute
  behind the queue.  So the bench waits until the queue has drained, and
  counts the runs that *finished*, over the whole window: from the first
  submission to the ``finished_at`` of the last run.  A server that accepts
  faster than it executes gains nothing from it.

Server CPU per run is the user+system time of the server's processes (gunicorn's
master and workers; webhook's one process) from the start of the load to the
drained queue, divided by the runs completed.  A command is a child process: its
time is not in its parent's utime/stime, so the commands are excluded; what a
child does between fork and exec (flwd's pre-exec set-up) is excluded with it.
The children's own time (waited for: cutime+cstime) is reported beside it.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import procs
from .harness import FlwdServer, StackServer, WebhookServer, Workspace, wait_for
from .jobsrc import BENCH_SOURCE
from .profiling import PySpy
from .report import Goal, Row

if TYPE_CHECKING:
    from .cli import Context

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer dev-token"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH-RESULT {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
JOB = "bench-true"
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out", "rejected", "lost")


def run_wrk(ws: Workspace, name: str, url: str, body: dict[str, Any], clients: int, seconds: int) -> dict[str, Any]:
    """Drive ``url`` with ``clients`` connections for ``seconds``; wrk's own summary as a dict."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (scripts/install-test-deps installs it)")
    script = ws.path(f"{name}.lua")
    script.write_text(WRK_SCRIPT % {"body": json.dumps(body)})
    out = ws.path(f"{name}.wrk.out")
    with open(out, "wb") as stdout:
        threads = str(min(2, clients))
        proc = ws.spawn(
            [
                binary,
                "-t",
                threads,
                "-c",
                str(clients),
                "-d",
                f"{seconds}s",
                "--timeout",
                "10s",
                "-s",
                str(script),
                url,
            ],
            log=f"{name}.wrk.log",
            stdout=stdout.fileno(),
        )
        try:
            ws.wait(proc, seconds + 60)
        finally:
            ws.stop(proc)
    text = out.read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH-RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {text[-500:]!r}")
    result = json.loads(line.split(" ", 1)[1])
    result["seconds"] = result["duration_us"] / 1e6
    result["ok"] = result["requests"] - result["status"]
    return result


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def all_runs(server: FlwdServer) -> list[dict[str, Any]]:
    """Every run, through the API's cursor pagination (bounded)."""
    api = server.api()
    runs: list[dict[str, Any]] = []
    cursor = None
    try:
        for _ in range(10000):
            page = api.json("GET", f"/runs?limit=500&job={JOB}" + (f"&cursor={cursor}" if cursor else ""))
            runs += page["runs"]
            cursor = page.get("next")
            if not cursor:
                break
    finally:
        api.close()
    return runs


def flwd_runs_per_second(
    nodes: list[FlwdServer], clients: int, seconds: int, drain_timeout: float, profile: PySpy | None = None
) -> dict[str, Any]:
    """Submit ``bench-true`` from ``clients`` connections for ``seconds``, wait for the queue to drain,
    count the finished runs.  Several nodes (sharing one database) split the clients between them."""
    # Spread clients over the nodes; one node (today's only case) gets them all.
    share = [clients // len(nodes) + (1 if i < clients % len(nodes) else 0) for i in range(len(nodes))]
    server = nodes[0]
    pids = [pid for node in nodes for pid in node.server_pids()]
    cpu0, children0 = procs.total_cpu(pids), procs.total_children_cpu(pids)
    began = time.time()
    body = {"job": JOB, "source": BENCH_SOURCE}
    if profile is not None:
        profile.start(server.worker_pids(), seconds)
    with ThreadPoolExecutor(len(nodes)) as pool:  # one wrk per node, all at once
        futures = [
            pool.submit(run_wrk, server.ws, f"flwd-{i}", node.url + "/runs", body, n, seconds)
            for i, (node, n) in enumerate(zip(nodes, share, strict=True))
            if n
        ]
        loads = [f.result() for f in futures]
    submitted_at = time.time()
    api = server.api()
    polls = 0

    def drained() -> bool:
        nonlocal polls
        polls += 1
        # queued first: once nothing is queued (and nothing new arrives) no run can become running.
        return (
            not api.json("GET", "/runs?status=queued&limit=1")["runs"]
            and not api.json("GET", "/runs?status=running&limit=1")["runs"]
        )

    timed_out = False
    try:
        wait_for(drained, drain_timeout, "the run queue to drain", interval=0.05)
    except TimeoutError:
        timed_out = True
    finally:
        api.close()
    drained_at = time.time()
    cpu = procs.total_cpu(pids) - cpu0
    children_cpu = procs.total_children_cpu(pids) - children0
    if profile is not None:
        profile.finish()
    runs = all_runs(server)
    finished = [r for r in runs if r["status"] in TERMINAL]
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    last = max((_epoch(r["finished_at"]) or 0 for r in finished), default=drained_at)
    window = (last if not timed_out else drained_at) - began
    accepted = sum(w["ok"] for w in loads)
    return {
        "runs_per_second": len(finished) / window if window > 0 else None,
        "succeeded": statuses.get("succeeded", 0),
        "statuses": statuses,
        "finished": len(finished),
        "window_seconds": window,
        "submit_seconds": submitted_at - began,
        "drain_seconds": drained_at - submitted_at,
        "drain_timed_out": timed_out,
        "accepted": accepted,
        "accepted_per_second": accepted / max(w["seconds"] for w in loads),
        "wrk": loads,
        "server_cpu_seconds": cpu,
        "server_cpu_ms_per_run": 1000 * cpu / len(finished) if finished else None,
        "children_cpu_ms_per_run": 1000 * children_cpu / len(finished) if finished else None,
    }


def sync_runs_per_second(server: WebhookServer | StackServer, name: str, clients: int, seconds: int) -> dict[str, Any]:
    """A server that answers when the command has finished: every 2xx is a completed run."""
    pids = server.server_pids()
    cpu0, children0 = procs.total_cpu(pids), procs.total_children_cpu(pids)
    load = run_wrk(server.ws, name, server.url, {"job": JOB, "source": BENCH_SOURCE}, clients, seconds)
    cpu = procs.total_cpu(pids) - cpu0
    children_cpu = procs.total_children_cpu(pids) - children0
    return {
        "runs_per_second": load["ok"] / load["seconds"],
        "completed": load["ok"],
        "wrk": load,
        "server_cpu_seconds": cpu,
        "server_cpu_ms_per_run": 1000 * cpu / load["ok"] if load["ok"] else None,
        "children_cpu_ms_per_run": 1000 * children_cpu / load["ok"] if load["ok"] else None,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    clients, seconds = ctx.opts.clients, ctx.opts.duration
    hook = WebhookServer(ctx.ws).start()
    try:
        webhook = sync_runs_per_second(hook, "webhook", clients, seconds)
    finally:
        hook.stop()
    # Allow as many runs at once as webhook has commands in flight: one per client.
    config = {"limits": {"max_concurrent_runs": clients, "max_run_history": 1_000_000}}
    server = ctx.flwd("runs", **config)
    try:
        profile = PySpy(ctx.opts.py_spy, ctx.ws) if ctx.opts.py_spy else None
        flwd = flwd_runs_per_second(
            [server], clients, seconds, drain_timeout=max(60.0, 10.0 * seconds), profile=profile
        )
    finally:
        server.stop()
    # The stick gets the shape the flwd above had (--flwd-workers/--flwd-threads included).
    stack_server = StackServer(ctx.ws, ctx.python, server.config["workers"], server.config["threads"]).start()
    try:
        stack = sync_runs_per_second(stack_server, "stack", clients, seconds)
    finally:
        stack_server.stop()
    note = f"{clients} connections each, {seconds} s"
    rps = flwd["runs_per_second"]
    rows = [
        Row(
            1,
            f"flwd completed runs/s ({clients} clients)",
            rps,
            "runs/s",
            note=note + (", queue did NOT drain" if flwd["drain_timed_out"] else ""),
        ),
        Row(1, "flwd submissions accepted/s", flwd["accepted_per_second"], "req/s"),
        Row(
            1,
            f"stack limit runs/s (Flask + sh -c true + 6 events, {clients} clients)",
            stack["runs_per_second"],
            "runs/s",
        ),
        Row(1, f"webhook completed runs/s ({clients} clients)", webhook["runs_per_second"], "runs/s", note=note),
        Row(1, "runs/s ratio flwd / stack limit", _ratio(rps, stack["runs_per_second"]), "", Goal(">=", 0.9)),
        Row(1, "runs/s ratio flwd / webhook (long term)", _ratio(rps, webhook["runs_per_second"]), "", Goal(">=", 1.0)),
        Row(1, "runs/s ratio stack limit / webhook", _ratio(stack["runs_per_second"], webhook["runs_per_second"]), ""),
        Row(1, "flwd server CPU per run (commands excluded)", flwd["server_cpu_ms_per_run"], "ms", Goal("<=", 1.2)),
        Row(1, "stack limit server CPU per run (commands excluded)", stack["server_cpu_ms_per_run"], "ms"),
        Row(1, "webhook server CPU per run (commands excluded)", webhook["server_cpu_ms_per_run"], "ms"),
    ]
    details = {
        "clients": clients,
        "seconds": seconds,
        "flwd_config": server.config,
        "flwd": flwd,
        "stack": stack,
        "webhook": webhook,
        "profiles": profile.outputs if profile else [],
    }
    return rows, details
