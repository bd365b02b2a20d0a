"""Job files: parsed and checked.

A job file is YAML (one job per file, under a source's ``jobs/`` folder).
Parsing collects *every* invalid field before failing, so a user fixes a file
in one pass.  Arguments are validated against the job's schema the same way.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from ..errors import InvalidJob
from ..formats.yaml_loader import DuplicateKeyError, load_yaml
from ..models import ARG_TYPES, WHEN_BUSY, ArgSpec, Concurrency, Job, OutputSpec, Step
from .arguments import PLACEHOLDER_RE, check_value, is_number, pattern_regex

JOB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}")
ARG_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
OUTPUT_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an output's key, declared or written ($FLWD_OUTPUT)
CAPABILITIES = ("network", "privileged", "host-env", "host-network")
CONCURRENCY_KEYS = {"group", "limit", "when_busy"}
MAX_GROUP_TEMPLATE = 200  # characters of a group template; a rendered group is capped in planner.py
JOB_KEYS = {"name", "description", "args", "outputs", "requires", "timeout", "env", "steps", "approval", "concurrency"}
APPROVAL_KEYS = {"required"}
OUTPUT_KEYS = {"type", "description"}
ARG_KEYS = {"type", "required", "default", "choices", "pattern", "minimum", "maximum", "description", "secret"}
STEP_KEYS = {"name", "run", "image", "command", "env", "workdir", "timeout", "privileged", "network"}
MAX_JOB_FILE_BYTES = 256 * 1024


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, field: str, message: str, line: int | None = None) -> None:
        item: dict[str, Any] = {"field": field, "message": message}
        if line is not None:
            item["line"] = line
        self.items.append(item)


def _parse_arg(name: str, raw: Any, errors: _Errors) -> ArgSpec | None:
    where = f"args.{name}"
    if not isinstance(name, str) or not ARG_NAME_RE.fullmatch(name):
        errors.add(where, "argument names are lowercase letters, digits and '_', starting with a letter")
        return None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.add(where, "expected a mapping (type, required, default, ...)")
        return None
    for key in raw:
        if key not in ARG_KEYS:
            errors.add(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(ARG_KEYS))})")
    kind = raw.get("type", "string")
    if kind not in ARG_TYPES:
        errors.add(f"{where}.type", f"expected one of {', '.join(ARG_TYPES)}")
        return None
    for key in ("required", "secret"):
        if key in raw and not isinstance(raw[key], bool):
            errors.add(f"{where}.{key}", "expected true or false")
    pattern = raw.get("pattern")
    if pattern is not None:
        if kind != "string" or not isinstance(pattern, str):
            errors.add(f"{where}.pattern", "a pattern applies to string arguments and must be a string")
            pattern = None
        else:
            try:
                pattern_regex(pattern)
            except (re.error, ValueError) as exc:
                errors.add(f"{where}.pattern", f"not a valid regular expression: {exc}")
                pattern = None
    bounds: dict[str, float | None] = {}
    for key in ("minimum", "maximum"):
        value = raw.get(key)
        if value is not None and (kind not in ("integer", "number") or not is_number(value)):
            errors.add(f"{where}.{key}", "bounds apply to integer and number arguments and must be numbers")
            value = None
        bounds[key] = value
    if bounds["minimum"] is not None and bounds["maximum"] is not None and bounds["minimum"] > bounds["maximum"]:
        errors.add(f"{where}.minimum", "is greater than maximum")
    choices = raw.get("choices")
    if choices is not None and (not isinstance(choices, list) or not choices):
        errors.add(f"{where}.choices", "expected a non-empty list")
        choices = None
    description = raw.get("description", "")
    if not isinstance(description, str):
        errors.add(f"{where}.description", "expected a string")
        description = ""
    spec = ArgSpec(
        name=name,
        type=kind,
        required=raw.get("required") is True,
        default=None,
        choices=tuple(choices) if choices else None,
        pattern=pattern,
        minimum=bounds["minimum"],
        maximum=bounds["maximum"],
        description=description,
        secret=raw.get("secret") is True,
    )
    if spec.choices:
        for i, choice in enumerate(spec.choices):
            problem = check_value(spec, choice, coerce=False, check_choices=False)
            if problem:
                errors.add(f"{where}.choices[{i}]", problem)
    if "default" in raw and raw["default"] is not None:
        problem = check_value(spec, raw["default"], coerce=False)
        if problem:
            errors.add(f"{where}.default", problem)
        else:
            spec = ArgSpec(**{**spec.__dict__, "default": raw["default"]})
    return spec


def _parse_outputs(raw: Any, errors: _Errors) -> tuple[OutputSpec, ...]:
    """``outputs:``: each key a step must set, with its type (the types of arguments)."""
    if not isinstance(raw, dict | None):
        errors.add("outputs", "expected a mapping of output name to {type, description}")
    out, folded = [], {}
    for name, spec in (raw if isinstance(raw, dict) else {}).items():
        where, spec = f"outputs.{name}", {} if spec is None else spec
        if not isinstance(name, str) or not OUTPUT_KEY_RE.fullmatch(name):
            errors.add(where, "output names are letters, digits and '_', not starting with a digit")
        elif name.upper() in folded:
            errors.add(
                where, f"differs from {folded[name.upper()]!r} only in case: both are FLWD_OUTPUT_{name.upper()}"
            )
        elif not isinstance(spec, dict):
            errors.add(where, "expected a mapping (type, description)")
        else:
            folded[name.upper()] = name
            for key in set(spec) - OUTPUT_KEYS:
                errors.add(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(OUTPUT_KEYS))})")
            kind, description = spec.get("type", "string"), spec.get("description", "")
            if not isinstance(kind, str) or kind not in ARG_TYPES:
                errors.add(f"{where}.type", f"expected one of {', '.join(ARG_TYPES)}")
            elif not isinstance(description, str):
                errors.add(f"{where}.description", "expected a string")
            else:
                out.append(OutputSpec(name=name, type=kind, description=description.strip()))
    return tuple(out)


def _parse_concurrency(raw: Any, args: list[ArgSpec], errors: _Errors) -> Concurrency | None:
    """``concurrency: {group, limit, when_busy}``; the group's placeholders name known, non-secret args.

    A secret argument is refused because the rendered group is shown to every reader of the queue.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.add("concurrency", "expected a mapping (group, limit, when_busy)")
        return None
    for key in set(raw) - CONCURRENCY_KEYS:
        errors.add(f"concurrency.{key}", f"unknown key (allowed: {', '.join(sorted(CONCURRENCY_KEYS))})")
    group, limit, when_busy = raw.get("group"), raw.get("limit", 1), raw.get("when_busy", "queue")
    ok = True
    if not isinstance(group, str) or not group.strip() or len(group) > MAX_GROUP_TEMPLATE:
        errors.add(
            "concurrency.group",
            f"required: a name of 1 to {MAX_GROUP_TEMPLATE} characters, e.g. 'deploy-{{{{ args.env }}}}'",
        )
        ok = False
    else:
        specs = {a.name: a for a in args}
        for name in PLACEHOLDER_RE.findall(group):
            if name not in specs:
                errors.add("concurrency.group", f"refers to unknown argument {name!r}")
                ok = False
            elif specs[name].secret:
                errors.add("concurrency.group", f"refers to secret argument {name!r}: a group is shown in the queue")
                ok = False
        if ("{{" in PLACEHOLDER_RE.sub("", group) or "}}" in PLACEHOLDER_RE.sub("", group)) and ok:
            errors.add("concurrency.group", "a placeholder is written '{{ args.NAME }}'")
            ok = False
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
        errors.add("concurrency.limit", "expected a whole number from 1 to 10000")
        ok = False
    if when_busy not in WHEN_BUSY:
        errors.add("concurrency.when_busy", f"expected one of {', '.join(WHEN_BUSY)}")
        ok = False
    return Concurrency(group=group, limit=limit, when_busy=when_busy) if ok else None


