"""scripts/bench keeps working as the code changes: a quick run measures every figure,
prints the table, writes valid JSON, and leaves nothing behind, even when interrupted.

Speed goals live in the benchmark, not here: nothing below asserts how fast flwd is,
only that every figure was measured.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.helpers import require_tool, wait_until
from tests.fixtures.server import REPO

pytestmark = pytest.mark.integration
BENCH = str(REPO / "scripts" / "bench")
TABLE_HEADER = ["#", "figure", "value", "goal", "result"]


def bench_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}


def processes_in(root: Path) -> list[int]:
    """Processes whose working directory is inside ``root`` (the bench starts all of its own there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == str(root) or cwd.startswith(f"{root}/"):
            found.append(int(entry.name))
    return found


def temp_dir_of(stderr: str) -> Path:
    match = re.search(r"temp dir (\S+);", stderr)
    assert match, stderr
    return Path(match.group(1))


def test_a_quick_run_measures_every_figure_prints_the_table_and_writes_json(tmp_path):
    require_tool("webhook")
    require_tool("wrk")
    out = tmp_path / "results" / "bench.json"
    # 20 streams: within what a worker serves on default settings before issue 19 (28 each).
    args = [BENCH, "--quick", "--duration", "1", "--fanout-clients", "20", "--json", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, env=bench_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:5] == TABLE_HEADER)
    table = lines[header + 2 :]
    for figure in range(1, 10):
        assert any(line.startswith(f"{figure} ") for line in table), proc.stdout
    assert "runs/s ratio flwd / stack limit" in proc.stdout
    assert "runs/s ratio flwd / webhook" in proc.stdout
    assert "ERROR" not in proc.stdout

    result = json.loads(out.read_text())
    assert result["schema"] == 1 and result["quick"] is True and result["interrupted"] is False
    assert result["command"].startswith("scripts/bench --quick")
    assert result["machine"]["cpus"] >= 1
    rows = result["rows"]
    assert {row["figure"] for row in rows} == {1, 2, 3, 4, 5, 6, 7, 8, 9}
    for row in rows:
        assert row["error"] is None, row
        assert isinstance(row["value"], (int, float)), row
        if row["goal"] is not None:
            assert row["result"] in ("pass", "FAIL"), row
    goals = {(row["figure"], row["goal"]["op"], row["goal"]["target"]) for row in rows if row["goal"]}
    assert goals == {
        (1, ">=", 0.9),
        (1, ">=", 1.0),
        (1, "<=", 1.2),
        (2, "<=", 5),
        (2, "<=", 20),
        (3, ">=", 20),
        (3, "<=", 50),
        (4, ">=", 300000),
        (4, ">=", 250000),
        (5, "<=", 80),
        (6, "<=", 100),
        (7, "<=", 300),
        (7, "<=", 250),
        (8, ">=", 200),
        (8, "<=", 50),
        (8, "<=", 80),
    }
    figures = result["figures"]
    assert figures["1"]["flwd"]["drain_timed_out"] is False
    assert figures["1"]["flwd"]["statuses"] == {"succeeded": figures["1"]["flwd"]["finished"]}
    # The stack's limit answered every request of the same load with a completed run.
    assert figures["1"]["stack"]["completed"] == figures["1"]["stack"]["wrk"]["requests"] > 0
    assert figures["1"]["flwd"]["server_cpu_ms_per_run"] > 0 and figures["1"]["stack"]["server_cpu_ms_per_run"] > 0
    assert figures["3"]["streams_complete"] == 20
    assert figures["3"]["lines_per_client_min"] == figures["3"]["lines"]
    assert figures["4"]["received"] == figures["4"]["lines"]
    assert figures["5"]["listed"] >= 2000
    assert sorted(figures["6"]["nodes"]) == ["1", "2", "3"]
    model = figures["6"]["model"]  # what one run costs PostgreSQL, and where it saturates
    assert model["runs"] == figures["6"]["nodes"]["1"]["finished"] and model["events"] > model["runs"]
    assert model["cpu_ms_per_run"] > 0 and model["commits_per_run"] >= 1
    assert "runs/s per database core" in model["calculation"]
    assert figures["6"]["cross_node"]["events"] == 40 and figures["6"]["cross_node"]["missing"] == 0
    assert figures["7"]["event_to_screen_ms"]["n"] == figures["7"]["live_runs"]
    assert {"2000", "10000"} <= figures["9"].keys() and sorted(figures["9"]["postgres"]) == ["10000", "2000"]
    assert figures["7"]["log_rows_in_dom"] < 500  # the log drew only what is in view
    assert figures["8"]["statuses"] == {"200": 200} and figures["8"]["streams_complete"] == 200
    assert figures["8"]["probe_statuses"]["submit"].keys() == {"202"}
    for result in [figures["6"]["sqlite"], *figures["6"]["nodes"].values()]:
        assert result["drain_timed_out"] is False and result["statuses"] == {"succeeded": result["finished"]}

    assert not temp_dir_of(proc.stderr).exists()


def test_an_interrupted_run_stops_every_server_and_removes_its_temp_dir(tmp_path):
    require_tool("webhook")
    require_tool("wrk")
    stderr_path = tmp_path / "stderr"
    out = tmp_path / "bench.json"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [BENCH, "--only", "1", "--duration", "30", "--json", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=bench_env(),
            cwd=tmp_path,
        )
    try:
        root = wait_until(
            lambda: "temp dir" in stderr_path.read_text() and temp_dir_of(stderr_path.read_text()),
            30,
            0.05,
            "the bench to announce its temp dir",
        )
        # webhook and wrk both running: the bench is in the middle of figure 1.
        wait_until(lambda: len(processes_in(root)) >= 2, 30, 0.05, "webhook and wrk to start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, stderr_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert not root.exists()
    assert processes_in(root) == []
    assert json.loads(out.read_text())["interrupted"] is True


def test_an_unknown_figure_is_refused_with_the_list_of_figures():
    proc = subprocess.run([BENCH, "--only", "1,10"], capture_output=True, text=True, timeout=60, env=bench_env())
    assert proc.returncode == 2
    assert "--only: figures are 1, 2, 3, 4, 5, 6, 7, 8, 9" in proc.stderr


def test_repeated_figures_report_the_median_with_its_spread_and_count(tmp_path):
    out = tmp_path / "bench.json"
    # Figure 5 too: each repetition writes its own job source into the same temp dir.
    args = [BENCH, "--quick", "--only", "4,5", "--repeat", "3", "--json", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=bench_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "spread (n)" in proc.stdout
    result = json.loads(out.read_text())
    repetitions = result["figures"]["4"]["repetitions"]
    assert result["figures"]["4"]["repeat"] == 3 and len(repetitions) == 3
    stored = next(row for row in result["rows"] if row["name"].startswith("lines/s stored"))
    each = sorted(rep["lines"] / rep["run_seconds"] for rep in repetitions)
    assert stored["n"] == 3
    assert stored["value"] == pytest.approx(each[1])
    assert stored["spread"] == {"min": pytest.approx(each[0]), "max": pytest.approx(each[2])}
    assert [rep["listed"] >= 2000 for rep in result["figures"]["5"]["repetitions"]] == [True] * 3
