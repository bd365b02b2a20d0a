"""One process of figure 3's SSE clients: N raw loopback connections following one run.

Kept as cheap per event as Python allows, so the client is not what is
measured: asyncio protocols (no stream objects), one ``time.time()`` per read,
one regular-expression pass per read over the complete frames, no JSON.

Protocol with the bench (files, no pipes to block on): once every connection
has its response head, ``OUT.ready`` is written; at the end ``OUT.lat`` holds
every latency (float64 seconds: arrival time minus the time the job printed
into the line) and ``OUT.json`` the counts.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import json
import re
import resource
import time
from pathlib import Path

TICK = re.compile(rb'"line": ?"tick \d+ (\d+\.\d+)')


class Follower(asyncio.Protocol):
    def __init__(self, request: bytes, latencies: array.array) -> None:
        self.request = request
        self.latencies = latencies
        self.status: int | None = None
        self.head = b""
        self.tail = b""
        self.lines = 0
        self.finished = False
        self.headed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status = int(self.head[9:12])
            data, self.head = self.head[end + 4 :], b""
            if not self.headed.done():
                self.headed.set_result(None)
            if self.status != 200:
                self.transport.close()
                return
        # Chunk-size lines of the chunked encoding sit between frames (one write per chunk),
        # so matching inside complete frames never needs de-chunking.
        buf = self.tail + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.tail = buf
            return
        part, self.tail = buf[:end], buf[end + 2 :]
        for match in TICK.finditer(part):
            self.latencies.append(now - float(match.group(1)))
            self.lines += 1
        if b"event: run.finished" in part:
            self.finished = True
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.headed, self.closed):
            if not future.done():
                future.set_result(None)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def follow(host: str, port: int, path: str, token: str, connections: int, out: Path, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    latencies = array.array("d")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    followers: list[Follower] = []
    failed_connects = 0
    deadline = time.monotonic() + timeout
    for start in range(0, connections, 50):  # connect in batches: no SYN storm on the listen backlog
        batch = [Follower(request, latencies) for _ in range(min(50, connections - start))]
        results = await asyncio.gather(
            *(loop.create_connection(lambda f=f: f, host, port) for f in batch), return_exceptions=True
        )
        for follower, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failed_connects += 1
            else:
                followers.append(follower)
    if followers:
        await asyncio.wait([f.headed for f in followers], timeout=max(1.0, deadline - time.monotonic()))
    statuses: dict[str, int] = {}
    for f in followers:
        statuses[str(f.status)] = statuses.get(str(f.status), 0) + 1
    # Written then renamed: the bench reads it as soon as it exists.
    out.with_suffix(".part").write_text(
        json.dumps({"statuses": statuses, "failed_connects": failed_connects, "cpu_seconds": _cpu()})
    )
    out.with_suffix(".part").replace(out.with_suffix(".ready"))
    pending = [f.closed for f in followers if not f.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=max(1.0, deadline - time.monotonic()))
    for f in followers:
        if f.transport is not None:
            f.transport.close()
    counts = sorted(f.lines for f in followers if f.status == 200)
    out.with_suffix(".lat").write_bytes(latencies.tobytes())
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "connections": connections,
                "failed_connects": failed_connects,
                "statuses": statuses,
                "finished": sum(1 for f in followers if f.finished),
                "lines_min": counts[0] if counts else 0,
                "lines_max": counts[-1] if counts else 0,
                "lines_total": sum(counts),
                "cpu_seconds": _cpu(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token", default="dev-token")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    gc.disable()  # nothing here makes cycles; collections would only add pauses to the figures
    asyncio.run(follow(args.host, args.port, args.path, args.token, args.connections, args.out, args.timeout))


if __name__ == "__main__":
    main()
