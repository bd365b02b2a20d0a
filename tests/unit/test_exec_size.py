"""A run's argv and environment are sized in bytes when it is planned, as Linux's exec will size them.

65,536 x "€" is 65,536 characters but 196,608 bytes: over the 128 KiB Linux allows one argv or
environment string (planner.MAX_ARG_STRLEN), so the step could never start (E2BIG).
"""

from __future__ import annotations

import pytest

from flwd_cli.main import main
from flwd_server import planner
from flwd_server.jobs.arguments import resolve_args
from flwd_server.jobs.files import parse_job

JOB = """name: echo
args:
  text: {type: string}
  more: {type: string}
env:
  FIXED: "x"
steps:
  - run: 'printf "%s\\n" "$FLWD_ARG_TEXT"'
"""

CONTAINER = """name: boxed
args:
  text: {type: string}
steps:
  - image: registry.example/app@sha256:%s
    command: ["echo", "{{ args.text }}"]
""" % ("a" * 64)

PREFIX = len("FLWD_ARG_TEXT=")


@pytest.fixture(scope="module")
def job():
    return parse_job(JOB, "s", "echo.yaml")


def fields(job, args, passthrough=None):
    return [p["field"] for p in planner.exec_problems(job, resolve_args(job, args), passthrough or {})]


def test_a_value_is_sized_in_bytes_not_characters(job):
    assert fields(job, {"text": "x" * 65536}) == []
    assert fields(job, {"text": "€" * 65536}) == ["args.text"]


def test_the_limit_is_the_kernels_per_string_limit_with_the_variable_name_and_nul(job):
    fits = (planner.MAX_ARG_STRLEN - PREFIX - 1) // 3
    assert fields(job, {"text": "€" * fits}) == []
    assert PREFIX + 3 * (fits + 1) + 1 > planner.MAX_ARG_STRLEN
    assert fields(job, {"text": "€" * (fits + 1)}) == ["args.text"]


def test_a_step_script_is_an_argv_string_and_is_sized_too():
    script = "echo " + "€" * 45000
    job = parse_job(JOB.replace("""'printf "%s\\n" "$FLWD_ARG_TEXT"'""", repr(script)), "s", "echo.yaml")
    assert fields(job, {}) == ["steps[0].run"]


def test_passed_through_host_variables_are_sized_and_named(job):
    assert fields(job, {}, {"BIG": "é" * 70000}) == ["host_env.BIG"]


def test_the_total_is_checked_and_names_the_largest_part(job):
    many = {f"V{i}": "x" * 100000 for i in range(planner.exec_limit() // 100000 - 2)}
    assert fields(job, {"text": "€" * 30000}, many) == []
    many.update({f"W{i}": "y" * 100000 for i in range(3)})
    assert fields(job, {"text": "€" * 40000}, many) == ["args.text"]  # 120,014 bytes: the largest


def test_a_container_command_element_is_sized():
    boxed = parse_job(CONTAINER, "s", "boxed.yaml")
    problems = [p["field"] for p in planner.exec_problems(boxed, {"text": "€" * 50000}, {})]
    assert problems == ["args.text", "steps[0].command[1]"]


def test_the_local_cli_refuses_it_as_invalid_input_before_anything_runs(tmp_path, capsys, monkeypatch):
    (tmp_path / "src" / "jobs").mkdir(parents=True)
    (tmp_path / "src" / "jobs" / "echo.yaml").write_text(JOB)
    config = tmp_path / "flwd.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\nbundled_jobs: false\n"
        f"sources: [{{type: local, name: s, path: {tmp_path / 'src'}}}]\n"
    )
    monkeypatch.setenv("FLWD_CONFIG", str(config))
    with pytest.raises(SystemExit) as exited:
        main(["echo", "--text", "€" * 65536])
    assert exited.value.code == 2
    assert "args.text" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([":runs", "--json"])
    assert exited.value.code == 0
    assert '"runs": []' in capsys.readouterr().out
