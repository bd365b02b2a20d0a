"""Job-scoped tokens through a real server: ``runs:write:SOURCE:JOB`` and ``runs:read:SOURCE:JOB``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fixtures.helpers import read_stream, sse_events, wait_until
from tests.fixtures.server import ServerProcess
from tests.fixtures.tokens import JwtAuth

pytestmark = pytest.mark.integration

JOB = "steps:\n  - name: say\n    run: echo {name}\n"
LAYOUT = {"bar": ("sleepy", "sleepy2", "deploy-web"), "barn": ("sleepy",)}


@pytest.fixture(scope="module")
def scoped(tmp_path_factory: pytest.TempPathFactory, module_jwt_auth: JwtAuth) -> Iterator[dict[str, Any]]:
    """A server with sources ``bar`` and ``barn``, a source event, then one finished run of each of their jobs."""
    root = tmp_path_factory.mktemp("job-scopes")
    sources = []
    for source, jobs in LAYOUT.items():
        (root / source / "jobs").mkdir(parents=True)
        for job in jobs:
            (root / source / "jobs" / f"{job}.yaml").write_text(f"name: {job}\n" + JOB.format(name=job))
        sources.append({"type": "local", "name": source, "path": str(root / source)})
    server = ServerProcess(
        root, {"auth": module_jwt_auth.config, "sources": sources, "sse": {"heartbeat": 1.0}}, dev=False, env=None
    )
    server.start()
    admin = module_jwt_auth.token("runs:read runs:write jobs:read sources:write")
    synced = server.post("/sources/bar/sync", token=admin)  # a source.synced event (no run) before the runs'
    assert synced.status_code < 300, synced.text
    runs = {}
    for source, jobs in LAYOUT.items():
        for job in jobs:
            reply = server.post("/runs", {"job": f"{source}:{job}"}, token=admin)
            assert reply.status_code == 202, reply.text
            runs[f"{source}:{job}"] = reply.json()["run"]["id"]
    for run_id in runs.values():
        wait_until(lambda r=run_id: server.get(f"/runs/{r}", token=admin).json()["run"]["status"] == "succeeded")
    yield {"server": server, "runs": runs, "admin": admin}
    server.stop(timeout=30)


def problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:500])
    return response.json()


def test_a_narrowed_write_token_submits_its_job_only(scoped, module_jwt_auth):
    server = scoped["server"]
    token = module_jwt_auth.token("runs:write:bar:sleepy")
    assert server.post("/runs", {"job": "bar:sleepy"}, token=token).status_code == 202
    assert server.post("/runs", {"job": "sleepy", "source": "bar"}, token=token).status_code == 202
    for job in ("bar:sleepy2", "barn:sleepy", "bar:deploy-web"):
        body = problem(server.post("/runs", {"job": job}, token=token), 403)
        assert body["scope"] == f"runs:write:{job}", body
    glob = module_jwt_auth.token("runs:write:*:deploy-*")
    assert server.post("/runs", {"job": "bar:deploy-web"}, token=glob).status_code == 202
    assert problem(server.post("/runs", {"job": "bar:sleepy"}, token=glob), 403)["scope"] == "runs:write:bar:sleepy"


def test_a_narrowed_write_token_cancels_runs_of_its_job_only(scoped, module_jwt_auth):
    server, runs = scoped["server"], scoped["runs"]
    token = module_jwt_auth.token("runs:write:bar:sleepy")
    body = problem(server.post(f"/runs/{runs['bar:sleepy2']}/cancel", token=token), 403)
    assert body["scope"] == "runs:write:bar:sleepy2"
    assert server.post(f"/runs/{runs['bar:sleepy']}/cancel", token=token).status_code == 409  # finished: allowed


def test_a_narrowed_read_token_lists_and_gets_only_its_runs(scoped, module_jwt_auth):
    server, runs = scoped["server"], scoped["runs"]
    token = module_jwt_auth.token("runs:read:bar:sleepy* runs:read:barn:*")
    seen, cursor = [], None
    while True:  # pages of one: the filter is in the query, so every page is full and the cursor right
        reply = server.get("/runs", token=token, params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert reply.status_code == 200, reply.text
        page = reply.json()
        assert len(page["runs"]) == 1 or (not page["runs"] and page["next"] is None)
        seen += [(r["source"], r["job"]) for r in page["runs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert {s for s in seen} == {("bar", "sleepy"), ("bar", "sleepy2"), ("barn", "sleepy")}
    assert server.get(f"/runs/{runs['bar:sleepy2']}", token=token).status_code == 200
    assert problem(server.get(f"/runs/{runs['bar:deploy-web']}", token=token), 404)
    assert problem(server.get(f"/runs/{runs['bar:deploy-web']}/events", token=token), 404)
    assert problem(server.get(f"/runs/{runs['bar:deploy-web']}/artifacts", token=token), 404)
    exact = module_jwt_auth.token("runs:read:bar:sleepy")
    listed = server.get("/runs", token=exact).json()["runs"]
    assert listed and {(r["source"], r["job"]) for r in listed} == {("bar", "sleepy")}
    assert server.get("/runs", token=module_jwt_auth.token("runs:write:bar:sleepy")).status_code == 403


def test_a_narrowed_read_token_streams_only_its_runs_events(scoped, module_jwt_auth):
    server, runs = scoped["server"], scoped["runs"]
    for scopes, runless in (("runs:read:bar:sleepy", False), ("runs:read:bar:sleep* sources:read", True)):
        headers = module_jwt_auth.headers(scopes)
        url = f"{server.url}/events"
        mine = read_stream(f"{server.url}/runs/{runs['bar:sleepy']}/events", headers)
        last = int(mine[-1]["id"])
        events = read_stream(url, headers, until=lambda e, last=last: int(e["id"]) >= last, timeout=20)
        run_ids = {e["data"].get("run_id") for e in events if e["event"].startswith("run.")}
        allowed = {runs["bar:sleepy"], runs["bar:sleepy2"]} if runless else {runs["bar:sleepy"]}
        assert run_ids and run_ids <= allowed, (scopes, run_ids)
        assert any(e["event"].startswith("source.") for e in events) is runless, scopes
        filtered = read_stream(url + "?type=run.*", headers, until=lambda e, last=last: int(e["id"]) >= last)
        assert {e["data"].get("run_id") for e in filtered} <= allowed


def test_a_stream_ticket_carries_the_narrowed_scopes_of_its_asker(scoped, module_jwt_auth):
    server, runs = scoped["server"], scoped["runs"]
    token = module_jwt_auth.token("runs:read:bar:sleepy")
    assert problem(server.post("/stream-tickets", {"run": runs["barn:sleepy"]}, token=token), 404)
    ticket = server.post("/stream-tickets", {}, token=token).json()["ticket"]
    mine = read_stream(f"{server.url}/runs/{runs['bar:sleepy']}/events", module_jwt_auth.headers("runs:read"))
    last = int(mine[-1]["id"])
    events = read_stream(f"{server.url}/events?ticket={ticket}", {}, until=lambda e: int(e["id"]) >= last)
    assert {e["data"].get("run_id") for e in events if e["event"].startswith("run.")} == {runs["bar:sleepy"]}
    assert not any(e["event"].startswith("source.") for e in events)
    other = requests.get(f"{server.url}/runs/{runs['barn:sleepy']}/events?ticket={ticket}", timeout=10)
    assert other.status_code == 404


def test_auth_me_shows_narrowed_scopes_as_they_are(scoped, module_jwt_auth):
    reply = scoped["server"].get("/auth/me", token=module_jwt_auth.token("runs:write:*:deploy-* runs:read:bar:*"))
    assert reply.json()["scopes"] == ["runs:read:bar:*", "runs:write:*:deploy-*"]


@pytest.mark.parametrize("scopes", ["runs:read:bar:sleepy", "runs:read:b*r:sleep*"])
def test_a_narrowed_live_stream_gets_only_its_runs_events_as_they_happen(scoped, module_jwt_auth, scopes):
    """The live path (the broadcaster's routing): exact names filed under their job, globs under one key."""
    server, admin = scoped["server"], scoped["admin"]
    start = max(
        int(e["id"])
        for e in read_stream(
            f"{server.url}/runs/{scoped['runs']['barn:sleepy']}/events", {"Authorization": f"Bearer {admin}"}
        )
    )
    url = f"{server.url}/events?after={start}"
    with requests.get(url, headers=module_jwt_auth.headers(scopes), stream=True, timeout=(5, 30)) as live:
        assert live.status_code == 200
        others = [
            server.post("/runs", {"job": job}, token=admin).json()["run"]["id"]
            for job in ("barn:sleepy", "bar:sleepy2")
        ]
        mine = server.post("/runs", {"job": "bar:sleepy"}, token=admin).json()["run"]["id"]
        received = []
        for event in sse_events(live.iter_lines(chunk_size=None)):
            if "comment" in event:
                continue
            received.append(event)
            if event["event"] == "run.finished" and event["data"]["run_id"] == mine:
                break
    seen = {e["data"].get("run_id") for e in received}
    assert mine in seen and others[0] not in seen  # barn:sleepy: never
    for run_id in seen:  # every event is of a granted job (earlier tests' runs of bar:sleepy may still be going)
        run = server.get(f"/runs/{run_id}", token=admin).json()["run"]
        assert (run["source"], run["job"]) in {("bar", "sleepy"), ("bar", "sleepy2")}, run
        assert "*" in scopes or run["job"] == "sleepy", run
