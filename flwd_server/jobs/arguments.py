"""Job arguments: their values coerced, checked against the job's schema, and handed to steps.

One rule for every way a value arrives (JSON, CLI text, form input) and for
outputs, which share the argument types.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from ..errors import InvalidArgs
from ..models import ArgSpec, Job

PLACEHOLDER_RE = re.compile(r"\{\{\s*args\.([a-z][a-z0-9_]*)\s*\}\}")
INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,64}")
NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]{1,64}(?:\.[0-9]{0,64})?|\.[0-9]{1,64})(?:[eE][+-]?[0-9]{1,4})?")
_PYTHON_ONLY_ESCAPES = "AZzG"
_ECMA_GROUPS = (":", "=", "!", "<=", "<!")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@functools.lru_cache(maxsize=1024)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    r"""An argument's ``pattern`` compiled with its JSON Schema (ECMA-262) meaning.

    The value is searched, not matched whole; ``$`` is the end of the value (Python's
    would also match before a final newline), ``.`` matches no line terminator, and
    ``\d``, ``\w``, ``\b`` are ASCII.  Python-only syntax (``\A``, ``\Z``, ``\z``,
    ``\G``, inline flags, ``(?P...)`` and other extension groups) is refused rather
    than given a meaning a client's validator would not share.  Raises ValueError.
    """
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1 : i + 2] and pattern[i + 1] in _PYTHON_ONLY_ESCAPES:
                raise ValueError(f"\\{pattern[i + 1]} is Python syntax, not ECMA-262: use ^ and $")
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append(c)
        elif c == "[":
            in_class = True
            start = i + 1 + (pattern[i + 1 : i + 2] == "^")
            start += pattern[start : start + 1] == "]"  # a leading ']' is a literal, as Python reads it
            out.append(pattern[i:start])
            i = start
            continue
        elif c == "$":
            out.append(r"\Z")
        elif c == ".":
            out.append(r"[^\n\r\u2028\u2029]")
        elif c == "(" and pattern[i + 1 : i + 2] == "?":
            if not pattern[i + 2 :].startswith(_ECMA_GROUPS):
                raise ValueError(
                    "of the (?...) groups only (?:...), (?=...), (?!...), (?<=...) and (?<!...) are supported"
                )
            out.append(c)
        else:
            out.append(c)
        i += 1
    return re.compile("".join(out), re.ASCII)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _coerce(spec: ArgSpec, value: Any) -> tuple[Any, str | None]:
    """Accept native JSON values, and strings for every type (CLI and form input)."""
    if spec.type == "string":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return value, "expected a string"
        return str(value), None
    if spec.type == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE, None
        return value, "expected true or false"
    if isinstance(value, str):
        # Python's int() and float() also take spaces, newlines, '_' and non-ASCII digits: the text must be plain
        text_re = INTEGER_TEXT if spec.type == "integer" else NUMBER_TEXT
        try:
            if not text_re.fullmatch(value):
                raise ValueError(value)
            value = int(value) if spec.type == "integer" else float(value)
        except ValueError:
            return value, f"expected {'an integer' if spec.type == 'integer' else 'a number'}"
    if spec.type == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not is_int(value):
            return value, "expected an integer"
    elif not is_number(value):
        return value, "expected a number"
    return value, None


def coerce_value(kind: str, value: Any) -> tuple[Any, str | None]:
    """``value`` (native, or text) as one of ARG_TYPES, or the problem: arguments' and outputs' one rule."""
    return _coerce(ArgSpec(name="", type=kind), value)


def check_value(spec: ArgSpec, value: Any, coerce: bool = True, check_choices: bool = True) -> str | None:
    if coerce:
        value, problem = _coerce(spec, value)
    else:
        problem = None
        kinds = {"string": str, "boolean": bool}
        if spec.type in kinds and not isinstance(value, kinds[spec.type]):
            problem = f"expected a {spec.type}"
        elif spec.type == "integer" and not is_int(value):
            problem = "expected an integer"
        elif spec.type == "number" and not is_number(value):
            problem = "expected a number"
    if problem:
        return problem
    if spec.type == "string":
        if "\x00" in value:
            return "must not contain NUL characters"
        if len(value) > 65536:
            return "longer than 65536 characters"
        if spec.pattern and not pattern_regex(spec.pattern).search(value):
            return f"does not match the pattern {spec.pattern}"
    if spec.type in ("integer", "number"):
        if spec.minimum is not None and value < spec.minimum:
            return f"must be at least {spec.minimum}"
        if spec.maximum is not None and value > spec.maximum:
            return f"must be at most {spec.maximum}"
    if check_choices and spec.choices and value not in spec.choices:
        return f"must be one of {', '.join(map(str, spec.choices))}"
    return None


def resolve_args(job: Job, given: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``given`` against the job's schema and fill defaults.

    Raises InvalidArgs naming every problem: unknown names, missing required
    ones, wrong types, patterns, bounds and choices.
    """
    given = given or {}
    errors: list[dict[str, str]] = []
    resolved: dict[str, Any] = {}
    for name in given:
        if job.arg(name) is None:
            known = ", ".join(a.name for a in job.args) or "none"
            errors.append({"field": f"args.{name}", "message": f"unknown argument (this job takes: {known})"})
    for spec in job.args:
        if spec.name in given and given[spec.name] is not None:
            value, problem = _coerce(spec, given[spec.name])
            problem = problem or check_value(spec, value, coerce=False)
            if problem:
                errors.append({"field": f"args.{spec.name}", "message": problem})
            else:
                resolved[spec.name] = value
        elif spec.default is not None:
            resolved[spec.name] = spec.default
        elif spec.required:
            errors.append({"field": f"args.{spec.name}", "message": "is required"})
    if errors:
        names = ", ".join(e["field"] for e in errors)
        raise InvalidArgs(f"invalid arguments for job {job.name!r}: {names}", errors)
    return resolved


def arg_text(value: Any) -> str:
    """An argument's value as a step sees it (a variable, an argv element)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def arg_env(args: dict[str, Any]) -> dict[str, str]:
    """Args as ``FLWD_ARG_<NAME>`` variables: the only way they reach a shell step."""
    return {f"FLWD_ARG_{name.upper()}": arg_text(value) for name, value in args.items()}


def render_command(command: tuple[str, ...], args: dict[str, Any]) -> list[str]:
    """Fill ``{{ args.x }}`` placeholders; each fills exactly one argv element."""
    out = []
    for part in command:
        match = PLACEHOLDER_RE.fullmatch(part)
        if match:
            out.append(arg_text(args.get(match.group(1), "")))
        else:
            out.append(part)
    return out


def render_group(template: str, args: dict[str, Any]) -> str:
    """A concurrency group: each ``{{ args.x }}`` in the template replaced by the argument's text."""
    return PLACEHOLDER_RE.sub(lambda match: arg_text(args.get(match.group(1), "")), template)
