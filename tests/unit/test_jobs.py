"""Job files and arguments: data-driven over tests/unit/jobfiles (valid/ and invalid/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flwd_server.errors import InvalidArgs, InvalidJob
from flwd_server.jobs.arguments import arg_env, render_command, resolve_args
from flwd_server.jobs.files import parse_job

FILES = Path(__file__).parent / "jobfiles"


@pytest.mark.parametrize("path", sorted((FILES / "valid").glob("*.yaml")), ids=lambda p: p.stem)
def test_valid_job_files_parse(path):
    job = parse_job(path.read_text(), "test", path.name)
    assert job.steps and job.source == "test" and job.file_digest.startswith("sha256:")


@pytest.mark.parametrize("path", sorted((FILES / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_job_files_name_every_bad_field(path):
    expected = re.search(r"^# expect: (.+)$", path.read_text(), re.M).group(1).split(", ")
    with pytest.raises(InvalidJob) as caught:
        parse_job(path.read_text(), "test", path.name)
    fields = [e["field"] for e in caught.value.errors]
    for field in expected:
        assert field in fields, f"{field} not reported; got {fields}"
    assert caught.value.path == path.name


def test_yaml_errors_carry_the_line():
    with pytest.raises(InvalidJob) as caught:
        parse_job("name: x\nsteps:\n  - run: [\n", "s", "x.yaml")
    assert caught.value.errors[0]["line"] >= 3


@pytest.fixture
def full():
    return parse_job((FILES / "valid" / "full.yaml").read_text(), "test", "full.yaml")


def test_defaults_fill_in_and_strings_are_coerced(full):
    args = resolve_args(full, {"name": "Alice", "times": "3", "loud": "true", "ratio": "0.25"})
    assert args == {"name": "Alice", "times": 3, "ratio": 0.25, "loud": True, "color": "red"}


def test_every_invalid_argument_is_named_at_once(full):
    with pytest.raises(InvalidArgs) as caught:
        resolve_args(full, {"times": 9, "ratio": "x", "color": "blue", "loud": "maybe", "extra": 1, "name": "Al1ce"})
    fields = {e["field"]: e["message"] for e in caught.value.errors}
    assert fields["args.times"] == "must be at most 5"
    assert fields["args.ratio"] == "expected a number"
    assert fields["args.color"] == "must be one of red, green"
    assert fields["args.loud"] == "expected true or false"
    assert fields["args.extra"].startswith("unknown argument")
    assert fields["args.name"].startswith("does not match the pattern")


def test_a_missing_required_argument_is_named(full):
    with pytest.raises(InvalidArgs) as caught:
        resolve_args(full, {})
    assert caught.value.errors == [{"field": "args.name", "message": "is required"}]


@pytest.mark.parametrize("value", [True, [1], {"a": 1}, None])
def test_a_string_argument_refuses_other_json_types(full, value):
    with pytest.raises(InvalidArgs):
        resolve_args(full, {"name": value})


def test_integers_refuse_booleans_and_fractions(full):
    for value in (True, 1.5, "1.5"):
        with pytest.raises(InvalidArgs):
            resolve_args(full, {"name": "A", "times": value})


def test_args_reach_shell_steps_only_as_environment_variables():
    assert arg_env({"name": "Alice; rm -rf /", "loud": False, "times": 2}) == {
        "FLWD_ARG_NAME": "Alice; rm -rf /",
        "FLWD_ARG_LOUD": "false",
        "FLWD_ARG_TIMES": "2",
    }


def test_placeholders_fill_whole_argv_elements(full):
    command = full.steps[1].command
    assert render_command(command, {"name": "A B; echo pwned", "times": 2}) == [
        "greet",
        "A B; echo pwned",
        "--times",
        "2",
    ]


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("name: a\nname: b\nsteps:\n  - run: 'true'\n", "name", 2),
        ("name: a\nsteps:\n  - name: s\n    run: 'true'\n    run: 'rm -rf ~'\n", "steps[0].run", 5),
        ("name: a\nargs:\n  who: {type: string}\n  who: {type: integer}\nsteps:\n  - run: 'true'\n", "args.who", 4),
    ],
)
def test_a_key_repeated_in_a_job_file_is_refused_naming_it_and_its_line(text, field, line):
    """PyYAML keeps the last of two equal keys: a reviewer reading the first would not see what runs."""
    with pytest.raises(InvalidJob) as caught:
        parse_job(text, "s", "jobs/a.yaml")
    (error,) = caught.value.errors
    assert error["field"] == field and error["line"] == line and "duplicate" in error["message"]


def test_a_local_source_lists_a_job_file_with_a_repeated_key_as_an_error(tmp_path):
    from flwd_server.sources.base import scan_jobs

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "ok.yaml").write_text("name: ok\nsteps:\n  - run: 'true'\n")
    (tmp_path / "jobs" / "twice.yaml").write_text("name: twice\nsteps:\n  - run: 'true'\ntimeout: 5\ntimeout: 9\n")
    snapshot = scan_jobs("local", tmp_path, None, 60)
    assert sorted(snapshot.jobs) == ["ok"]
    assert [(e["path"], e["field"], e["line"]) for e in snapshot.errors] == [("jobs/twice.yaml", "timeout", 5)]
