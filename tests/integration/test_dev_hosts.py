"""DNS rebinding: a ``--dev`` server answers only requests whose ``Host`` is a loopback name or address, or a name
listed in ``dev_allowed_hosts``; every other request (a web page whose DNS name now points at 127.0.0.1) is a 421
problem that changes nothing.  Servers without ``--dev`` take any Host (they sit behind a proxy with real names)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("dev-hosts")
    (root / "src" / "jobs").mkdir(parents=True)
    server = ServerProcess(root, {"dev_allowed_hosts": ["DevBox.example", "pinned.example:9"]}, dev=True, env=None)
    server.source_path = str(root / "src")
    server.start()
    yield server
    server.stop(timeout=30)


def call(server: ServerProcess, method: str, path: str, host: str, body: object = None) -> requests.Response:
    headers = {"Authorization": "Bearer dev-token", "Host": host}
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=10)


def source_names(server: ServerProcess) -> list[str]:
    return [s["name"] for s in server.get("/sources").json()["sources"]]


def refused(response: requests.Response, host: str | None) -> dict:
    assert response.status_code == 421, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 421 and problem["setting"] == "dev_allowed_hosts"
    assert problem["host"] == host
    assert "dev_allowed_hosts" in problem["detail"]
    if host:
        assert repr(host) in problem["detail"]
    return problem


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "localhost.evil.example:{port}",
        "127.0.0.1.evil.example",
        "evil.localhost:{port}",
        "10.0.0.1:{port}",
        "[::ffff:7f00:1]:{port}",
        "pinned.example:{port}",  # listed with another port
        "devbox.example:{port}, localhost",
        "localhost:{port}@evil.example",
    ],
)
def test_a_foreign_host_is_misdirected_and_changes_nothing(dev, host):
    host = host.format(port=dev.port)
    runs_before = len(dev.get("/runs?limit=500").json()["runs"])
    added = call(dev, "POST", "/sources", host, {"type": "local", "name": "rebound", "path": dev.source_path})
    refused(added, host)
    refused(call(dev, "POST", "/runs", host, {"job": "hello-world", "args": {"name": "x"}}), host)
    refused(call(dev, "GET", "/jobs", host), host)
    refused(call(dev, "GET", "/healthz", host), host)
    refused(call(dev, "GET", "/no-such-route", host), host)
    assert "rebound" not in source_names(dev)
    assert len(dev.get("/runs?limit=500").json()["runs"]) == runs_before


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:{port}",
        "127.0.0.1",
        "127.3.4.5:{port}",
        "localhost:{port}",
        "LOCALHOST",
        "[::1]:{port}",
        "[::1]",
        "devbox.example",
        "DEVBOX.example:{port}",
        "pinned.example:9",
    ],
)
def test_loopback_and_listed_hosts_are_served(dev, host):
    host = host.format(port=dev.port)
    assert call(dev, "GET", "/jobs", host).status_code == 200
    assert call(dev, "GET", "/healthz", host).status_code == 200


def test_a_listed_host_can_change_things(dev):
    added = call(
        dev, "POST", "/sources", "devbox.example:1234", {"type": "local", "name": "ok", "path": dev.source_path}
    )
    assert added.status_code == 201, added.text
    assert "ok" in source_names(dev)
    assert call(dev, "DELETE", "/sources/ok", f"localhost:{dev.port}").status_code == 204


def raw(server: ServerProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_request_without_host_is_refused(dev):
    """HTTP/1.0 allows no Host; the server cannot tell who it was meant for, so it refuses."""
    answer = raw(dev, b"GET /jobs HTTP/1.0\r\nAuthorization: Bearer dev-token\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 421") or head.startswith(b"HTTP/1.1 421"), answer[:300]
    assert b"application/problem+json" in head and b"dev_allowed_hosts" in body
    answer = raw(dev, b"GET /jobs HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].endswith(b"200 OK"), answer[:300]


def test_a_server_without_dev_takes_any_host(start_server, jwt_auth):
    server = start_server({"auth": jwt_auth.config}, dev=False)
    headers = {**jwt_auth.headers("jobs:read"), "Host": "flwd.example.org"}
    assert requests.get(server.url + "/jobs", headers=headers, timeout=10).status_code == 200
