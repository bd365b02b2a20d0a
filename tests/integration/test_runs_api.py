"""Runs over HTTP against a real server: bad input, plans, idempotency, cancel, timeout."""

from __future__ import annotations

import pytest
import requests

from tests.fixtures.helpers import processes_of_run, wait_until

pytestmark = pytest.mark.integration


def problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    return body


def run_count(server) -> int:
    return len(server.get("/runs?limit=500").json()["runs"])


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared(request, tmp_path_factory):
    """One server for the read-mostly tests of this module, on each backend."""
    from tests.fixtures.server import ServerProcess

    config = {"sse": {"heartbeat": 1.0}, "workers": 2}
    url = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres")
        url = cluster.create_database()
        config["db_url"] = url
    server = ServerProcess(tmp_path_factory.mktemp("runs-api"), config, dev=True, env=None).start()
    yield server
    server.stop()
    if url is not None:
        cluster.drop_database(url)


BAD_REQUESTS = [
    (
        "malformed JSON",
        {"data": b'{"job": "hello-world",', "headers": {"Content-Type": "application/json"}},
        400,
        "not valid JSON",
    ),
    (
        "wrong content type",
        {"data": b"job=hello-world", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        415,
        "Content-Type: application/json",
    ),
    ("no content type", {"data": b'{"job": "hello-world"}'}, 415, "Content-Type"),
    ("not an object", {"json": ["hello-world"]}, 400, "JSON object"),
    ("unknown job", {"json": {"job": "no-such-job"}}, 404, "no-such-job"),
    ("unknown source", {"json": {"job": "nope:hello-world"}}, 404, "no source named 'nope'"),
    ("invalid args", {"json": {"job": "hello-world", "args": {"name": "R2-D2", "times": 9}}}, 422, "args.name"),
    ("missing required arg", {"json": {"job": "hello-world", "args": {}}}, 422, "args.name"),
    ("unknown field", {"json": {"job": "hello-world", "args": {"name": "A"}, "colour": 1}}, 422, "colour"),
    ("args not an object", {"json": {"job": "hello-world", "args": "name=A"}}, 422, "args"),
    ("bad profile", {"json": {"job": "hello-world", "args": {"name": "A"}, "profile": "yolo"}}, 422, "profile"),
    (
        "NaN",
        {"data": b'{"job": "hello-world", "args": {"times": NaN}}', "headers": {"Content-Type": "application/json"}},
        400,
        "NaN",
    ),
    (
        "nesting bomb",
        {
            "data": b'{"job": "x", "args": ' + b"[" * 100000 + b"]" * 100000 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "nested",
    ),
    ("not UTF-8", {"data": b'{"job": "\xff"}', "headers": {"Content-Type": "application/json"}}, 400, "UTF-8"),
]


@pytest.mark.parametrize(("what", "kwargs", "status", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_problem_naming_it_and_writes_nothing(shared, what, kwargs, status, words):
    before = run_count(shared)
    for path in ("/plans", "/runs"):
        headers = {**shared.headers(), **kwargs.get("headers", {})}
        response = requests.post(shared.url + path, timeout=10, **{**kwargs, "headers": headers})
        body = problem(response, status)
        assert words in body["detail"] or words in str(body.get("errors")), body
    assert run_count(shared) == before


def test_invalid_args_name_every_field(shared):
    body = problem(shared.post("/runs", {"job": "hello-world", "args": {"name": "R2-D2", "times": 9, "x": 1}}), 422)
    assert {e["field"] for e in body["errors"]} == {"args.name", "args.times", "args.x"}


def test_a_ten_megabyte_body_is_refused_with_413(shared):
    big = b'{"job": "hello-world", "args": {"name": "' + b"A" * (10 * 1024 * 1024) + b'"}}'
    before = run_count(shared)
    response = requests.post(
        shared.url + "/runs", data=big, headers={**shared.headers(), "Content-Type": "application/json"}, timeout=30
    )
    assert "body is larger" in problem(response, 413)["detail"]

    def chunks():
        yield b'{"job": "hello-world", "args": {"name": "'
        for _ in range(10):
            yield b"A" * (1024 * 1024)
        yield b'"}}'

    response = requests.post(
        shared.url + "/runs",
        data=chunks(),
        headers={**shared.headers(), "Content-Type": "application/json"},
        timeout=30,
    )
    problem(response, 413)  # chunked, no Content-Length: still refused
    assert run_count(shared) == before


def test_unknown_runs_and_routes_are_404_problems(shared):
    assert "no run with id" in problem(shared.get("/runs/does-not-exist"), 404)["detail"]
    problem(shared.get("/runs/does-not-exist/events"), 404)
    problem(shared.post("/runs/does-not-exist/cancel"), 404)
    problem(shared.get("/no/such/route"), 404)


def test_wrong_method_is_405_with_allow(shared):
    response = requests.delete(shared.url + "/jobs", headers=shared.headers(), timeout=10)
    problem(response, 405)
    assert "GET" in response.headers["Allow"]


def test_bad_query_parameters_are_400(shared):
    problem(shared.get("/runs?status=exploded"), 400)
    problem(shared.get("/runs?limit=0"), 400)
    problem(shared.get("/runs?limit=abc"), 400)
    problem(shared.get("/runs/x/events?after=-1"), 400)
    problem(shared.get("/events", headers={"Last-Event-ID": "9" * 40}), 400)


def test_missing_token_is_401_with_www_authenticate(shared):
    response = requests.get(shared.url + "/jobs", timeout=10)
    problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_plan_digest_runs_exactly_what_was_planned(shared):
    plan = shared.post("/plans", {"job": "hello-world", "args": {"name": "Alice"}}).json()["plan"]
    run = shared.submit("hello-world", {"name": "Alice"}, plan=plan["digest"])
    assert run["plan_digest"] == plan["digest"]
    changed = shared.post("/runs", {"job": "hello-world", "args": {"name": "Bob"}, "plan": plan["digest"]})
    body = problem(changed, 409)
    assert body["planned"] == plan["digest"] and body["current"] != plan["digest"]


def test_an_idempotency_key_replays_the_first_run(shared):
    body = {"job": "hello-world", "args": {"name": "Alice"}}
    key = {"Idempotency-Key": "deploy-42"}
    first = shared.post("/runs", body, headers=key)
    again = shared.post("/runs", body, headers=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["run"]["id"] == again.json()["run"]["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = shared.post("/runs", {**body, "args": {"name": "Bob"}}, headers=key)
    assert "different request body" in problem(other, 422)["detail"]
    assert len([r for r in shared.get("/runs?limit=500").json()["runs"] if r["id"] == first.json()["run"]["id"]]) == 1


def test_runs_list_filters_and_paginates(shared):
    ids = [shared.submit("noop")["id"] for _ in range(3)]
    for run_id in ids:
        shared.wait_finished(run_id)
    page = shared.get("/runs?job=noop&limit=2").json()
    assert len(page["runs"]) == 2 and page["next"]
    rest = shared.get(f"/runs?job=noop&limit=2&cursor={page['next']}").json()
    seen = [r["id"] for r in page["runs"] + rest["runs"]]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))
    assert all(r["status"] == "succeeded" for r in shared.get("/runs?status=succeeded").json()["runs"])


def test_a_failing_job_ends_failed_with_its_exit_code_and_stops(shared):
    run = shared.submit("fail", {"code": 4})
    done = shared.wait_finished(run["id"])
    assert (done["status"], done["exit_code"]) == ("failed", 4)
    lines = [e["data"]["data"]["line"] for e in shared.events(run["id"]) if e.get("event") == "step.output"]
    assert lines == ["about to fail with 4"]  # the second step never ran


def test_stderr_lines_are_tagged(shared):
    run = shared.submit("stderr", {"lines": 2})
    outputs = [e["data"]["data"] for e in shared.events(run["id"]) if e.get("event") == "step.output"]
    assert sorted((o["stream"], o["line"]) for o in outputs) == [
        ("stderr", "err 1"),
        ("stderr", "err 2"),
        ("stdout", "out 1"),
        ("stdout", "out 2"),
    ]


def test_cancel_ends_a_running_run_and_leaves_no_process(shared):
    run = shared.submit("slow", {"seconds": 300})
    wait_until(lambda: processes_of_run(run["id"]), 10, message="the job's processes")
    cancelled = shared.post(f"/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202
    done = shared.wait_finished(run["id"], timeout=15)
    assert done["status"] == "cancelled" and "cancelled by dev" in done["reason"]
    assert processes_of_run(run["id"]) == []
    again = shared.post(f"/runs/{run['id']}/cancel")
    problem(again, 409)


def test_cancel_of_a_queued_run_is_immediate(start_server):
    server = start_server({"limits": {"max_concurrent_runs": 1}})
    blocker = server.submit("slow", {"seconds": 300})
    queued = server.submit("hello-world", {"name": "Q"})
    assert server.run_status(queued["id"]) == "queued"
    assert server.post(f"/runs/{queued['id']}/cancel").json()["run"]["status"] == "cancelled"
    server.post(f"/runs/{blocker['id']}/cancel")
    assert server.wait_finished(blocker["id"])["status"] == "cancelled"
    assert server.run_status(queued["id"]) == "cancelled"  # it never started


def test_a_job_timeout_ends_the_run_timed_out(start_server, tmp_path):
    jobs = tmp_path / "src" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "sleepy.yaml").write_text(
        "name: sleepy\ntimeout: 1\nsteps:\n  - run: 'echo start; sleep 300 & sleep 300'\n"
    )
    server = start_server({"sources": [{"type": "local", "name": "mine", "path": str(tmp_path / "src")}]})
    run = server.submit("sleepy")
    done = server.wait_finished(run["id"], timeout=15)
    assert done["status"] == "timed_out" and "timeout of 1s" in done["reason"]
    assert processes_of_run(run["id"]) == []
