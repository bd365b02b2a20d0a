"""No client can stall the server: request heads trickled a byte a second cost a socket, not a thread
(flwd_server/web/worker.py), directly and through the shipped nginx configuration."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import requests

from flwd_server.config import Settings
from flwd_server.web.worker import head_limit
from tests.fixtures.helpers import wait_until

SLOW_CLIENTS = 200
TRICKLE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # then "a" forever: the head never ends
MAX_ROUNDS = 60  # the trickle stops by itself after a minute at most
ANSWER_WITHIN = 1.0


class Trickle:
    """``count`` connections, each sent one more byte of a never-ending head every second; close() ends them."""

    def __init__(self, connect: Callable[[], socket.socket], count: int) -> None:
        self.socks: list[socket.socket] = []
        self.rounds = 0
        self._stop = threading.Event()
        try:
            for _ in range(count):
                self.socks.append(connect())
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for index in range(MAX_ROUNDS):
            byte = TRICKLE[index : index + 1] or b"a"
            for sock in self.socks:
                try:
                    sock.send(byte)
                except OSError:
                    pass  # dropped by the server: open_count() tells
            self.rounds = index + 1
            if self._stop.wait(1.0):  # the attack's pace, not a wait for a condition
                return

    def open_count(self) -> int:
        """How many connections the server has not closed (nothing to read and no EOF)."""
        count = 0
        for sock in self.socks:
            sock.setblocking(False)
            try:
                peek = sock.recv(1) if isinstance(sock, ssl.SSLSocket) else sock.recv(1, socket.MSG_PEEK)
                count += bool(peek)  # bytes: an answer, still connected; b"": closed
            except (BlockingIOError, ssl.SSLWantReadError):
                count += 1
            except OSError:
                pass
            finally:
                sock.setblocking(True)
        return count

    def close(self) -> None:
        self._stop.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(5)
        for sock in self.socks:
            sock.close()


def timed(call: Callable[[], requests.Response], what: str) -> tuple[requests.Response, float]:
    start = time.monotonic()
    try:
        response = call()
    except requests.Timeout:
        pytest.fail(f"{what} did not answer within its timeout while slow clients were connected")
    return response, time.monotonic() - start


def assert_answers_quickly(get: Callable[..., requests.Response], post: Callable[..., requests.Response]) -> list:
    figures = []
    for _ in range(3):
        health, health_s = timed(lambda: get("/healthz", timeout=5), "/healthz")
        run, run_s = timed(
            lambda: post("/runs", {"job": "hello-world", "args": {"name": "Ada"}}, timeout=5), "POST /runs"
        )
        assert health.status_code == 200 and run.status_code == 202, (health.text, run.text)
        figures.append((round(health_s, 3), round(run_s, 3)))
    assert max(max(pair) for pair in figures) < ANSWER_WITHIN, figures
    return figures


def plain(server) -> Callable[[], socket.socket]:
    return lambda: socket.create_connection((server.host, server.port), timeout=5)


def test_200_clients_trickling_heads_hold_no_thread_healthz_and_submit_answer_within_1s(start_server):
    # One worker with the default number of threads: all 200 slow clients land on the same pool.
    server = start_server({"workers": 1, "threads": Settings.threads})
    trickle = Trickle(plain(server), SLOW_CLIENTS)
    try:
        wait_until(lambda: trickle.rounds >= 3, 10, 0.05, "every slow client to send its first bytes")
        figures = assert_answers_quickly(server.get, server.post)
        assert trickle.open_count() == SLOW_CLIENTS, "the slow clients were still connected while measured"
        print(f"(/healthz s, POST /runs s) with {SLOW_CLIENTS} slow clients: {figures}")
    finally:
        trickle.close()


def test_a_head_not_complete_within_header_timeout_is_dropped(start_server):
    server = start_server({"http": {"header_timeout": 2}})
    trickle = Trickle(plain(server), 5)
    try:
        start = time.monotonic()
        wait_until(lambda: trickle.open_count() == 0, 8, 0.1, "the server to drop the slow heads")
        assert time.monotonic() - start >= 1.0  # dropped for its timeout, not at once
    finally:
        trickle.close()


def read_response(sock: socket.socket, pending: bytearray) -> tuple[int, bytes]:
    """One Content-Length response from ``sock`` (bytes after it stay in ``pending``): (status, body)."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        assert chunk, bytes(pending)
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, head
        rest += chunk
    pending[:] = rest[length:]
    return int(head.split(b" ")[1]), rest[:length]


def test_heads_in_pieces_keep_alive_pipelining_and_bodies_still_work(server):
    body = json.dumps({"job": "hello-world", "args": {"name": "Ada"}}).encode()
    post = (
        b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = bytearray()
        for piece in (get[:5], get[5:20], get[20:]):  # one head in three sends
            sock.sendall(piece)
        assert read_response(sock, pending)[0] == 200
        sock.sendall(post)  # the same connection, kept alive: a head and a body
        status, answer = read_response(sock, pending)
        assert status == 202, answer
        sock.sendall(get + get + get[:10])  # pipelined, the third head unfinished
        assert [read_response(sock, pending)[0] for _ in range(2)] == [200, 200]
        sock.sendall(get[10:])
        assert read_response(sock, pending)[0] == 200


def test_a_head_larger_than_the_parser_s_limits_gets_431_and_is_closed(server):
    limits = SimpleNamespace(limit_request_line=8190, limit_request_fields=100, limit_request_field_size=16380)
    head = b"GET /healthz HTTP/1.1\r\nX-Big: "
    head += b"a" * (head_limit(limits) + 1 - len(head))  # flwd :serve's limits (web/serving.py), no blank line
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


@pytest.mark.nginx
def test_200_clients_trickling_heads_through_the_shipped_nginx_configuration_stall_nothing(start_server, nginx_proxy):
    # nginx reads heads itself and opens an upstream connection only for a whole one: this holds with
    # or without flwd's worker; the test proves the shipped configuration keeps it so.
    server = start_server({"workers": 1, "threads": Settings.threads})
    proxy = nginx_proxy(server.port)
    context = ssl.create_default_context(cafile=str(proxy.cert))

    def connect() -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    def call(method: str) -> Callable[..., requests.Response]:
        def send(path: str, body: object = None, timeout: float = 5) -> requests.Response:
            headers = {"Authorization": "Bearer dev-token"}
            return requests.request(
                method, proxy.url + path, json=body, headers=headers, verify=str(proxy.cert), timeout=timeout
            )

        return send

    trickle = Trickle(connect, SLOW_CLIENTS)
    try:
        wait_until(lambda: trickle.rounds >= 3, 10, 0.05, "every slow client to send its first bytes")
        figures = assert_answers_quickly(call("GET"), call("POST"))
        assert trickle.open_count() == SLOW_CLIENTS, "the slow clients were still connected while measured"
        print(f"through nginx, (/healthz s, POST /runs s) with {SLOW_CLIENTS} slow clients: {figures}")
    finally:
        trickle.close()