def _parse_approval(raw: Any, errors: _Errors) -> int:
    """``approval: {required: N}``: N distinct approvers before a run may start (``approval:`` alone: 1)."""
    if raw is None:
        return 1
    if not isinstance(raw, dict):
        errors.add("approval", "expected a mapping like {required: 2} (the number of distinct approvers)")
        return 0
    for key in set(raw) - APPROVAL_KEYS:
        errors.add(f"approval.{key}", f"unknown key (allowed: {', '.join(sorted(APPROVAL_KEYS))})")
    required = raw.get("required", 1)
    if isinstance(required, bool) or not isinstance(required, int) or required < 1:
        errors.add("approval.required", "expected a whole number of distinct approvers, at least 1")
        return 0
    return required


def _parse_env(where: str, raw: Any, errors: _Errors) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        errors.add(where, "expected a mapping of NAME: value")
        return ()
    out = []
    for name, value in raw.items():
        if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
            errors.add(f"{where}.{name}", "not a valid environment variable name")
        elif name.startswith("FLWD_"):
            errors.add(f"{where}.{name}", "FLWD_* variables are reserved")
        elif isinstance(value, (dict, list)) or value is None:
            errors.add(f"{where}.{name}", "expected a string, number or boolean")
        else:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if "\x00" in text:
                errors.add(f"{where}.{name}", "must not contain NUL")
            else:
                out.append((name, text))
    return tuple(sorted(out))


