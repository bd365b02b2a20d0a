"""Operations that take no request body (sync a source, cancel a run, remove a source): no body or an empty one is
fine; any content, whatever its type and however it is framed, is a 415 problem that names why, and nothing
happens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

JOB = "name: {name}\nsteps:\n  - run: 'echo {name}'\n"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bodiless")
    (root / "src" / "jobs").mkdir(parents=True)
    (root / "src" / "jobs" / "first.yaml").write_text(JOB.format(name="first"))
    server = ServerProcess(root, {"limits": {"max_concurrent_runs": 1}}, dev=True, env=None)
    server.source_dir = root / "src"
    server.start()
    added = server.post("/sources", {"type": "local", "name": "folder", "path": str(root / "src")})
    assert added.status_code == 201, added.text
    yield server
    server.stop(timeout=30)


def chunks(data: bytes) -> Iterator[bytes]:
    yield data  # a generator: requests sends it with Transfer-Encoding: chunked


# (headers, data): every way of sending content to an operation that takes none
BODIES = {
    "json object": ({"Content-Type": "application/json"}, b'{"force": true}'),
    "empty json object": ({"Content-Type": "application/json"}, b"{}"),
    "text": ({"Content-Type": "text/plain"}, b"please"),
    "form": ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=1"),
    "no content type": ({}, b"x"),
    "chunked json": ({"Content-Type": "application/json"}, "chunked"),
}
EMPTY = {
    "no body": ({}, None),
    "empty json": ({"Content-Type": "application/json"}, b""),
    "empty text": ({"Content-Type": "text/plain"}, b""),
}


def send(server: ServerProcess, method: str, path: str, headers: dict[str, str], data: bytes | str | None):
    body = chunks(b'{"force": true}') if data == "chunked" else data
    return requests.request(method, server.url + path, data=body, headers={**server.headers(), **headers}, timeout=30)


def refused(response: requests.Response) -> None:
    assert response.status_code == 415, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "takes no request body" in response.json()["detail"], response.json()


@pytest.mark.parametrize("kind", BODIES)
def test_sync_refuses_a_body_and_does_not_sync(srv, kind):
    # A local folder is seen as it is at every look, so "not synced" shows in synced_at, not in the jobs.
    before = srv.get("/sources/folder").json()["source"]["synced_at"]
    refused(send(srv, "POST", "/sources/folder/sync", *BODIES[kind]))
    assert srv.get("/sources/folder").json()["source"]["synced_at"] == before  # no sync happened
    synced = srv.post("/sources/folder/sync")
    assert synced.status_code == 200, synced.text
    assert synced.json()["source"]["synced_at"] > before


@pytest.mark.parametrize("kind", EMPTY)
def test_sync_takes_no_body_or_an_empty_one(srv, kind):
    response = send(srv, "POST", "/sources/folder/sync", *EMPTY[kind])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("kind", BODIES)
def test_cancel_refuses_a_body_and_does_not_cancel(srv, kind):
    run = srv.submit("slow", {"seconds": 60})
    refused(send(srv, "POST", f"/runs/{run['id']}/cancel", *BODIES[kind]))
    assert srv.run_status(run["id"]) in ("queued", "running")
    assert srv.post(f"/runs/{run['id']}/cancel").status_code == 202
    assert srv.wait_finished(run["id"])["status"] == "cancelled"


@pytest.mark.parametrize("kind", EMPTY)
def test_cancel_takes_no_body_or_an_empty_one(srv, kind):
    run = srv.submit("slow", {"seconds": 60})
    assert send(srv, "POST", f"/runs/{run['id']}/cancel", *EMPTY[kind]).status_code == 202
    assert srv.wait_finished(run["id"])["status"] == "cancelled"


@pytest.mark.parametrize("kind", BODIES)
def test_remove_refuses_a_body_and_keeps_the_source(srv, kind):
    refused(send(srv, "DELETE", "/sources/folder", *BODIES[kind]))
    assert srv.get("/sources/folder").status_code == 200


def test_remove_takes_no_body_or_an_empty_one(srv):
    for kind, (headers, data) in EMPTY.items():
        added = srv.post("/sources", {"type": "local", "name": "gone", "path": str(srv.source_dir)})
        assert added.status_code == 201, added.text
        assert send(srv, "DELETE", "/sources/gone", headers, data).status_code == 204, kind
        assert srv.get("/sources/gone").status_code == 404


def test_a_body_on_an_unknown_run_or_source_is_still_refused_first(srv):
    """The body is judged before the route looks anything up, so the answer does not depend on what exists."""
    refused(send(srv, "POST", "/runs/does-not-exist/cancel", *BODIES["json object"]))
    refused(send(srv, "POST", "/sources/nowhere/sync", *BODIES["json object"]))


def test_a_refused_body_leaves_the_connection_usable(srv):
    with requests.Session() as session:
        session.headers.update(srv.headers())
        first = session.post(srv.url + "/sources/folder/sync", data=b"x" * 100_000, timeout=30)
        assert first.status_code == 415
        assert session.get(srv.url + "/sources/folder", timeout=30).status_code == 200


def test_a_chunked_stream_ticket_request_is_read_not_ignored(srv):
    """POST /stream-tickets takes an optional body; a chunked one (no Content-Length) must count like any other."""
    run = srv.submit("first")
    headers = {**srv.headers(), "Content-Type": "application/json"}
    for run_id, status in ((run["id"], 201), ("does-not-exist", 404)):
        body = chunks(f'{{"run": "{run_id}"}}'.encode())
        response = requests.post(srv.url + "/stream-tickets", data=body, headers=headers, timeout=30)
        assert response.status_code == status, response.text
        if status == 201:
            assert response.json()["run_id"] == run_id
    refused = requests.post(srv.url + "/stream-tickets", data=chunks(b'{"bogus": 1}'), headers=headers, timeout=30)
    assert refused.status_code == 422, refused.text
    empty = requests.post(srv.url + "/stream-tickets", headers=srv.headers(), timeout=30)
    assert empty.status_code == 201 and empty.json()["run_id"] is None
