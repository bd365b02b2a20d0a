"""Shell steps: process groups, both pipes, long lines, limits, no leftovers."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time

import pytest

from flwd_server.models import Step
from flwd_server.runs.capture import LineSplitter, OutputBudget, StepOutput
from flwd_server.runs.host_executor import HostStep, StepLimits, group_alive, run_host_step
from tests.fixtures.helpers import wait_until


class Collector:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, bool, float]] = []
        self.stop_reason: str | None = None
        self.pgid: int | None = None
        self.budget: OutputBudget | None = None

    def emit_lines(self, stream: str, lines: list[tuple[str, bool]]) -> None:
        now = time.monotonic()
        self.lines.extend((stream, line, truncated, now) for line, truncated in lines)

    def task(
        self,
        script: str,
        tmp_path,
        timeout: float = 30,
        max_line_bytes: int = 65536,
        max_output_bytes: int = 64 << 20,
        **limits,
    ) -> HostStep:
        self.budget = OutputBudget(max_output_bytes)
        return HostStep(
            run_id="test",
            step=Step(name="s", run=script),
            env={"PATH": os.environ["PATH"], "FLWD_RUN_ID": "test"},
            cwd=str(tmp_path),
            deadline=time.time() + timeout,
            should_stop=lambda: self.stop_reason,
            output=StepOutput(self.emit_lines, self.budget, max_line_bytes),
            limits=StepLimits(**limits),
            on_spawn=lambda pgid: setattr(self, "pgid", pgid),
        )


def test_stdout_and_stderr_are_both_captured_without_a_pipe_deadlock(tmp_path):
    out = Collector()
    script = "head -c 1048576 /dev/zero | tr '\\0' e | fold -w 1000 >&2; head -c 1048576 /dev/zero | tr '\\0' o | fold -w 1000"
    started = time.monotonic()
    result = run_host_step(out.task(script, tmp_path))
    assert result.status == "succeeded" and time.monotonic() - started < 5
    assert sum(len(line) for stream, line, *_ in out.lines if stream == "stderr") == 1048576
    assert sum(len(line) for stream, line, *_ in out.lines if stream == "stdout") == 1048576


def test_output_arrives_live_not_at_exit(tmp_path):
    out = Collector()
    run_host_step(out.task("for i in 1 2 3; do echo $i; sleep 0.3; done", tmp_path))
    ended = time.monotonic()
    assert [line for _, line, *_ in out.lines] == ["1", "2", "3"]
    # The step sleeps 0.9 s after its first line: output held until the exit would arrive with it.
    # (Measured from the end, so a slow machine cannot fail it.)
    assert ended - out.lines[0][3] >= 0.5


def test_python_children_are_unbuffered_when_flwd_sets_the_variable(tmp_path):
    out = Collector()
    task = out.task("python3 -c 'import time\nfor i in range(3): print(i); time.sleep(0.3)'", tmp_path)
    task.env["PYTHONUNBUFFERED"] = "1"
    run_host_step(task)
    ended = time.monotonic()
    assert [line for _, line, *_ in out.lines] == ["0", "1", "2"]
    assert ended - out.lines[0][3] >= 0.5  # the first line came before the 0.9 s of sleeps, not at exit


def test_cancel_kills_the_whole_process_group(tmp_path):
    out = Collector()
    task = out.task("sleep 300 & sleep 300; wait", tmp_path)
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=run_host_step(task)))
    thread.start()
    wait_until(lambda: out.pgid and len(_members(out.pgid)) >= 2, 5, message="both sleeps to start")
    out.stop_reason = "cancelled"
    thread.join(10)
    assert result["outcome"].status == "cancelled"
    assert not group_alive(out.pgid)


def test_timeout_ends_the_step_and_its_group(tmp_path):
    out = Collector()
    started = time.monotonic()
    result = run_host_step(out.task("sleep 60 & sleep 60", tmp_path, timeout=0.5))
    assert result.status == "timed_out" and time.monotonic() - started < 5
    assert not group_alive(out.pgid)


def test_a_step_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    out = Collector()
    result = run_host_step(out.task("trap '' TERM; sleep 60", tmp_path, timeout=0.3))
    assert result.status == "timed_out"
    assert not group_alive(out.pgid)


def test_background_processes_do_not_outlive_a_finished_step(tmp_path):
    out = Collector()
    result = run_host_step(out.task("(sleep 300 &) ; echo done", tmp_path))
    assert result.status == "succeeded"
    assert not group_alive(out.pgid)


def test_a_huge_line_without_newline_is_cut_and_memory_stays_bounded(tmp_path):
    out = Collector()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run_host_step(
        out.task("head -c 52428800 /dev/zero | tr '\\0' x; echo; echo after", tmp_path, max_line_bytes=65536)
    )
    growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert result.status == "succeeded"
    first, second = out.lines
    assert first[2] is True and len(first[1]) < 65536 + 64
    assert second[1] == "after"
    assert growth_kb < 20 * 1024  # far less than the 50 MB line


def test_output_beyond_the_run_limit_is_counted_not_stored(tmp_path):
    out = Collector()
    result = run_host_step(out.task("seq 100000", tmp_path, max_output_bytes=10000))
    stored = [line for _, line, *_ in out.lines]
    assert "output limit" in stored[-1]
    assert sum(len(line) + 1 for line in stored[:-1]) <= 10000
    assert out.budget.dropped > 0 and result.status == "succeeded"


def test_nothing_is_stored_after_the_first_line_that_does_not_fit(tmp_path):
    """A later, shorter line that would fit is not stored either: the stored output is a prefix."""
    out = Collector()
    script = "head -c 600 /dev/zero | tr '\\0' a; echo; head -c 600 /dev/zero | tr '\\0' b; echo; echo c"
    run_host_step(out.task(script, tmp_path, max_output_bytes=1024))
    assert [line[:1] for _, line, *_ in out.lines] == ["a", "["]
    assert out.budget.used == 601 and out.budget.dropped == 601 + 2


def test_exit_codes_and_signals_are_reported(tmp_path):
    assert run_host_step(Collector().task("exit 7", tmp_path)).exit_code == 7
    assert run_host_step(Collector().task("kill -9 $$", tmp_path)).exit_code == 137


def test_resource_limits_apply_through_the_shell_prologue(tmp_path):
    out = Collector()
    run_host_step(out.task('ulimit -n; ulimit -t; echo "args=$#"', tmp_path, open_files=64, cpu_seconds=5))
    assert [line for _, line, *_ in out.lines] == ["64", "5", "args=0"]  # the script sees no arguments, as with sh -c
    too_big = Collector()
    result = run_host_step(too_big.task("head -c 20000 /dev/zero > big", tmp_path, file_size_bytes=4096))
    assert result.status == "failed" and os.path.getsize(tmp_path / "big") <= 4096


def test_arguments_with_shell_metacharacters_never_execute(tmp_path):
    out = Collector()
    task = out.task('echo "$FLWD_ARG_NAME"', tmp_path)
    task.env["FLWD_ARG_NAME"] = "$(touch pwned); `touch pwned2`; echo hi\nrm -rf ."
    run_host_step(task)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    assert [line for _, line, *_ in out.lines] == ["$(touch pwned); `touch pwned2`; echo hi", "rm -rf ."]


def test_a_hundred_cancelled_steps_leave_no_zombies(tmp_path):
    for _ in range(100):
        out = Collector()
        out.stop_reason = "cancelled"
        run_host_step(out.task("sleep 30", tmp_path))
    children = subprocess.run(
        ["ps", "-o", "stat=", "--ppid", str(os.getpid())], capture_output=True, text=True
    ).stdout.split()
    assert not [s for s in children if s.startswith("Z")]


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"a\nb", b"c\n"], [(b"a", False), (b"bc", False)]),
        ([b"x" * 10 + b"\nok\n"], [(b"x" * 4, True), (b"ok", False)]),
        ([b"x" * 6, b"x" * 6, b"\nok\n"], [(b"x" * 4, True), (b"ok", False)]),
    ],
)
def test_line_splitting(chunks, expected):
    lines = LineSplitter(4)
    got = []
    for chunk in chunks:
        got.extend(lines.feed(chunk))
    assert got == expected


def _members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return out.split()
