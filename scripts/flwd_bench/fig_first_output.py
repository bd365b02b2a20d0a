"""Figure 2: from ``POST /runs`` to the job's first output line arriving over SSE.

What a user of the API sees, done the way the reference page does it with
curl and the way ``flwd JOB --server URL`` does it: submit the run, then open
*that run's* stream (``GET /runs/ID/events``) on a new connection, and wait
for its first ``step.output`` event.  The clock starts before the POST is
written and stops when the frame holding the first output line has arrived,
so the figure includes planning and queueing the run, the answer to the POST,
opening the stream and replaying its history, claiming and starting the run,
spawning the shell, reading its output, storing it and delivering it.

Runs are sequential (each one's stream is read to its end before the next
POST).  A second figure is taken at the same time from a client that was
already following ``GET /events`` (a dashboard): it leaves out opening a stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from .client import Frames, HttpConnection, frame_fields
from .harness import LOOPBACK, FlwdServer
from .jobsrc import BENCH_SOURCE
from .report import Goal, Row, summary

if TYPE_CHECKING:
    from .cli import Context

JOB = "bench-echo"


async def _follow_all(server: FlwdServer, first: dict[str, float], connected: asyncio.Event) -> None:
    """Follow ``GET /events`` and note when each run's first output line arrives."""
    conn = await HttpConnection.open(LOOPBACK, server.port)
    try:
        conn.send("GET", "/events", accept="text/event-stream")
        status, headers = await conn.head()
        if status != 200:
            raise RuntimeError(f"GET /events answered {status}")
        connected.set()
        frames = Frames()
        async for chunk in conn.body_chunks(headers):
            now = time.perf_counter()
            for frame in frames.feed(chunk):
                if b"event: step.output" in frame:
                    run_id = json.loads(frame_fields(frame)["data"])["run_id"]
                    first.setdefault(run_id, now)
    finally:
        await conn.close()


async def _one_run(server: FlwdServer, api: HttpConnection) -> tuple[float, float, float, str]:
    """One sequential run: (start, POST answered, first output on the run's stream, run id)."""
    started = time.perf_counter()
    api.send("POST", "/runs", {"job": JOB, "source": BENCH_SOURCE})
    status, headers = await api.head()
    body = await api.body(headers)
    answered = time.perf_counter()
    if status != 202:
        raise RuntimeError(f"POST /runs answered {status}: {body[:300]!r}")
    run_id = json.loads(body)["run"]["id"]
    stream = await HttpConnection.open(LOOPBACK, server.port)
    first = None
    try:
        stream.send("GET", f"/runs/{run_id}/events", accept="text/event-stream")
        status, headers = await stream.head()
        if status != 200:
            raise RuntimeError(f"GET /runs/{run_id}/events answered {status}")
        frames = Frames()
        finished = False
        async for chunk in stream.body_chunks(headers):
            now = time.perf_counter()
            for frame in frames.feed(chunk):
                if first is None and b"event: step.output" in frame:
                    first = now
                if b"event: run.finished" in frame:
                    finished = True
            if finished:
                break
    finally:
        await stream.close()
    if first is None:
        raise RuntimeError(f"run {run_id} ended without output")
    return started, answered, first, run_id


async def _measure(server: FlwdServer, runs: int, deadline: float) -> dict[str, Any]:
    first_seen: dict[str, float] = {}
    connected = asyncio.Event()
    follower = asyncio.create_task(_follow_all(server, first_seen, connected))
    api = await HttpConnection.open(LOOPBACK, server.port)
    try:
        await asyncio.wait_for(connected.wait(), 30)
        via_stream, via_events, post = [], [], []
        for _ in range(runs):
            if time.monotonic() > deadline:
                break
            started, answered, first, run_id = await asyncio.wait_for(_one_run(server, api), 30)
            post.append(answered - started)
            via_stream.append(first - started)
            # The follower may see the line a moment after the run's stream; give it a bounded while.
            for _ in range(200):
                if run_id in first_seen:
                    break
                await asyncio.sleep(0.005)
            if run_id in first_seen:
                via_events.append(first_seen[run_id] - started)
        return {"run_stream": via_stream, "events_follower": via_events, "post": post}
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await api.close()


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    runs = ctx.opts.pick(300, 30)
    server = ctx.flwd("first-output")
    try:
        samples = asyncio.run(_measure(server, runs, time.monotonic() + ctx.opts.pick(240, 40)))
    finally:
        server.stop()
    ms = {name: [1000 * v for v in values] for name, values in samples.items()}
    stream, events, post = summary(ms["run_stream"]), summary(ms["events_follower"]), summary(ms["post"])
    if stream["n"] == 0:
        raise RuntimeError("no run completed")
    n = stream["n"]
    rows = [
        Row(2, f"first output p50 (POST, then run stream; {n} runs)", stream["p50"], "ms", Goal("<=", 5)),
        Row(2, f"first output p99 (POST, then run stream; {n} runs)", stream["p99"], "ms", Goal("<=", 20)),
        Row(2, "first output p50 (already following /events)", events.get("p50"), "ms"),
        Row(2, "first output p99 (already following /events)", events.get("p99"), "ms"),
        Row(2, "POST /runs answered p50", post["p50"], "ms"),
        Row(2, "POST /runs answered p99", post["p99"], "ms"),
    ]
    return rows, {
        "runs": runs,
        "flwd_config": server.config,
        "run_stream_ms": stream,
        "events_follower_ms": events,
        "post_ms": post,
    }
