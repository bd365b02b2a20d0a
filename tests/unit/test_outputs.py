"""Run outputs: the $FLWD_OUTPUT format (GitHub Actions' GITHUB_OUTPUT), its errors, caps, types and masking."""

from __future__ import annotations

import json

import pytest

from flwd_server.jobs.files import parse_job
from flwd_server.models import Plan, Profile
from flwd_server.planner import MAX_ARG_STRLEN, exec_limit, job_from_record, plan_record
from flwd_server.runs.capture import SecretMask
from flwd_server.runs.outputs import OutputError, RunOutputs, exec_problem, output_env, parse_output_file


def parse(text: str | bytes) -> list[tuple[str, str]]:
    return parse_output_file(text.encode() if isinstance(text, str) else text, "build")


def error_of(text: str | bytes) -> str:
    with pytest.raises(OutputError) as caught:
        parse(text)
    return str(caught.value)


def test_key_value_lines():
    assert parse("version=1.2.3\nurl=https://x/?a=b\n\nempty=\nlast=no newline") == [
        ("version", "1.2.3"),
        ("url", "https://x/?a=b"),
        ("empty", ""),
        ("last", "no newline"),
    ]


def test_heredoc_values_span_lines_and_may_hold_equals_and_empty_lines():
    text = "notes<<EOF\nfirst = line\n\nthird\nEOF\nafter=1\n"
    assert parse(text) == [("notes", "first = line\n\nthird"), ("after", "1")]
    assert parse("a<<X\nX\n") == [("a", "")]
    assert parse("k=v<<not a heredoc\n") == [("k", "v<<not a heredoc")]  # '=' first: a plain value


def test_crlf_lines_are_read_as_lf():
    assert parse("a=1\r\nb<<END\r\none\r\ntwo\r\nEND\r\n") == [("a", "1"), ("b", "one\ntwo")]


def test_a_heredoc_without_its_delimiter_names_the_line_and_the_step():
    message = error_of("ok=1\nnotes<<EOF\nline\n")
    assert "step 'build'" in message and "line 2" in message and "'EOF'" in message
    assert "line 1" in error_of("k<<\nx\n")  # an empty delimiter


def test_a_line_without_equals_or_heredoc_is_an_error_naming_it():
    message = error_of("a=1\njust text\n")
    assert "line 2" in message and "step 'build'" in message


@pytest.mark.parametrize("line", ["1abc=x", "has-dash=x", "=x", "sp ace=x", "é=x", "a.b<<E\nE"])
def test_a_bad_key_is_an_error_naming_the_line(line):
    message = error_of("good=1\n" + line + "\n")
    assert "line 2" in message and "not an output key" in message


def test_nul_is_an_error_naming_its_line():
    assert "line 2 contains NUL" in error_of(b"a=1\nb=x\x00y\n")


def test_bytes_that_are_not_utf8_are_an_error_naming_the_line():
    assert "line 3 is not UTF-8" in error_of(b"a=1\nb=2\nc=\xff\n")


@pytest.fixture
def run_outputs(tmp_path):
    def make(job_yaml: str = "name: j\nsteps: [{run: 'true'}]\n", cap: int = 1 << 20, secrets=None) -> RunOutputs:
        return RunOutputs(tmp_path, "run1", parse_job(job_yaml, "s", "j.yaml"), cap, secrets)

    return make


def write(outputs: RunOutputs, index: int, text: str | bytes):
    path = outputs.file_for(index)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_a_key_set_again_wins_within_a_file_and_across_steps(run_outputs):
    outputs = run_outputs()
    outputs.collect(write(outputs, 0, "a=1\nb=1\na=2\n"), "one")
    assert outputs.values == {"a": "2", "b": "1"}
    outputs.collect(write(outputs, 1, "b=3\n"), "two")
    assert outputs.public() == {"a": "2", "b": "3"}
    assert outputs.step_env("/x") == {"FLWD_OUTPUT_A": "2", "FLWD_OUTPUT_B": "3", "FLWD_OUTPUT": "/x"}


def test_each_step_gets_a_fresh_empty_file(run_outputs):
    outputs = run_outputs()
    write(outputs, 0, "a=1\n")
    assert outputs.file_for(0).read_bytes() == b""


def test_keys_differing_only_in_case_are_an_error_within_a_file_and_across_steps(run_outputs):
    outputs = run_outputs()
    with pytest.raises(OutputError, match="'name' and 'NAME' differ only in case"):
        outputs.collect(write(outputs, 0, "name=1\nNAME=2\n"), "one")
    assert outputs.values == {}  # nothing is taken from a refused file
    outputs.collect(write(outputs, 1, "Name=1\n"), "two")
    with pytest.raises(OutputError, match="step 'three'.*'Name' and 'NAME'"):
        outputs.collect(write(outputs, 2, "NAME=2\n"), "three")
    assert outputs.values == {"Name": "1"}