def _parse_step(index: int, raw: Any, arg_names: set[str], errors: _Errors) -> Step | None:
    where = f"steps[{index}]"
    if not isinstance(raw, dict):
        errors.add(where, "expected a mapping with name and run (or image)")
        return None
    for key in raw:
        if key not in STEP_KEYS:
            errors.add(f"{where}.{key}", f"unknown key (allowed: {', '.join(sorted(STEP_KEYS))})")
    name = raw.get("name", f"step-{index + 1}")
    if not isinstance(name, str) or not name or len(name) > 128:
        errors.add(f"{where}.name", "expected a non-empty string of at most 128 characters")
        name = f"step-{index + 1}"
    run, image = raw.get("run"), raw.get("image")
    if (run is None) == (image is None):
        errors.add(where, "needs exactly one of run (a shell step) or image (a container step)")
        return None
    if run is not None and (not isinstance(run, str) or not run.strip()):
        errors.add(f"{where}.run", "expected a non-empty shell script")
    if image is not None and (not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image)):
        errors.add(f"{where}.image", "expected an image reference like registry/repo@sha256:...")
    command = raw.get("command", [])
    if run is not None and "command" in raw:
        errors.add(f"{where}.command", "command applies to container steps; shell steps use run")
    if not isinstance(command, list) or not all(
        isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in command
    ):
        errors.add(f"{where}.command", "expected a list of strings (argv)")
        command = []
    command = [str(c) for c in command]
    for i, part in enumerate(command):
        if "{{" in part or "}}" in part:
            match = PLACEHOLDER_RE.fullmatch(part)
            if not match:
                errors.add(f"{where}.command[{i}]", "a placeholder must fill the whole element: '{{ args.NAME }}'")
            elif match.group(1) not in arg_names:
                errors.add(f"{where}.command[{i}]", f"refers to unknown argument {match.group(1)!r}")
    timeout = raw.get("timeout")
    if timeout is not None and (not is_number(timeout) or timeout <= 0):
        errors.add(f"{where}.timeout", "expected a positive number of seconds")
        timeout = None
    workdir = raw.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or not workdir.startswith("/")):
        errors.add(f"{where}.workdir", "expected an absolute path inside the container")
        workdir = None
    privileged = raw.get("privileged", False)
    if not isinstance(privileged, bool):
        errors.add(f"{where}.privileged", "expected true or false")
        privileged = False
    network = raw.get("network")
    if network is not None and network not in ("host", "none", "default"):
        errors.add(f"{where}.network", "expected host, none or default")
        network = None
    if run is not None and (privileged or network):
        errors.add(where, "privileged and network apply to container steps only")
    return Step(
        name=name,
        run=run if isinstance(run, str) else None,
        image=image if isinstance(image, str) else None,
        command=tuple(command),
        env=_parse_env(f"{where}.env", raw.get("env"), errors),
        workdir=workdir,
        timeout=timeout,
        privileged=privileged,
        network=network,
    )


