"""The soak test, small: scripts/soak with 300 runs, 20 submitting clients and followers that drop and resume.

The full 10,000-run soak is run by hand (docs/reliability.rst has its last figures);
this variant keeps the script itself working and runs every one of its audits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.server import REPO

pytestmark = pytest.mark.integration


def test_a_quick_soak_loses_no_run_and_no_event_and_no_client_sees_a_gap():
    args = [
        "--runs",
        "300",
        "--clients",
        "20",
        "--followers",
        "6",
        "--global-followers",
        "2",
        "--timeout",
        "240",
        "--json",
    ]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak"), *args], capture_output=True, text=True, timeout=400, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("SOAK "))[5:])
    assert figures["runs"] == 300 and figures["statuses"] == {"succeeded": 300}
    assert figures["errors"] == 0 and figures["violations"] == 0
    assert figures["reconnects"] > 0 and figures["runs_followed"] > 0  # the resume paths were exercised
    # per run: queued, 4 policy decisions (host-env, containment and the two caps), started, 2 steps (3 lines), finished
    assert figures["events"] == 300 * 14
    assert 1 <= figures["most_runs_running_at_once"] <= 8