def test_the_run_s_outputs_are_capped_over_all_steps(run_outputs):
    outputs = run_outputs(cap=1024)
    outputs.collect(write(outputs, 0, "a=" + "x" * 600 + "\n"), "one")
    with pytest.raises(OutputError, match="over limits.max_run_outputs_bytes"):
        outputs.collect(write(outputs, 1, "b=" + "y" * 600 + "\n"), "two")
    outputs.collect(write(outputs, 2, "a=" + "z" * 900 + "\n"), "three")  # replacing a value frees its bytes
    assert len(outputs.values["a"]) == 900


def test_a_file_larger_than_the_cap_is_refused_without_reading_it_all(run_outputs):
    outputs = run_outputs(cap=1024)
    path = outputs.file_for(0)
    with open(path, "wb") as handle:
        handle.truncate(64 << 20)  # 64 MiB (sparse): read only up to the cap
    with pytest.raises(OutputError, match="wrote more than limits.max_run_outputs_bytes"):
        outputs.collect(path, "big")


def test_a_step_that_removed_its_file_set_nothing(run_outputs):
    outputs = run_outputs()
    outputs.file_for(0).unlink()
    outputs.collect(outputs.dir / "step-0", "gone")
    assert outputs.values == {}


TYPED = """
name: typed
outputs:
  count: {type: integer, description: How many}
  ratio: {type: number}
  ok: {type: boolean}
  label: {}
steps: [{run: 'true'}]
"""


def test_declared_outputs_are_typed_and_checked(run_outputs):
    outputs = run_outputs(TYPED)
    outputs.collect(write(outputs, 0, "count=42\nratio=0.5\nok=true\nlabel=007\nextra=1\n"), "one")
    assert outputs.public() == {"count": 42, "ratio": 0.5, "ok": True, "label": "007", "extra": "1"}
    assert outputs.step_env("/o")["FLWD_OUTPUT_COUNT"] == "42"  # steps get the text as written
    assert outputs.missing() is None
    with pytest.raises(OutputError, match="step 'two': output 'count' is declared integer: expected an integer"):
        outputs.collect(write(outputs, 1, "count=many\n"), "two")


def test_a_declared_output_never_set_is_named(run_outputs):
    outputs = run_outputs(TYPED)
    outputs.collect(write(outputs, 0, "count=1\nratio=2\n"), "one")
    assert outputs.missing() == "declared outputs 'ok', 'label' were not set by any step"


def test_secret_values_are_masked_inside_stored_values_but_steps_get_them_real(run_outputs):
    outputs = run_outputs(secrets=SecretMask(["hunter22"]))
    outputs.collect(write(outputs, 0, "url=https://u:hunter22@h/\nnotes<<E\nfirst\npw hunter22\nE\n"), "one")
    assert outputs.public() == {"url": "https://u:***@h/", "notes": "first\npw ***"}
    assert outputs.step_env("/o")["FLWD_OUTPUT_URL"] == "https://u:hunter22@h/"


def test_declared_outputs_are_part_of_the_job_and_its_stored_plan():
    job = parse_job(TYPED, "s", "j.yaml")
    assert job.summary()["outputs"] == {
        "count": {"type": "integer", "description": "How many"},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
        "label": {"type": "string"},
    }
    record = json.loads(plan_record(Plan(job, {}, Profile.SECURE, (), "sha256:x")))
    assert job_from_record(record).outputs == job.outputs


def test_an_output_too_large_for_a_step_s_environment_is_named():
    values = {"small": "x", "huge": "y" * MAX_ARG_STRLEN}
    problem = exec_problem({"PATH": "/bin", **output_env(values)}, ["true"], values)
    assert problem is not None and "output 'huge'" in problem and "FLWD_OUTPUT_HUGE" in problem
    fine = {"fine": "y" * 100_000}
    assert exec_problem({"PATH": "/bin", **output_env(fine)}, ["true"], fine) is None


def test_outputs_that_together_exceed_the_exec_limit_are_named_by_the_largest():
    values = {f"v{i}": "x" * 100_000 for i in range(exec_limit() // 100_000)}
    values["big"] = "z" * 120_000
    problem = exec_problem(output_env(values), ["true"], values)
    assert problem is not None and "too large" in problem and "'big'" in problem
