"""Figure 4: output throughput of one run printing many lines.

``bench-lines`` runs ``seq -f "line %g" LINES`` with a secret argument, so each
line is masked as in any run with one.  Three rates, in lines/s:

* baseline: the same command with its output sent to ``/dev/null``, timed
  directly (best of three): what the machine can do without flwd;
* stored: LINES / (run ``finished_at`` - ``started_at``), as the server
  records them; the run finishes only after its last line is committed;
* streamed: lines received by a client that opened the run's stream right
  after the POST, divided by the time from ``started_at`` to the arrival of
  the last line.  The client checks it received every line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .client import HttpConnection
from .harness import LOOPBACK, FlwdServer
from .jobsrc import BENCH_SOURCE, LINES_COMMAND
from .report import Goal, Row

if TYPE_CHECKING:
    from .cli import Context

OUTPUT_EVENT = b"event: step.output\n"


def baseline(lines: int, repeat: int = 3) -> float:
    """Best wall time of the job's command writing to /dev/null."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FLWD_ARG_LINES": str(lines)}
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run(["sh", "-c", LINES_COMMAND], env=env, stdout=subprocess.DEVNULL, check=True, timeout=120)
        best = min(best, time.perf_counter() - began)
    return best


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _stream_run(server: FlwdServer, lines: int, timeout: float) -> dict[str, Any]:
    cpu0 = time.process_time()
    api = await HttpConnection.open(LOOPBACK, server.port)
    try:
        status, body = await api.call(
            "POST", "/runs", {"job": "bench-lines", "source": BENCH_SOURCE, "args": {"lines": lines}}
        )
        if status != 202:
            raise RuntimeError(f"POST /runs answered {status}: {body[:300]!r}")
        run_id = json.loads(body)["run"]["id"]
        stream = await HttpConnection.open(LOOPBACK, server.port)
        received, last_line_at, finished = 0, None, False
        try:
            stream.send("GET", f"/runs/{run_id}/events", accept="text/event-stream")
            status, headers = await stream.head()
            if status != 200:
                raise RuntimeError(f"GET /runs/{run_id}/events answered {status}")
            tail = b""
            deadline = time.monotonic() + timeout
            async for chunk in stream.body_chunks(headers):
                buf = tail + chunk
                end = buf.rfind(b"\n\n")
                if end < 0:
                    tail = buf
                    continue
                part, tail = buf[:end], buf[end + 2 :]
                found = part.count(OUTPUT_EVENT)
                if found:
                    received += found
                    last_line_at = time.time()
                if b"event: run.finished" in part:
                    finished = True
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the stream of run {run_id} did not end within {timeout:.0f}s")
        finally:
            await stream.close()
        # A new connection: the POST's has been idle for the whole run, and the server closes a
        # kept-alive connection after ``keepalive`` (gunicorn's 5 s): a run longer than that made
        # this GET read EOF (IncompleteReadError), which looked like a dropped stream.
        await api.close()
        api = await HttpConnection.open(LOOPBACK, server.port)
        status, body = await api.call("GET", f"/runs/{run_id}")
        run = json.loads(body)["run"]
        client_cpu = time.process_time() - cpu0
        return {
            "run": run,
            "received": received,
            "last_line_at": last_line_at,
            "stream_finished": finished,
            "client_cpu_seconds": client_cpu,
        }
    finally:
        await api.close()


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    lines = ctx.opts.pick(200_000, 20_000)
    base = baseline(lines)
    server = ctx.flwd("throughput")
    try:
        result = asyncio.run(_stream_run(server, lines, timeout=300))
    finally:
        server.stop()
    run = result["run"]
    if run["status"] != "succeeded":
        raise RuntimeError(f"the run ended {run['status']}: {run.get('reason')}")
    started, finished = _epoch(run["started_at"]), _epoch(run["finished_at"])
    stored = lines / (finished - started)
    streamed = result["received"] / (result["last_line_at"] - started) if result["last_line_at"] else None
    complete = result["received"] == lines
    rows = [
        Row(4, f"lines/s to /dev/null ({lines:,} lines, no flwd)", lines / base, "lines/s"),
        Row(4, "lines/s stored (run start -> run.finished)", stored, "lines/s", Goal(">=", 300_000)),
        Row(
            4,
            "lines/s streamed (run start -> last line at client)",
            streamed if complete else None,
            "lines/s",
            Goal(">=", 250_000),
            note="" if complete else f"client got {result['received']} of {lines} lines",
        ),
    ]
    details = {
        "lines": lines,
        "baseline_seconds": base,
        "run_seconds": finished - started,
        "stream_seconds": (result["last_line_at"] - started) if result["last_line_at"] else None,
        "received": result["received"],
        "client_cpu_seconds": result["client_cpu_seconds"],
        "flwd_config": server.config,
        "run": run,
    }
    return rows, details
