"""A run's outputs: what its steps append to ``$FLWD_OUTPUT``, read after each step.

The file's format is the one CI users know from GitHub Actions' ``GITHUB_OUTPUT``:
``key=value`` lines, and ``key<<DELIM`` ... ``DELIM`` for a value of several lines.
Each step gets a fresh, empty file (a container step has it mounted at
:data:`CONTAINER_PATH`); after the step flwd reads it, and later steps see the values
as ``FLWD_OUTPUT_<KEY>`` (the key upper-cased, so keys differing only in case are an
error: their variables would be one).  A key set again replaces the earlier value.

What a client sees (``GET /runs/ID``, ``run.finished``, the export) is typed by the
job's ``outputs:`` declarations and masked like the log (a secret argument's value
inside a value is ``***``); later steps get the real values.  A malformed file, a
value too large, or a declared output of the wrong type fails the step with a reason
naming the step, the line and the key; it is never a crash.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import disk_error
from ..jobs.arguments import coerce_value
from ..jobs.files import OUTPUT_KEY_RE
from ..models import Job
from ..planner import MAX_ARG_STRLEN, exec_limit
from .capture import SecretMask

ENV_PREFIX = "FLWD_OUTPUT_"
CONTAINER_PATH = "/flwd/output"  # where a container step's file is mounted


class OutputError(Exception):
    """A step's outputs cannot be taken: the message names the step and what is wrong."""


def parse_output_file(data: bytes, step: str) -> list[tuple[str, str]]:
    """``(key, value)`` pairs in the order written; raises OutputError naming the line.

    Lines end with LF or CRLF; empty lines are skipped.  A line is a heredoc
    (``key<<DELIM``) if ``<<`` comes before any ``=``, else ``key=value``.
    """
    where = f"step {step!r} wrote $FLWD_OUTPUT"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise OutputError(f"{where}: line {line} is not UTF-8") from None
    if "\x00" in text:
        raise OutputError(f"{where}: line {text[: text.index(chr(0))].count(chr(10)) + 1} contains NUL")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        i += 1
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if heredoc >= 0 and (equals < 0 or heredoc < equals):
            key, delimiter = line[:heredoc], line[heredoc + 2 :]
            if not delimiter:
                raise OutputError(f"{where}: line {number}: {key}<< needs a delimiter")
            try:
                end = lines.index(delimiter, i)
            except ValueError:
                raise OutputError(f"{where}: line {number}: no line {delimiter!r} ends the value of {key!r}") from None
            value = "\n".join(lines[i:end])
            i = end + 1
        elif equals >= 0:
            key, value = line[:equals], line[equals + 1 :]
        else:
            raise OutputError(f"{where}: line {number} is neither key=value nor key<<DELIMITER")
        if not OUTPUT_KEY_RE.fullmatch(key):
            shown = key if len(key) <= 64 else key[:64] + "…"
            raise OutputError(
                f"{where}: line {number}: {shown!r} is not an output key (letters, digits, '_'; not a digit first)"
            )
        pairs.append((key, value))
    return pairs


def output_env(values: dict[str, str]) -> dict[str, str]:
    """Outputs as the variables later steps see."""
    return {ENV_PREFIX + key.upper(): value for key, value in values.items()}


def exec_problem(env: dict[str, str], argv: list[str], values: dict[str, str]) -> str | None:
    """Why a step with this environment (holding ``values`` as outputs) and argv could not start (E2BIG),
    naming the output; None if it can.  Checked as the step starts: outputs exist only then."""

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass")) + 1  # the bytes exec copies, NUL included

    sizes = {key: size(f"{ENV_PREFIX}{key.upper()}={value}") for key, value in values.items()}
    for key, bytes_ in sizes.items():
        if bytes_ > MAX_ARG_STRLEN:
            return (
                f"output {key!r} is too large for a step's environment "
                f"({bytes_ - 1} bytes as {ENV_PREFIX}{key.upper()}; Linux refuses a variable over {MAX_ARG_STRLEN - 1})"
            )
    total = sum(size(f"{k}={v}") + 8 for k, v in env.items()) + sum(size(a) + 8 for a in argv)
    limit = exec_limit()
    if total > limit and sizes:
        largest = max(sizes, key=sizes.__getitem__)
        return (
            f"the outputs make the step's environment too large ({total} bytes with its argv; "
            f"the limit here is {limit}); the largest output is {largest!r}"
        )
    return None


