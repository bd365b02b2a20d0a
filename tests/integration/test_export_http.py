"""GET /export and flwd :export: 10,000 runs stream with flat server memory and read back whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from flwd_server.store.sqlite import SQLiteStore
from tests.fixtures.server import ServerProcess
from tests.unit.test_export import fill

RUNS, EVENTS_PER_RUN = 10_000, 10


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def big_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("export")
    server = ServerProcess(root, {"workers": 1, "threads": 8}, dev=True, env=None)
    store = SQLiteStore(server.data_dir / "flwd.db")
    store.migrate()
    fill(store, RUNS, EVENTS_PER_RUN)  # inserted directly, for speed: 10,000 runs, 100,000 events
    store.close()
    server.start()
    yield server
    server.stop()


def test_an_export_of_ten_thousand_runs_streams_with_flat_memory_and_reads_back_whole(big_history):
    server = big_history
    (worker,) = server.worker_pids()
    assert server.get("/export", params={"job": "none"}).status_code == 200  # warm the code path
    before = rss_kib(worker)
    runs = events = 0
    ids: set[int] = set()
    current = None
    lines = []
    with server.get("/export", stream=True, timeout=(5, 120)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert "Content-Length" not in response.headers  # streamed, not built in memory
        for line in response.iter_lines(chunk_size=64 * 1024):
            record = json.loads(line)
            lines.append(record["record"])
            if record["record"] == "run":
                runs += 1
                current = record["run"]["id"]
            elif record["record"] == "event":
                events += 1
                assert record["event"]["run_id"] == current
                ids.add(record["event"]["id"])
            elif record["record"] == "end":
                end = record
    peak = rss_kib(worker, "VmHWM")
    assert (runs, events, len(ids)) == (RUNS, RUNS * EVENTS_PER_RUN, RUNS * EVENTS_PER_RUN)
    assert (
        lines[0] == "export"
        and lines[-1] == "end"
        and end == {"record": "end", "runs": RUNS, "events": RUNS * EVENTS_PER_RUN, "artifacts": 0}
    )
    # About 25 MB of NDJSON went through; the worker's peak memory grew by a small constant.
    print(f"export of {RUNS} runs: worker RSS {before} KiB before, peak {peak} KiB")
    assert peak - before < 16 * 1024, f"worker RSS {before} KiB before, peak {peak} KiB during the export"


def test_bad_export_filters_are_a_400_that_names_them(big_history):
    for params, named in (
        ({"since": "last tuesday"}, "since"),
        ({"status": "fine"}, "status"),
        ({"limit": "5"}, "limit"),
    ):
        response = big_history.get("/export", params=params)
        assert response.status_code == 400, response.text
        assert response.headers["Content-Type"] == "application/problem+json"
        assert named in response.json()["detail"]
    assert requests.get(big_history.url + "/export", timeout=5).status_code == 401


def flwd_export(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}  # the config file decides
    return subprocess.run(
        [sys.executable, "-m", "flwd_cli", ":export", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def records(path: Path) -> list[dict]:
    out = [json.loads(line) for line in path.read_text().splitlines()]
    del out[0]["generated_at"]
    return out


def test_flwd_export_writes_the_same_file_locally_and_through_the_server(big_history, tmp_path):
    server = big_history
    filters = ["--status", "failed", "--since", "2026-01-10T00:00:00Z", "--until", "2026-01-20T00:00:00Z"]
    remote = flwd_export(
        "--server", server.url, "--token", "dev-token", "-o", str(tmp_path / "remote.ndjson"), *filters, cwd=tmp_path
    )
    assert remote.returncode == 0, remote.stderr
    local = flwd_export(
        "--config", str(server.config_path), "-o", str(tmp_path / "local.ndjson"), *filters, cwd=tmp_path
    )
    assert local.returncode == 0, local.stderr
    assert "exported 80 runs and 800 events" in remote.stderr  # 240 hours, every third run failed
    assert records(tmp_path / "remote.ndjson") == records(tmp_path / "local.ndjson")
    via_http = server.get(
        "/export", params={"status": "failed", "since": "2026-01-10T00:00:00Z", "until": "2026-01-20T00:00:00Z"}
    )
    (tmp_path / "http.ndjson").write_bytes(via_http.content)
    assert records(tmp_path / "http.ndjson") == records(tmp_path / "remote.ndjson")


def test_flwd_export_refuses_a_bad_filter_and_writes_nothing(big_history, tmp_path):
    for mode in (["--server", big_history.url, "--token", "dev-token"], ["--config", str(big_history.config_path)]):
        done = flwd_export(*mode, "-o", str(tmp_path / "out.ndjson"), "--since", "soon", cwd=tmp_path)
        assert done.returncode == 2 and "'since' must be an ISO 8601 time" in done.stderr
        assert not (tmp_path / "out.ndjson").exists() and not list(tmp_path.glob(".out.ndjson.*"))
