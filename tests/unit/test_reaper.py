"""The subreaper (no cgroups): it kills what a run left behind and never steals an exit status.

Each test runs in a child Python, so this pytest process never becomes a subreaper.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.fixtures.server import REPO

EXIT_CODES = """
import subprocess, threading
from flwd_server.runs.reaper import Subreaper

reaper = Subreaper()
assert reaper.enabled
stop = threading.Event()

def reap_all_the_time():
    while not stop.wait(0.0005):  # as often as it can without starving the spawns
        reaper.reap()

threading.Thread(target=reap_all_the_time, daemon=True).start()
wrong = []
for i in range(150):
    # a step's shell: its own session, spawned under the lock, as the host executor does
    with reaper.spawning():
        step = subprocess.Popen(["/bin/sh", "-c", f"(sleep 0.001 &); exit {i % 100}"], start_new_session=True)
        reaper.spawned(step.pid)
    code = step.wait()
    reaper.waited(step.pid)
    # a helper such as git: our process group, no lock
    helper = subprocess.Popen(["/bin/sh", "-c", f"exit {(i + 1) % 100}"])
    if (code, helper.wait()) != (i % 100, (i + 1) % 100):
        wrong.append((i, code, helper.returncode))
stop.set()
print("wrong", wrong)
"""

ADOPTS = """
import os, subprocess, time
from flwd_server.runs.reaper import Subreaper

reaper = Subreaper()
env = dict(os.environ, FLWD_RUN_ID="run-a")
with reaper.spawning():
    step = subprocess.Popen(["/bin/sh", "-c", "setsid sleep 3600.25 & (sleep 3600.25 &); exit 0"], env=env,
                            start_new_session=True)
    reaper.spawned(step.pid)
step.wait()
reaper.waited(step.pid)
deadline = time.monotonic() + 10
while len(reaper.processes_of("run-a")) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
adopted = [p for p in reaper.processes_of("run-a") if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid()]
print("adopted", len(adopted))
print("killed", reaper.kill_run("run-a"))
print("left", reaper.processes_of("run-a"))
zombies = [e for e in os.listdir("/proc") if e.isdigit() and open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
           and int(open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()[1]) == os.getpid()]
print("zombies", zombies)
"""


def run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_exit_statuses_stay_with_their_owners_while_the_reaper_reaps():
    assert run(EXIT_CODES).strip() == "wrong []"


def test_what_a_step_left_behind_is_adopted_killed_and_reaped():
    lines = run(ADOPTS).splitlines()
    assert lines == ["adopted 2", "killed True", "left []", "zombies []"]


FOREIGN = """
import os, subprocess, sys, tempfile
from flwd_server.config import load_settings
from flwd_server.engine import Engine

# A step of a run of another database (another server on this host) is running.
foreign = subprocess.Popen(["sleep", "60"], env={**os.environ, "FLWD_RUN_ID": "01foreignrunofanotherdbxx"})
try:
    data = tempfile.mkdtemp()
    engine = Engine(load_settings(None, {"data_dir": data, "policy.cgroups": False}, environ={}))
    try:
        engine.start()  # the start-up sweep of leftovers must leave it alone, and not fail
        print("started", engine.runner.started)
    finally:
        engine.close(grace=0)
    print("foreign alive", foreign.poll() is None)
finally:
    foreign.kill()
    foreign.wait()
"""


def test_a_run_of_another_database_is_left_alone_by_the_start_up_sweep():
    assert run(FOREIGN).splitlines() == ["started True", "foreign alive True"]


BYSTANDERS = """
import os, subprocess
from flwd_server.runs.reaper import RunReaper, Subreaper

reaper = Subreaper()
# Another run's step (or any child of the server's process): its own session, not run-a's.
other = subprocess.Popen(["sleep", "60"], start_new_session=True, env={**os.environ, "FLWD_RUN_ID": "run-b"})
run = RunReaper(reaper, "run-a")
env = dict(os.environ, FLWD_RUN_ID="run-a")
with run.spawning():
    step = subprocess.Popen(["/bin/sh", "-c", "sleep 60"], env=env, stdout=subprocess.PIPE, start_new_session=True)
    run.spawned(step.pid, (step.stdout.fileno(),))  # this process holds the pipe's reading end
print("killed", run.kill())
step.wait()
run.waited(step.pid)
print("other alive", other.poll() is None)
other.kill()
other.wait()
"""


def test_killing_a_run_by_its_pipes_spares_the_process_reading_them_and_its_other_children():
    """The server's process holds the read end of the run's pipes: it is no member of the run, nor are
    its other children (before, every child of the worker was killed with the run: other runs' steps)."""
    assert run(BYSTANDERS).splitlines() == ["killed True", "other alive True"]