def parse_job(
    text: str | bytes, source: str, path: str, revision: str | None = None, default_timeout: float = 3600
) -> Job:
    """Parse one job file; raise InvalidJob naming every invalid field."""
    raw_bytes = text.encode() if isinstance(text, str) else text
    if len(raw_bytes) > MAX_JOB_FILE_BYTES:
        raise InvalidJob(path, [{"field": "(file)", "message": f"larger than {MAX_JOB_FILE_BYTES} bytes"}])
    try:
        data = load_yaml(raw_bytes)
    except DuplicateKeyError as exc:
        message = f"duplicate key (first on line {exc.first_line}); give each once"
        raise InvalidJob(path, [{"field": exc.key, "message": message, "line": exc.line}]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        item: dict[str, Any] = {"field": "(file)", "message": f"not valid YAML: {getattr(exc, 'problem', None) or exc}"}
        if mark is not None:
            item["line"] = mark.line + 1
        raise InvalidJob(path, [item]) from None
    errors = _Errors()
    if not isinstance(data, dict):
        raise InvalidJob(path, [{"field": "(file)", "message": "expected a mapping with name and steps"}])
    for key in data:
        if key not in JOB_KEYS:
            errors.add(str(key), f"unknown key (allowed: {', '.join(sorted(JOB_KEYS))})")
    name = data.get("name")
    if not isinstance(name, str) or not JOB_NAME_RE.fullmatch(name):
        errors.add("name", "required: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit")
        name = "?"
    description = data.get("description", "")
    if not isinstance(description, str):
        errors.add("description", "expected a string")
        description = ""
    args_raw = data.get("args") or {}
    args: list[ArgSpec] = []
    if not isinstance(args_raw, dict):
        errors.add("args", "expected a mapping of argument name to schema")
    else:
        for arg_name, arg_raw in args_raw.items():
            spec = _parse_arg(arg_name, arg_raw, errors)
            if spec:
                args.append(spec)
    requires = data.get("requires") or []
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        errors.add("requires", f"expected a list of capabilities ({', '.join(CAPABILITIES)})")
        requires = []
    for i, cap in enumerate(requires):
        if cap not in CAPABILITIES:
            errors.add(f"requires[{i}]", f"unknown capability {cap!r} (known: {', '.join(CAPABILITIES)})")
    timeout = data.get("timeout", default_timeout)
    if not is_number(timeout) or timeout <= 0:
        errors.add("timeout", "expected a positive number of seconds")
        timeout = default_timeout
    env = _parse_env("env", data.get("env"), errors)
    outputs = _parse_outputs(data.get("outputs"), errors)
    approvals = _parse_approval(data["approval"], errors) if "approval" in data else 0
    steps_raw = data.get("steps")
    steps: list[Step] = []
    if not isinstance(steps_raw, list) or not steps_raw:
        errors.add("steps", "required: a non-empty list of steps")
    else:
        names = {a.name for a in args}
        for i, step_raw in enumerate(steps_raw):
            step = _parse_step(i, step_raw, names, errors)
            if step:
                steps.append(step)
    concurrency = _parse_concurrency(data.get("concurrency"), args, errors)
    if errors.items:
        raise InvalidJob(path, errors.items)
    return Job(
        name=name,
        source=source,
        description=description.strip(),
        args=tuple(args),
        requires=tuple(dict.fromkeys(requires)),
        timeout=float(timeout),
        env=env,
        steps=tuple(steps),
        path=path,
        revision=revision,
        file_digest="sha256:" + hashlib.sha256(raw_bytes).hexdigest(),
        outputs=outputs,
        concurrency=concurrency,
        approvals=approvals,
    )
