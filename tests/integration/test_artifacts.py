"""Run artifacts through a real server, on SQLite and on PostgreSQL with two nodes sharing ``artifacts.dir``.

A job writes files to ``$FLWD_ARTIFACTS``; when the run ends they are listed at
``GET /runs/ID/artifacts`` and served at ``GET /runs/ID/artifacts/PATH`` (ranges,
ETag, downloads that no browser renders), by any node; a symlink, a FIFO and a
name with a control character are refused with events, the quota keeps what
fits; the CLI lists and downloads the same way locally and through a server.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.helpers import cli, local_flwd, wait_until
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

BLOB = bytes(range(256)) * 400  # 102,400 bytes, known
NFD_NAME = unicodedata.normalize("NFD", "café.txt")
JOBS = {
    "make": (
        "name: make\nargs:\n  text: {type: string, default: hello}\nsteps:\n  - run: |\n"
        '      mkdir -p "$FLWD_ARTIFACTS/sub dir"\n'
        '      printf "%s\\n" "$FLWD_ARG_TEXT" > "$FLWD_ARTIFACTS/report.txt"\n'
        '      python3 -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 400)" '
        '> "$FLWD_ARTIFACTS/sub dir/blob.bin"\n'
        f'      printf "nfd" > "$FLWD_ARTIFACTS/{NFD_NAME}"\n'
        '      ln -s /etc/passwd "$FLWD_ARTIFACTS/passwd"\n'
        '      mkfifo "$FLWD_ARTIFACTS/pipe"\n'
        "      printf x > \"$FLWD_ARTIFACTS/$(printf 'bad\\001name')\"\n"
    ),
    "quota": (
        "name: quota\nsteps:\n  - run: |\n"
        '      head -c 300000 /dev/zero > "$FLWD_ARTIFACTS/0big"\n'
        '      for i in 0 1 2 3 4 5 6 7; do head -c 30000 /dev/zero | tr "\\0" "$i" > "$FLWD_ARTIFACTS/a$i"; done\n'
    ),
    "hides": (
        "name: hides\nargs:\n  token: {type: string, secret: true}\nsteps:\n"
        '  - run: \'echo x > "$FLWD_ARTIFACTS/key-$FLWD_ARG_TOKEN.txt"; echo y > "$FLWD_ARTIFACTS/fine.txt"\'\n'
    ),
    "fails": "name: fails\nsteps:\n  - run: 'echo partial > \"$FLWD_ARTIFACTS/log.txt\"; exit 3'\n",
}
LIMITS = {"max_artifact_bytes": 200_000, "max_artifact_files": 5}


class Cluster:
    """One node on SQLite, or two on one PostgreSQL database sharing one artifacts directory."""

    def __init__(self, root: Path, nodes: list[ServerProcess], artifacts: Path) -> None:
        self.root = root
        self.nodes = nodes
        self.artifacts = artifacts

    @property
    def a(self) -> ServerProcess:
        return self.nodes[0]

    @property
    def b(self) -> ServerProcess:
        return self.nodes[-1]  # the node that serves what node A collected (A itself on SQLite)

    def finished(self, job: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        run = self.a.submit(f"t:{job}", args or {})
        return self.a.wait_finished(run["id"], timeout=60)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp(f"artifacts-{request.param}")
    folder = root / "jobs-src"
    (folder / "jobs").mkdir(parents=True)
    for name, text in JOBS.items():
        (folder / "jobs" / f"{name}.yaml").write_text(text)
    shared = root / "shared-artifacts"  # one mount, as several nodes would have it
    config: dict[str, Any] = {
        "limits": LIMITS,
        "artifacts": {"dir": str(shared)},
        "sources": [{"type": "local", "name": "t", "path": str(folder)}],
    }
    url = None
    if request.param == "postgres":
        postgres = request.getfixturevalue("postgres")
        url = postgres.create_database()
        config["db_url"] = url
    names = ("a", "b") if url else ("a",)
    nodes = [ServerProcess(root / name, config, dev=True, env=None) for name in names]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready(60)
        yield Cluster(root, nodes, shared)
    finally:
        for node in nodes:
            if node.proc is not None:
                node.stop(timeout=30)
        if url:
            request.getfixturevalue("postgres").drop_database(url)


@pytest.fixture(scope="module")
def made(cluster: Cluster) -> dict[str, Any]:
    run = cluster.finished("make", {"text": "hello artifact"})
    assert run["status"] == "succeeded", run
    return run


def events_of(node: ServerProcess, run_id: str, type_: str) -> list[dict[str, Any]]:
    return [e["data"]["data"] for e in node.events(run_id) if e["event"] == type_]


def test_a_runs_files_are_listed_with_sizes_digests_and_links_by_another_node(cluster, made):
    response = cluster.b.get(f"/runs/{made['id']}/artifacts")
    assert response.status_code == 200, response.text
    listed = response.json()["artifacts"]
    assert [a["path"] for a in listed] == ["café.txt", "report.txt", "sub dir/blob.bin"]  # NFC, sorted
    by_path = {a["path"]: a for a in listed}
    assert by_path["sub dir/blob.bin"]["size"] == len(BLOB)
    assert by_path["sub dir/blob.bin"]["sha256"] == hashlib.sha256(BLOB).hexdigest()
    assert by_path["report.txt"]["sha256"] == hashlib.sha256(b"hello artifact\n").hexdigest()
    assert by_path["sub dir/blob.bin"]["links"]["self"] == f"/runs/{made['id']}/artifacts/sub%20dir/blob.bin"
    assert by_path["café.txt"]["links"]["self"] == f"/runs/{made['id']}/artifacts/caf%C3%A9.txt"
    # Stored by digest in the shared directory, never as blobs in the database.
    assert (cluster.artifacts / hashlib.sha256(BLOB).hexdigest()[:2] / hashlib.sha256(BLOB).hexdigest()).exists()


def test_a_download_is_the_file_as_an_attachment_no_browser_renders(cluster, made):
    response = cluster.b.get(f"/runs/{made['id']}/artifacts/sub%20dir/blob.bin")
    assert response.status_code == 200, response.text
    assert response.content == BLOB
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Disposition"] == "attachment; filename=\"blob.bin\"; filename*=UTF-8''blob.bin"
    assert response.headers["ETag"] == f'"{hashlib.sha256(BLOB).hexdigest()}"'
    assert response.headers["Accept-Ranges"] == "bytes"
    named = cluster.b.get(f"/runs/{made['id']}/artifacts/caf%C3%A9.txt")
    assert named.content == b"nfd"
    assert named.headers["Content-Disposition"] == "attachment; filename=\"caf_.txt\"; filename*=UTF-8''caf%C3%A9.txt"


def test_ranges_and_if_none_match(cluster, made):
    path = f"/runs/{made['id']}/artifacts/sub%20dir/blob.bin"
    part = cluster.b.get(path, headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206
    assert part.content == BLOB[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{len(BLOB)}"
    tail = cluster.b.get(path, headers={"Range": "bytes=-10"})
    assert (tail.status_code, tail.content) == (206, BLOB[-10:])
    beyond = cluster.b.get(path, headers={"Range": f"bytes={len(BLOB)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(BLOB)}"
    assert cluster.b.get(path, headers={"Range": "bytes=0-1,5-9"}).status_code == 416  # one range only
    etag = cluster.b.get(path).headers["ETag"]
    cached = cluster.b.get(path, headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cluster.b.get(path, headers={"If-None-Match": '"other"'}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "sub%20dir/../report.txt",
        "%2e%2e/%2e%2e/etc/passwd",
        "sub%20dir%2Fblob.bin%2F..%2F..%2Freport.txt",
        "..%2F..%2Fflwd.db",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "passwd",
        "pipe",
        "report.txt%00",
    ],
)
def test_no_path_leaves_the_runs_artifacts(cluster, made, path):
    assert cluster.b.get(f"/runs/{made['id']}/artifacts/report.txt").status_code == 200  # the route serves
    url = f"{cluster.b.url}/runs/{made['id']}/artifacts/{path}"
    session = requests.Session()
    prepared = requests.Request("GET", url, headers=cluster.b.headers()).prepare()
    prepared.url = url  # as written: requests would otherwise resolve the dots
    response = session.send(prepared, timeout=10)
    assert response.status_code == 404, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    # Looked up among the run's artifacts (or no route at all for a path that starts with a slash).
    assert response.json()["type"] in ("urn:flwd:error:artifact-not-found", "urn:flwd:error:http-404")
    assert "root:" not in response.text


def test_another_runs_path_or_an_unknown_run_is_a_404(cluster, made):
    other = cluster.finished("fails")
    assert cluster.b.get(f"/runs/{other['id']}/artifacts/report.txt").status_code == 404
    assert cluster.b.get("/runs/nope/artifacts").json()["type"] == "urn:flwd:error:run-not-found"
    assert cluster.b.get("/runs/nope/artifacts/report.txt").status_code == 404
    assert cluster.b.get("/runs/nope%00/artifacts").status_code == 404  # NUL: PostgreSQL would refuse the query
    assert events_of(cluster.a, other["id"], "artifacts.collected") == [{"files": 1, "bytes": 8, "refused": 0}]
    # A failed run keeps what it wrote.
    assert [a["path"] for a in cluster.b.get(f"/runs/{other['id']}/artifacts").json()["artifacts"]] == ["log.txt"]


def test_a_symlink_a_fifo_and_a_control_character_are_refused_with_events(cluster, made):
    refused = {e["path"]: e["reason"] for e in events_of(cluster.a, made["id"], "artifact.refused")}
    assert set(refused) == {"passwd", "pipe", "bad\x01name"}
    assert "symbolic link" in refused["passwd"]
    assert "not a regular file" in refused["pipe"]
    assert "control character" in refused["bad\x01name"]
    (summary,) = events_of(cluster.a, made["id"], "artifacts.collected")
    assert summary == {"files": 3, "bytes": len(BLOB) + len("hello artifact\n") + 3, "refused": 3}


def test_a_name_holding_a_secret_arguments_value_is_refused_and_shown_masked(cluster):
    run = cluster.finished("hides", {"token": "s3cr3t-value-42"})
    assert [a["path"] for a in cluster.b.get(f"/runs/{run['id']}/artifacts").json()["artifacts"]] == ["fine.txt"]
    events = cluster.a.get(f"/runs/{run['id']}/events").text
    assert "s3cr3t-value-42" not in events
    (refused,) = events_of(cluster.a, run["id"], "artifact.refused")
    assert refused == {"path": "key-***.txt", "reason": "the name holds the value of a secret argument"}


def test_over_quota_what_fits_stays_and_the_rest_is_refused_without_failing_the_run(cluster):
    run = cluster.finished("quota")
    assert run["status"] == "succeeded"
    listed = cluster.b.get(f"/runs/{run['id']}/artifacts").json()["artifacts"]
    assert [a["path"] for a in listed] == ["a0", "a1", "a2", "a3", "a4"]
    refused = {e["path"]: e["reason"] for e in events_of(cluster.a, run["id"], "artifact.refused")}
    assert "limits.max_artifact_bytes" in refused.pop("0big")
    assert sorted(refused) == ["a5", "a6", "a7"]
    assert all("limits.max_artifact_files" in reason for reason in refused.values())


def test_an_unreadable_file_under_a_recorded_artifact_is_a_503_not_a_404(cluster):
    run = cluster.finished("make", {"text": "only this run"})
    digest = hashlib.sha256(b"only this run\n").hexdigest()
    blob = cluster.artifacts / digest[:2] / digest
    assert cluster.b.get(f"/runs/{run['id']}/artifacts/report.txt").content == b"only this run\n"
    blob.unlink()
    response = cluster.b.get(f"/runs/{run['id']}/artifacts/report.txt")
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "urn:flwd:error:artifact-unavailable"
    assert "artifacts.dir" in response.json()["detail"]


def test_the_cli_lists_and_downloads_the_same_locally_and_through_the_server(cluster, made, tmp_path):
    remote = ["--server", cluster.a.url, "--token", "dev-token"]
    listed_remote = cli(":artifacts", made["id"], *remote)
    listed_local = local_flwd(cluster.a.config_path, ":artifacts", made["id"])
    assert listed_remote.returncode == 0, listed_remote.stderr
    assert listed_local.returncode == 0, listed_local.stderr
    assert listed_remote.stdout == listed_local.stdout
    assert "sub dir/blob.bin" in listed_remote.stdout and str(len(BLOB)) in listed_remote.stdout
    as_json = json.loads(cli(":artifacts", made["id"], "--json", *remote).stdout)
    assert [a["path"] for a in as_json["artifacts"]] == ["café.txt", "report.txt", "sub dir/blob.bin"]
    for where, run in (
        ("remote", lambda *a: cli(*a, *remote)),
        ("local", lambda *a: local_flwd(cluster.a.config_path, *a)),
    ):
        target = tmp_path / f"{where}.bin"
        done = run(":artifacts", made["id"], "sub dir/blob.bin", "-o", str(target))
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == BLOB
        missing = run(":artifacts", made["id"], "nope.txt", "-o", str(tmp_path / "nope"))
        assert missing.returncode != 0
        assert "nope.txt" in missing.stderr
        assert not (tmp_path / "nope").exists()


def test_stdout_download(cluster, made):
    done = cli(":artifacts", made["id"], "report.txt", "--server", cluster.a.url, "--token", "dev-token")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello artifact\n"


def test_the_export_lists_each_runs_artifacts_with_digests(cluster, made):
    lines = [json.loads(line) for line in cluster.b.get("/export", timeout=60).text.splitlines()]
    mine = [r["artifact"] for r in lines if r["record"] == "artifact" and r["artifact"]["run_id"] == made["id"]]
    assert [(a["path"], a["size"], a["sha256"]) for a in mine] == [
        ("café.txt", 3, hashlib.sha256(b"nfd").hexdigest()),
        ("report.txt", 15, hashlib.sha256(b"hello artifact\n").hexdigest()),
        ("sub dir/blob.bin", len(BLOB), hashlib.sha256(BLOB).hexdigest()),
    ]
    assert lines[-1]["artifacts"] >= 3


def test_pruning_frees_only_the_files_no_other_run_holds(tmp_path, start_server):
    folder = tmp_path / "src"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "write.yaml").write_text(
        "name: write\nargs:\n  text: {type: string}\nsteps:\n"
        '  - run: \'printf "%s" "$FLWD_ARG_TEXT" > "$FLWD_ARTIFACTS/out.txt"\'\n'
    )
    server = start_server(
        {"limits": {"max_run_history": 2}, "sources": [{"type": "local", "name": "t", "path": str(folder)}]}
    )
    blobs = server.data_dir / "artifacts"  # the default: under the data dir

    def run(text: str) -> str:
        run_id = server.submit("t:write", {"text": text})["id"]
        server.wait_finished(run_id)
        return run_id

    def blob(text: str) -> Path:
        digest = hashlib.sha256(text.encode()).hexdigest()
        return blobs / digest[:2] / digest

    first = run("shared")
    run("only-old")  # pruned with nobody else holding its file
    assert blob("shared").exists() and blob("only-old").exists()
    run("shared")
    latest = run("new")

    def settled() -> bool:  # pruned (history 2) and swept after the run ends: polled, not slept
        return server.get(f"/runs/{first}").status_code == 404 and not blob("only-old").exists()

    wait_until(settled, 10, 0.05, "the oldest runs pruned and the file no run holds removed")
    assert blob("shared").exists()  # the third run still holds it
    assert server.get(f"/runs/{latest}/artifacts/out.txt").content == b"new"
    assert not any(p.name != "out.txt" and p.parent.name == ".tmp" for p in blobs.rglob("*") if p.is_file())
    assert os.listdir(blobs / ".tmp") == []
