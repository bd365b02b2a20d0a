"""Concurrency groups through a real server (two workers), on SQLite and PostgreSQL, and the CLI.

Steps append ``start``/``end`` lines with their run id and a timestamp to a log file, and the
gated job waits for the test to release it (a file named by its run id): the test decides
when a run ends, so what it checks while runs wait does not depend on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.helpers import wait_until
from tests.fixtures.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

GATED = """name: gated
args:
  env: {type: string, default: prod}
  key: {type: string, secret: true, default: x}
concurrency: {group: 'lock-{{ args.env }}', limit: %(limit)s, when_busy: %(when_busy)s}
steps:
  - run: |
      echo "start $FLWD_RUN_ID $(date +%%s.%%N)" >> %(log)s
      while [ ! -e %(gates)s/$FLWD_RUN_ID ]; do sleep 0.02; done
      echo "end $FLWD_RUN_ID $(date +%%s.%%N)" >> %(log)s
"""
STUBBORN = """name: stubborn
concurrency: {group: deploy, when_busy: replace}
steps:
  - run: |
      trap 'sleep 0.7; echo "gone $FLWD_RUN_ID $(date +%%s.%%N)" >> %(log)s; exit 143' TERM
      echo "start $FLWD_RUN_ID $(date +%%s.%%N)" >> %(log)s
      while [ ! -e %(gates)s/$FLWD_RUN_ID ]; do sleep 0.02; done
"""


class Site:
    """A local source with the test's jobs, the steps' log and the gates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "steps.log"
        self.gates = root / "gates"
        self.gates.mkdir(parents=True)
        jobs = root / "src" / "jobs"
        jobs.mkdir(parents=True)
        values = {"log": self.log, "gates": self.gates}
        for name, limit, when_busy in (("gated", 1, "queue"), ("pair", 2, "queue"), ("single", 1, "reject")):
            text = GATED % {**values, "limit": limit, "when_busy": when_busy}
            (jobs / f"{name}.yaml").write_text(text.replace("name: gated", f"name: {name}"))
        (jobs / "stubborn.yaml").write_text(STUBBORN % values)
        (jobs / "plain.yaml").write_text(
            f'name: plain\nsteps:\n  - run: echo "start $FLWD_RUN_ID $(date +%s.%N)" >> {self.log}\n'
        )
        self.source = {"type": "local", "name": "t", "path": str(root / "src")}

    def release(self, run_id: str) -> None:
        (self.gates / run_id).touch()

    def lines(self) -> dict[tuple[str, str], float]:
        """``{(what, run_id): time}`` from the steps' log."""
        out = {}
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            what, run_id, stamp = line.split()
            out[(what, run_id)] = float(stamp)
        return out

    def started(self, run_id: str) -> bool:
        return ("start", run_id) in self.lines()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path / "site")


@pytest.fixture
def grouped(start_server, db_backend: dict[str, Any], site: Site) -> ServerProcess:
    config = {**db_backend, "workers": 2, "sources": [site.source], "limits": {"max_concurrent_runs": 8}}
    return start_server(config)


def _queue(server: ServerProcess, run_id: str) -> dict[str, Any] | None:
    return server.get(f"/runs/{run_id}").json()["run"]["queue"]


def test_a_group_runs_its_limit_at_once_in_order_and_others_pass_it(grouped, site):
    prod = [grouped.submit("t:gated", {"env": "prod"})["id"] for _ in range(3)]
    wait_until(lambda: site.started(prod[0]), 30, message="the first run of lock-prod to start")
    staging = grouped.submit("t:gated", {"env": "staging"})["id"]
    plain = grouped.submit("t:plain")["id"]
    # Neither waits behind lock-prod, whose first run still holds it.
    assert grouped.wait_finished(plain)["status"] == "succeeded"
    wait_until(lambda: site.started(staging), 30, message="another group's run to start")
    reason = "concurrency group lock-prod (1 of 1 running)"
    assert _queue(grouped, prod[1]) == {"position": 1, "reason": reason}
    assert _queue(grouped, prod[2]) == {"position": 2, "reason": reason}
    assert _queue(grouped, prod[0]) is None and _queue(grouped, plain) is None
    listed = {r["id"]: r["queue"] for r in grouped.get("/runs?status=queued").json()["runs"]}
    assert listed == {prod[1]: {"position": 1, "reason": reason}, prod[2]: {"position": 2, "reason": reason}}
    late = grouped.submit("t:gated", {"env": "prod"})  # POST /runs answers with the new run's place too
    assert late["status"] == "queued" and late["queue"] == {"position": 3, "reason": reason}
    prod.append(late["id"])
    assert not site.started(prod[1])
    for run_id in prod:
        site.release(run_id)
        assert grouped.wait_finished(run_id)["status"] == "succeeded"
    site.release(staging)
    grouped.wait_finished(staging)
    lines = site.lines()
    spans = [(lines[("start", r)], lines[("end", r)]) for r in prod]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # one at a time, in submission order
    assert lines[("start", staging)] < spans[0][1] and lines[("start", plain)] < spans[0][1]


