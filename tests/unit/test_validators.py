"""Every name validator takes the whole value: no newline slips past a ``$``, no NUL, no control character.

Python's ``$`` also matches before a final newline, so ``re.match(r"^[a-z]+$", "zz\\n")`` succeeds;
the validators use full matches, and an argument's ``pattern`` keeps its JSON Schema (ECMA-262)
meaning, where ``$`` is the end of the value.
"""

from __future__ import annotations

import json

import pytest

from flwd_server.config import ConfigError, validate_source_spec
from flwd_server.errors import InvalidArgs, InvalidJob, Unprocessable, UnsafeSource
from flwd_server.jobs import arguments
from flwd_server.jobs.arguments import resolve_args
from flwd_server.jobs.files import parse_job
from flwd_server.sources.registry import parse_spec
from flwd_server.sources.safety import require_safe_ref

BAD_TAILS = ["\n", "\x00", "\x01", "\r\n", "\x1b"]

ARGS_JOB = """name: typed
args:
  user: {type: string, pattern: "^[a-z]{1,8}$"}
  count: {type: integer}
  ratio: {type: number}
  flag: {type: boolean}
  anywhere: {type: string, pattern: "[0-9]"}
  literal: {type: string, pattern: "^a\\\\$$"}
  klass: {type: string, pattern: "^[$]x$"}
steps:
  - run: "true"
"""


@pytest.fixture(scope="module")
def typed():
    return parse_job(ARGS_JOB, "s", "typed.yaml")


def refused_arg(job, name, value) -> dict:
    with pytest.raises(InvalidArgs) as caught:
        resolve_args(job, {name: value})
    return {e["field"]: e["message"] for e in caught.value.errors}


@pytest.mark.parametrize("tail", BAD_TAILS, ids=repr)
def test_an_anchored_pattern_refuses_a_trailing_newline_nul_or_control_character(typed, tail):
    assert resolve_args(typed, {"user": "alice"}) == {"user": "alice"}
    assert "args.user" in refused_arg(typed, "user", "alice" + tail)
    assert "args.user" in refused_arg(typed, "user", tail + "alice")


@pytest.mark.parametrize("name,value", [("count", "5"), ("ratio", "1.5"), ("flag", "true")])
@pytest.mark.parametrize("tail", [*BAD_TAILS, " ", "\t"], ids=repr)
def test_typed_arguments_given_as_text_refuse_anything_around_the_value(typed, name, value, tail):
    assert name in resolve_args(typed, {name: value})
    assert f"args.{name}" in refused_arg(typed, name, value + tail)
    assert f"args.{name}" in refused_arg(typed, name, tail + value)


@pytest.mark.parametrize("text", ["1_000", "١٢", "²", "0x10", "1e5", "nan", "inf", "+", ""])
def test_integers_given_as_text_are_plain_ascii_digits(typed, text):
    assert "args.count" in refused_arg(typed, "count", text)


@pytest.mark.parametrize("text", ["1_0.5", "١.٥", "nan", "inf", "-Infinity", "1e99999", ".", "1.5 "])
def test_numbers_given_as_text_are_plain_decimal_notation(typed, text):
    assert "args.ratio" in refused_arg(typed, "ratio", text)


def test_plain_numbers_given_as_text_still_work(typed):
    assert resolve_args(typed, {"count": "-12", "ratio": "-.5e3"}) == {"count": -12, "ratio": -500.0}
    assert resolve_args(typed, {"ratio": "+3."}) == {"ratio": 3.0}


def test_a_pattern_is_searched_and_dollar_is_the_end_of_the_value(typed):
    assert resolve_args(typed, {"anywhere": "ab3\ncd"}) == {"anywhere": "ab3\ncd"}  # unanchored: anywhere
    assert resolve_args(typed, {"literal": "a$"}) == {"literal": "a$"}  # an escaped $ is a dollar sign
    assert "args.literal" in refused_arg(typed, "literal", "a$\n")
    assert resolve_args(typed, {"klass": "$x"}) == {"klass": "$x"}  # a $ inside [] is a dollar sign
    assert "args.klass" in refused_arg(typed, "klass", "$x\n")


