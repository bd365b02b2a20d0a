"""A process that died but was never reaped (a zombie: PID 1 of a container without an init
does not reap) owns nothing any more: its runs are lost and its gauges dropped."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flwd_server.runner import owner_id, owner_is_dead
from tests.helpers import wait_until


def test_a_zombie_owner_counts_as_dead_and_a_live_one_as_alive():
    child = subprocess.Popen(["sleep", "0.3"])
    try:
        owner = owner_id(child.pid)
        assert not owner_is_dead(owner, "", child.pid, None)
        wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 5, 0.02, "the child to become a zombie")
        assert owner_is_dead(owner, "", child.pid, None)
    finally:
        child.wait()
    assert owner_is_dead(owner, "", child.pid, None)