def test_a_limit_of_two_runs_two_across_workers(grouped, site):
    runs = [grouped.submit("t:pair", {"env": "p"})["id"] for _ in range(4)]
    wait_until(lambda: site.started(runs[0]) and site.started(runs[1]), 30, message="two runs of the pair")
    assert [_queue(grouped, r)["position"] for r in runs[2:]] == [1, 2]
    assert not site.started(runs[2])
    site.release(runs[1])
    wait_until(lambda: site.started(runs[2]), 30, message="the third run to take the freed place")
    assert not site.started(runs[3]) and _queue(grouped, runs[3])["position"] == 1
    for run_id in runs:
        site.release(run_id)
    for run_id in runs:
        assert grouped.wait_finished(run_id)["status"] == "succeeded"


def test_reject_refuses_a_run_while_the_group_is_busy(grouped, site):
    first = grouped.submit("t:single", {"env": "x"})
    second = grouped.submit("t:single", {"env": "x"})
    assert second["status"] == "rejected"
    assert second["reason"] == "concurrency group lock-x is busy (1 of 1 running or queued; when_busy: reject)"
    other = grouped.submit("t:single", {"env": "y"})  # another group
    assert other["status"] == "queued"
    site.release(first["id"])
    site.release(other["id"])
    assert grouped.wait_finished(first["id"])["status"] == "succeeded"
    third = grouped.submit("t:single", {"env": "x"})
    assert third["status"] == "queued"
    site.release(third["id"])
    grouped.wait_finished(third["id"])


def test_replace_cancels_the_old_run_and_starts_the_new_one_after_its_processes_are_gone(grouped, site):
    old = grouped.submit("t:stubborn")["id"]
    wait_until(lambda: site.started(old), 30, message="the old run to start")
    new = grouped.submit("t:stubborn")["id"]
    ended = grouped.wait_finished(old)
    assert ended["status"] == "cancelled" and ended["reason"] == f"replaced by {new}"
    wait_until(lambda: site.started(new), 30, message="the new run to start")
    lines = site.lines()
    assert lines[("gone", old)] < lines[("start", new)]  # the old trap ran to its end before the new run began
    site.release(new)
    assert grouped.wait_finished(new)["status"] == "succeeded"


def test_the_plan_shows_the_rendered_group(grouped):
    plan = grouped.post("/plans", {"job": "t:gated", "args": {"env": "eu"}}).json()["plan"]
    assert plan["concurrency"] == {"group": "lock-eu", "limit": 1, "when_busy": "queue"}
    other = grouped.post("/plans", {"job": "t:plain"}).json()["plan"]
    assert other["concurrency"] is None


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}, **env}
    return subprocess.Popen(
        [sys.executable, "-m", "flwd_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=REPO,
    )


def test_the_cli_prints_the_queue_position_while_it_waits(start_server, site):
    server = start_server({"sources": [site.source]})
    holder = server.submit("t:gated", {"env": "cli"})["id"]
    wait_until(lambda: site.started(holder), 30, message="the run holding the group")
    proc = _cli({"FLWD_SERVER": server.url, "FLWD_TOKEN": "dev-token"}, "t:gated", "--env", "cli")
    waiting = wait_until(
        lambda: [r["id"] for r in server.get("/runs?status=queued").json()["runs"]], 30, message="the CLI's run"
    )
    first = proc.stderr.readline()
    assert first.strip() == "flwd: queued: position 1 (concurrency group lock-cli (1 of 1 running))"
    site.release(holder)
    site.release(waiting[0])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_a_local_cli_run_prints_its_place_behind_a_detached_run(tmp_path, site):
    config = tmp_path / "local.yaml"
    config.write_text(f"sources:\n  - {{type: local, name: t, path: {site.source['path']}}}\n")
    env = {"FLWD_DATA_DIR": str(tmp_path / "cli-data"), "FLWD_CONFIG": str(config)}
    detached = _cli(env, "t:gated", "--env", "local", "--detach")
    out, err = detached.communicate(timeout=60)
    holder = out.strip()
    assert detached.returncode == 0 and holder, err
    wait_until(lambda: site.started(holder), 30, message="the detached run to start")
    proc = _cli(env, "t:gated", "--env", "local")
    first = proc.stderr.readline()
    assert first.strip() == "flwd: queued: position 1 (concurrency group lock-local (1 of 1 running))"
    site.release(holder)
    wait_until(lambda: len([k for k in site.lines() if k[0] == "start"]) == 2, 30, message="the local run to start")
    waiting = [k[1] for k in site.lines() if k[0] == "start" and k[1] != holder]
    site.release(waiting[0])
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