@pytest.mark.parametrize(
    "pattern,value,matches",
    [
        ("^a.c$", "a\nc", False),  # ECMA's . matches no line terminator
        ("^a.c$", "a\rc", False),
        ("^a.c$", "a\u2028c", False),
        ("^a.c$", "abc", True),
        ("^\\d+$", "١٢", False),  # ECMA's \d is [0-9]
        ("^\\w+$", "é", False),
        ("^[]a]+$", "]a", True),  # Python reads a leading ] as a literal
        ("^(?:ab)+$", "abab", True),
        ("a(?=b)", "ab", True),
        ("(?<!x)y$", "zy", True),
    ],
)
def test_patterns_follow_ecma_262_where_python_differs(pattern, value, matches):
    assert bool(arguments.pattern_regex(pattern).search(value)) is matches


@pytest.mark.parametrize("pattern", ["\\Aabc", "abc\\Z", "abc\\z", "(?i)abc", "(?P<x>a)", "(?s:a.)", "(?#c)a"])
def test_python_only_pattern_syntax_is_refused_when_the_job_is_loaded(pattern):
    text = ARGS_JOB.replace('pattern: "[0-9]"', f"pattern: {json.dumps(pattern)}")
    with pytest.raises(InvalidJob) as caught:
        parse_job(text, "s", "typed.yaml")
    assert [e["field"] for e in caught.value.errors] == ["args.anywhere.pattern"]


JOB_TEMPLATE = """name: {name}
args:
  {arg}: {{type: string}}
env:
  {env}: x
steps:
  - run: "true"
    env:
      {step_env}: y
"""


def job_text(name="ok", arg="ok", env="OK", step_env="OK"):
    quoted = {k: '"' + v.encode("unicode_escape").decode() + '"' for k, v in locals().items()}
    return JOB_TEMPLATE.format(**quoted)


@pytest.mark.parametrize("tail", BAD_TAILS, ids=repr)
@pytest.mark.parametrize(
    "key,field",
    [("name", "name"), ("arg", "args.ok{tail}"), ("env", "env.OK{tail}"), ("step_env", "steps[0].env.OK{tail}")],
)
def test_job_names_argument_names_and_variable_names_refuse_a_trailing_newline_nul_or_control(key, field, tail):
    parse_job(job_text(), "s", "ok.yaml")
    value = "OK" if "env" in key else "ok"
    with pytest.raises(InvalidJob) as caught:
        parse_job(job_text(**{key: value + tail}), "s", "ok.yaml")
    assert [e["field"] for e in caught.value.errors] == [field.format(tail=tail)]


@pytest.mark.parametrize("tail", BAD_TAILS, ids=repr)
def test_a_source_name_refuses_a_trailing_newline_nul_or_control_character(tail):
    spec = {"type": "local", "name": "zz", "path": "/tmp"}
    assert validate_source_spec(spec)["name"] == "zz"
    with pytest.raises(ConfigError) as caught:
        validate_source_spec({**spec, "name": "zz" + tail})
    assert caught.value.key == "source.name"
    with pytest.raises(Unprocessable) as refused:  # what POST /sources and the CLI answer
        parse_spec({**spec, "name": "zz" + tail})
    assert [e["field"] for e in refused.value.errors] == ["name"]


@pytest.mark.parametrize("tail", BAD_TAILS, ids=repr)
def test_a_git_ref_refuses_a_trailing_newline_nul_or_control_character(tail):
    assert require_safe_ref("main") == "main"
    with pytest.raises(UnsafeSource) as caught:
        require_safe_ref("main" + tail)
    assert caught.value.extra["errors"][0]["field"] == "ref"