class RunOutputs:
    """The outputs of one run while it executes: its files, the values so far, and their checks."""

    def __init__(self, root: Path, run_id: str, job: Job, cap: int, secrets: SecretMask | None = None) -> None:
        self.dir = root / f"{run_id}.outputs"  # beside the work dir, not in it: a step's HOME is its own
        self.declared = {spec.name: spec for spec in job.outputs}
        self.cap = cap
        self.secrets = secrets or None
        self.values: dict[str, str] = {}
        self.typed: dict[str, Any] = {}
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise disk_error("could not create the run's outputs dir", self.dir, exc) from None

    def file_for(self, index: int, container: bool = False) -> Path:
        """A new, empty file for step ``index``; a container's user may be another uid, so it may write it."""
        path = self.dir / f"step-{index}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            if container:
                os.fchmod(fd, 0o666)  # the dir above stays 0700: nobody else on the host reaches it
        finally:
            os.close(fd)
        return path

    def step_env(self, path: str) -> dict[str, str]:
        """What a step gets: the outputs so far, and where to write its own (``path`` as the step sees it)."""
        return {**output_env(self.values), "FLWD_OUTPUT": path}

    def collect(self, path: Path, step: str) -> None:
        """Take what the step wrote; raises OutputError (nothing is taken from a bad file)."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(self.cap + 1)
        except FileNotFoundError:
            return  # the step removed its file: it set nothing
        except OSError as exc:
            raise OutputError(f"step {step!r}: $FLWD_OUTPUT could not be read: {exc.strerror}") from None
        if len(data) > self.cap:
            raise OutputError(
                f"step {step!r} wrote more than limits.max_run_outputs_bytes ({self.cap}) to $FLWD_OUTPUT"
            )
        values, typed = dict(self.values), dict(self.typed)
        folded = {key.upper(): key for key in values}
        for key, value in parse_output_file(data, step):
            other = folded.setdefault(key.upper(), key)
            if other != key:
                raise OutputError(
                    f"step {step!r}: outputs {other!r} and {key!r} differ only in case (both would be {ENV_PREFIX}{key.upper()})"
                )
            spec = self.declared.get(key)
            if spec is not None:
                converted, problem = coerce_value(spec.type, value)
                if problem:
                    raise OutputError(f"step {step!r}: output {key!r} is declared {spec.type}: {problem}")
                typed[key] = converted
            values[key] = value
        size = sum(len(k.encode()) + len(v.encode()) for k, v in values.items())
        if size > self.cap:
            raise OutputError(
                f"step {step!r}: the run's outputs would be {size} bytes, over limits.max_run_outputs_bytes ({self.cap})"
            )
        self.values, self.typed = values, typed

    def missing(self) -> str | None:
        """The reason a run fails if a declared output was never set (checked when its steps succeeded)."""
        absent = [name for name in self.declared if name not in self.values]
        if not absent:
            return None
        names = ", ".join(repr(name) for name in absent)
        return f"declared output{'s' if len(absent) > 1 else ''} {names} {'were' if len(absent) > 1 else 'was'} not set by any step"

    def public(self) -> dict[str, Any]:
        """The outputs as stored and shown: declared ones typed, secret values masked inside each value."""
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            masked = self.mask(value)
            out[key] = self.typed.get(key, value) if masked == value else masked
        return out

    def mask(self, value: str) -> str:
        """``value`` with every secret argument's value in it replaced by ``***``, as the log has it."""
        if self.secrets is None:
            return value
        lines = value.encode("utf-8").split(b"\n")
        return b"\n".join(self.secrets.line(line, False) for line in lines).decode("utf-8")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
