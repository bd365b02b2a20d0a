"""Run outputs through a real server and the local CLI, on SQLite and PostgreSQL.

A step appends ``key=value`` (or ``key<<DELIM`` ... ``DELIM``) to ``$FLWD_OUTPUT``; later steps
see ``FLWD_OUTPUT_<KEY>``; the run shows ``outputs`` in GET /runs/ID, GET /runs, run.finished
and the export, secrets masked; bad files, types, sizes and environments fail the run by name.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.fixtures.helpers import local_flwd

pytestmark = pytest.mark.integration

PASSWORD = "hunter2-s3cret-value"
JOBS: dict[str, dict] = {
    "produce": {
        "name": "produce",
        "args": {"password": {"type": "string", "required": True, "secret": True}},
        "outputs": {"count": {"type": "integer"}, "ready": {"type": "boolean"}, "version": {}},
        "steps": [
            {
                "name": "first",
                "run": 'echo version=1.2.3 >> "$FLWD_OUTPUT"\n'
                'printf "notes<<EOF\\nline one\\nline = two\\nEOF\\n" >> "$FLWD_OUTPUT"\n'
                'echo "url=https://u:$FLWD_ARG_PASSWORD@h/" >> "$FLWD_OUTPUT"\n'
                'echo count=41 >> "$FLWD_OUTPUT"\n',
            },
            {
                "name": "second",
                "run": 'echo "saw $FLWD_OUTPUT_VERSION"\n'
                '[ "$FLWD_OUTPUT_URL" = "https://u:$FLWD_ARG_PASSWORD@h/" ] && echo real-url\n'
                'printf "count=42\\r\\nready=true\\r\\n" >> "$FLWD_OUTPUT"\n',
            },
        ],
    },
    "malformed": {
        "name": "malformed",
        "steps": [{"name": "writer", "run": 'echo ok=1 >> "$FLWD_OUTPUT"; echo "just text" >> "$FLWD_OUTPUT"'}],
    },
    "unended": {
        "name": "unended",
        "steps": [{"name": "writer", "run": 'printf "notes<<END\\nno end\\n" >> "$FLWD_OUTPUT"'}],
    },
    "mistyped": {
        "name": "mistyped",
        "outputs": {"count": {"type": "integer"}},
        "steps": [{"name": "writer", "run": 'echo count=many >> "$FLWD_OUTPUT"'}, {"name": "never", "run": "true"}],
    },
    "missing": {
        "name": "missing",
        "outputs": {"result": {"type": "string"}},
        "steps": [{"name": "quiet", "run": 'echo other=1 >> "$FLWD_OUTPUT"'}],
    },
    "clash": {
        "name": "clash",
        "steps": [
            {"name": "one", "run": 'echo name=a >> "$FLWD_OUTPUT"'},
            {"name": "two", "run": 'echo NAME=b >> "$FLWD_OUTPUT"'},
        ],
    },
    "oversize": {
        "name": "oversize",
        "steps": [
            {"name": "flood", "run": 'head -c 400000 /dev/zero | tr "\\0" x | sed "s/^/big=/" >> "$FLWD_OUTPUT"'}
        ],
    },
    "huge-env": {
        "name": "huge-env",
        "steps": [
            {"name": "big", "run": 'printf "blob=%0200000d\\n" 0 >> "$FLWD_OUTPUT"'},
            {"name": "after", "run": "echo must-not-run"},
        ],
    },
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory):
    from tests.fixtures.server import ServerProcess

    root = tmp_path_factory.mktemp("outputs")
    (root / "src" / "jobs").mkdir(parents=True)
    for name, data in JOBS.items():
        (root / "src" / "jobs" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    config = {
        "sources": [{"type": "local", "name": "s", "path": str(root / "src")}],
        "limits": {"max_run_outputs_bytes": 300000},
        "sse": {"heartbeat": 1.0},
    }
    url = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres")
        url = config["db_url"] = cluster.create_database()
    server = ServerProcess(root / "server", config, dev=True, env=None).start()
    yield server
    server.stop()
    if url is not None:
        cluster.drop_database(url)


EXPECTED = {
    "version": "1.2.3",
    "notes": "line one\nline = two",
    "url": "https://u:***@h/",
    "count": 42,
    "ready": True,
}


def finished(server, run_id: str) -> dict:
    return next(e["data"]["data"] for e in server.events(run_id) if e["event"] == "run.finished")


def lines(server, run_id: str) -> list[str]:
    return [e["data"]["data"]["line"] for e in server.events(run_id) if e["event"] == "step.output"]


def test_outputs_reach_later_steps_and_the_run_shows_them_typed_and_masked(server):
    run = server.submit("produce", {"password": PASSWORD})
    done = server.wait_finished(run["id"])
    assert done["status"] == "succeeded", done
    assert done["outputs"] == EXPECTED
    assert "saw 1.2.3" in lines(server, run["id"]) and "real-url" in lines(server, run["id"])
    assert finished(server, run["id"])["outputs"] == EXPECTED
    listed = next(r for r in server.get("/runs?limit=50").json()["runs"] if r["id"] == run["id"])
    assert listed["outputs"] == EXPECTED
    export = [json.loads(line) for line in server.get("/export").text.splitlines()]
    exported = next(r["run"] for r in export if r["record"] == "run" and r["run"]["id"] == run["id"])
    assert exported["outputs"] == EXPECTED
    for text in (server.get(f"/runs/{run['id']}").text, server.get("/export").text, server.logs()):
        assert PASSWORD not in text


def test_a_run_that_sets_none_shows_an_empty_object_and_a_failed_run_keeps_what_it_set(server):
    run = server.submit("hello-world", {"name": "Alice"})
    assert server.wait_finished(run["id"])["outputs"] == {}
    assert finished(server, run["id"])["outputs"] == {}
    run = server.submit("clash")  # its second step fails: the first step's output stays
    assert server.wait_finished(run["id"])["outputs"] == {"name": "a"}


@pytest.mark.parametrize(
    "job, words",
    [
        ("malformed", ["step 'writer'", "line 2", "neither key=value nor key<<DELIMITER"]),
        ("unended", ["step 'writer'", "line 1", "'END'"]),
        ("mistyped", ["step 'writer'", "output 'count' is declared integer"]),
        ("missing", ["declared output 'result' was not set"]),
        ("clash", ["step 'two'", "'name' and 'NAME' differ only in case"]),
        ("oversize", ["step 'flood'", "limits.max_run_outputs_bytes (300000)"]),
        ("huge-env", ["step 'after' could not start", "output 'blob'", "FLWD_OUTPUT_BLOB"]),
    ],
)
def test_bad_outputs_fail_the_run_with_a_reason_naming_them(server, job, words):
    run = server.submit(job)
    done = server.wait_finished(run["id"])
    assert done["status"] == "failed"
    for word in words:
        assert word in done["reason"], done["reason"]
    if job != "missing":  # the step's own log says it too, as a note of flwd
        assert any(word in line for line in lines(server, run["id"]) for word in words[-1:])
    assert "must-not-run" not in lines(server, run["id"])
    assert "Traceback" not in server.logs()


def test_the_local_cli_prints_outputs_after_the_run_and_its_json_has_them(server):
    result = local_flwd(server.config_path, "produce", "--password", PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "saw 1.2.3" in result.stdout
    assert "flwd: output version=1.2.3" in result.stderr
    assert "flwd: output count=42" in result.stderr
    assert 'flwd: output notes="line one\\nline = two"' in result.stderr
    assert "flwd: output url=https://u:***@h/" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    quiet = local_flwd(server.config_path, "produce", "--password", PASSWORD, "--quiet")
    assert "flwd: output" not in quiet.stderr
    listed = json.loads(local_flwd(server.config_path, ":runs", "--json", "--job", "produce").stdout)
    assert listed["runs"][0]["outputs"] == EXPECTED
