"""Finding and using the run's cgroups on the layouts flwd meets.

The hybrid layout of these machines is exercised for real by tests/integration/test_containment.py;
a pure cgroup2 host and a host without cgroups are laid out here in a temp dir (plain files stand in
for the kernel's), so the decisions discovery and set-up make are checked on every machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flwd_server.runs import cgroups
from flwd_server.runs.cgroups import Caps, GroupPool, RunGroup, discover


def lay_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_cgroup: str, mounts: list[str]) -> None:
    (tmp_path / "proc-cgroup").write_text(proc_cgroup)
    (tmp_path / "mountinfo").write_text("".join(f"{i} 1 0:{i} {m}\n" for i, m in enumerate(mounts, 30)))
    monkeypatch.setattr(cgroups, "PROC_CGROUP", tmp_path / "proc-cgroup")
    monkeypatch.setattr(cgroups, "MOUNTINFO", tmp_path / "mountinfo")


def v2_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delegated: str) -> Path:
    own = tmp_path / "cg" / "system.slice" / "flwd.service"
    own.mkdir(parents=True)
    (own / "cgroup.kill").write_text("")
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.subtree_control").write_text(delegated)
    lay_out(tmp_path, monkeypatch, "0::/system.slice/flwd.service\n", [f"/ {tmp_path / 'cg'} rw - cgroup2 cgroup2 rw"])
    return own


def test_a_pure_cgroup2_host_with_a_delegated_group_kills_and_caps_in_one_group(tmp_path, monkeypatch):
    own = v2_host(tmp_path, monkeypatch, "memory pids\n")
    layout = discover()
    assert layout.killer == layout.pids == layout.memory == own and layout.pids_v2 and layout.memory_v2
    assert layout.containment().mechanism == "cgroup2" and layout.containment().caps == {"processes", "memory"}
    group = RunGroup(layout, "flwd-db", "run1")
    group.create(Caps(max_processes=512, memory_bytes=1 << 30))
    run = own / "flwd-db" / "run1"
    assert group.dirs == [run]
    assert (own / "flwd-db" / "cgroup.subtree_control").read_text() == "+pids +memory"  # the base passes them on
    assert (run / "pids.max").read_text() == "512" and (run / "memory.max").read_text() == str(1 << 30)
    assert (run / "memory.swap.max").read_text() == "0"
    assert group.join_commands() == [f"echo $$ > '{run}/cgroup.procs'"]


def test_a_pure_cgroup2_host_without_delegation_kills_but_does_not_cap(tmp_path, monkeypatch):
    own = v2_host(tmp_path, monkeypatch, "")
    layout = discover()
    assert layout.killer == own and layout.pids is None and layout.memory is None
    assert layout.containment().mechanism == "cgroup2" and not layout.containment().caps


def test_a_host_with_no_writable_cgroup_has_none(tmp_path, monkeypatch):
    lay_out(tmp_path, monkeypatch, "0::/\n", [])
    layout = discover()
    assert not layout.usable and layout.containment().mechanism is None


def test_groups_are_made_below_the_server_s_own_group_in_each_cgroup1_hierarchy(tmp_path, monkeypatch):
    for name, own in (("pids", "/"), ("memory", "/box/42")):
        (tmp_path / name / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    lay_out(
        tmp_path,
        monkeypatch,
        "8:pids:/\n4:memory:/box/42\n",
        [
            f"/ {tmp_path / 'pids'} rw - cgroup cgroup rw,pids",
            f"/ {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
        ],
    )
    layout = discover()
    assert layout.pids == tmp_path / "pids" and layout.memory == tmp_path / "memory" / "box" / "42"
    assert layout.containment().mechanism == "cgroup1"
    group = RunGroup(layout, "flwd-db", "run1")
    group.create(Caps(max_processes=64, memory_bytes=1 << 28))
    assert (tmp_path / "pids" / "flwd-db" / "run1" / "pids.max").read_text() == "64"
    memory = tmp_path / "memory" / "box" / "42" / "flwd-db" / "run1"
    assert (memory / "memory.limit_in_bytes").read_text() == str(1 << 28)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(1 << 28)


def test_a_pool_reuses_clean_groups_and_holds_back_one_that_still_counts_tasks(tmp_path, monkeypatch):
    (tmp_path / "pids").mkdir()
    lay_out(tmp_path, monkeypatch, "8:pids:/\n", [f"/ {tmp_path / 'pids'} rw - cgroup cgroup rw,pids"])
    pool = GroupPool(discover(), "flwd-db")
    first = pool.acquire("run1", Caps(max_processes=64))
    assert first is not None and (first.pids / "pids.max").read_text() == "64"
    (first.pids / "pids.current").write_text("0\n")
    pool.release(first)
    assert pool.acquire("run2", Caps()) is first and (first.pids / "pids.max").read_text() == "max"  # reused, uncapped
    (first.pids / "pids.current").write_text("3\n")  # zombies of killed steps still count against pids.max
    pool.release(first, timeout=0)
    assert pool.idle == [] and pool.retired == [first]
    second = pool.acquire("run3", Caps())
    assert second is not None and second is not first
    (second.pids / "pids.current").write_text("0\n")
    (first.pids / "pids.current").write_text("0\n")  # reaped at last
    monkeypatch.setattr(RunGroup, "remove", lambda group: removed.append(group))
    removed: list[RunGroup] = []
    pool.release(second)
    assert pool.idle == [second] and pool.retired == [] and removed == [first]
