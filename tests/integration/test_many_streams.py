"""Open event streams hold no thread under ``flwd :serve``: on default settings (2 workers x 32 threads,
once 56 streams at most) hundreds are served, each carries live events and ends cleanly, and the API
still answers meanwhile (flwd_server/events/broadcast.py, ``HandOff``; flwd_server/web/worker.py)."""

from __future__ import annotations

import http.client
import re
import resource
import selectors
import signal
import socket
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from flwd_server.config import Settings
from tests.fixtures.helpers import wait_until

STREAMS = 300  # more than the 2 x (32 - 4) streams a thread each allowed
LAST_CHUNK = b"0\r\n\r\n"
TICK = re.compile(rb"tick (\d+)")


def default_settings() -> dict[str, int]:
    defaults = Settings()
    return {"workers": defaults.workers, "threads": defaults.threads}


class Streams:
    """``count`` raw HTTP/1.1 event streams of one run, read together with one selector."""

    def __init__(self, server, path: str, count: int) -> None:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        self.selector = selectors.DefaultSelector()
        self.data: dict[socket.socket, bytearray] = {}
        self.closed: set[socket.socket] = set()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self.data[sock] = bytearray()
            self.selector.register(sock, selectors.EVENT_READ)

    def read_until(self, done, timeout: float, what: str) -> None:
        """Read every stream until ``done(data)`` holds for each (or its server closed it)."""
        deadline = time.monotonic() + timeout
        while not all(done(bytes(buf)) for buf in self.data.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sum(1 for buf in self.data.values() if not done(bytes(buf)))
                raise AssertionError(f"{missing} of {len(self.data)} streams: {what}")
            for key, _ in self.selector.select(min(left, 0.5)):
                sock = key.fileobj
                try:
                    part = sock.recv(65536)
                except BlockingIOError:
                    continue
                if part:
                    self.data[sock] += part
                else:
                    self.closed.add(sock)
                    self.selector.unregister(sock)

    def close(self) -> None:
        for sock in self.data:
            sock.close()
        self.selector.close()


def open_streams(server) -> float:
    """The flwd_sse_clients gauge, summed over the workers."""
    text = server.get("/metrics", headers={"Connection": "close"}).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return sum(s.value for s in families["flwd_sse_clients"].samples)


def statuses(streams: Streams) -> dict[bytes, int]:
    found: dict[bytes, int] = {}
    for buf in streams.data.values():
        status = bytes(buf[9:12])
        found[status] = found.get(status, 0) + 1
    return found


def test_300_streams_on_default_settings_all_carry_live_events_while_the_api_answers(start_server):
    server = start_server(default_settings())
    run = server.submit("slow", {"seconds": 6})
    streams = Streams(server, f"/runs/{run['id']}/events", STREAMS)
    try:
        streams.read_until(lambda d: b"\r\n\r\n" in d, 60, "a response head")
        assert statuses(streams) == {b"200": STREAMS}
        # Every stream open at once, the API still has its threads.
        for _ in range(5):
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
            assert server.post("/runs", {"job": "noop"}).status_code == 202
        # Live: a tick printed after every stream was open reaches every one of them.
        last_tick = max((int(m) for buf in streams.data.values() for m in TICK.findall(buf)), default=0)
        streams.read_until(
            lambda d: any(int(m) > last_tick for m in TICK.findall(d)), 30, f"a tick after tick {last_tick}"
        )
        # The run ends: each stream gets run.finished and a complete chunked response.
        streams.read_until(lambda d: d.endswith(LAST_CHUNK), 30, "run.finished and the last chunk")
        assert all(b"event: run.finished" in buf for buf in streams.data.values())
    finally:
        streams.close()
    # Every slot is free again: the gauge of open streams falls back to zero.
    wait_until(lambda: open_streams(server) == 0, 15, 0.1, "the open-stream gauge to fall back to 0")


def test_handed_off_streams_end_cleanly_when_the_server_stops(start_server):
    server = start_server(default_settings())
    run = server.submit("slow", {"seconds": 60})
    streams = Streams(server, f"/runs/{run['id']}/events", 100)
    try:
        streams.read_until(lambda d: b"event: run." in d, 60, "the first event")
        assert statuses(streams) == {b"200": 100}
        server.proc.send_signal(signal.SIGTERM)
        streams.read_until(lambda d: d.endswith(LAST_CHUNK), 30, "the last chunk after SIGTERM")
        assert server.proc.wait(60) == 0
    finally:
        streams.close()


def test_a_connection_whose_stream_ended_serves_the_clients_next_request(start_server):
    """The stream's head said keep-alive, so a client may send its next request on the same
    connection once the stream has ended (httpx does): it must be answered, not reset."""
    server = start_server(default_settings())
    for _ in range(5):  # either worker may take the stream, and the next request may come at once
        run = server.submit("noop")
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            headers = {"Authorization": "Bearer dev-token", "Accept": "text/event-stream"}
            conn.request("GET", f"/runs/{run['id']}/events", headers=headers)
            stream = conn.getresponse()
            assert stream.status == 200 and stream.getheader("Connection") == "keep-alive"
            assert b"event: run.finished" in stream.read()  # to the last chunk
            sock = conn.sock
            conn.request("GET", f"/runs/{run['id']}", headers={"Authorization": "Bearer dev-token"})
            answer = conn.getresponse()
            assert answer.status == 200 and b'"succeeded"' in answer.read()
            assert conn.sock is sock  # the same connection, not a new one
        finally:
            conn.close()


def test_the_server_raises_its_open_file_limit_to_the_hard_limit_and_logs_it(start_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # what a login shell often gives
    try:
        server = start_server(default_settings())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for pid in [server.proc.pid, *server.worker_pids()]:
        limits = Path(f"/proc/{pid}/limits").read_text()
        (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3:5] == [str(hard), str(hard)] or hard == resource.RLIM_INFINITY, line
    assert '"event": "serve.open_files"' in server.logs()
