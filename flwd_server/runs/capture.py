"""A step's output, host or container alike: lines, cut when too long, and the run's cap.

The rule, one for every executor:

* Output is read in chunks and split into lines; a line longer than
  ``limits.max_line_bytes`` is cut to that length and marked (``truncated``),
  and the rest of it is skipped up to its newline.
* A run stores at most ``limits.max_output_bytes`` of output over all its steps,
  each line counted with its newline.  A line is stored whole or not at all.
  The first line that does not fit ends storing for the rest of the run: one
  marker line says so, and every byte after it is counted (``dropped``), never
  stored, so the stored output is exactly a prefix of what the run printed.
* Before a line is counted and stored, every value of a secret argument in it
  is replaced by ``***`` (:class:`SecretMask`), so nothing downstream (events,
  streams, the export, logs) ever holds it.  A cut line that ends with the
  start of a secret has that start masked too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..jobs.arguments import arg_text
from ..models import SECRET_MASK, Decision, Verdict

TRUNCATED_MARK = " [flwd: line truncated]"
LIMIT_NOTICE = "[flwd: output limit of {limit} bytes reached; the rest is not stored]"

MIN_MASKED_BYTES = 4  # a shorter secret would mask common text everywhere (docs/jobs.rst)
EmitLines = Callable[[str, list[tuple[str, bool]]], None]  # (stream, [(line, truncated), ...])


class LineSplitter:
    """Split a byte stream into lines, cutting any line longer than ``max_bytes``.

    Works a chunk at a time (``bytes.split``), not a line at a time: a job
    printing short lines as fast as it can costs one C call per 64 KiB.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buf = b""
        self.skipping = False  # inside a line already cut: drop until its newline

    def feed(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        data = self.buf + chunk if self.buf else chunk
        parts = data.split(b"\n")
        tail = parts.pop()
        out: list[tuple[bytes, bool]] = []
        limit = self.max_bytes
        if parts and self.skipping:
            parts = parts[1:]  # the end of the line that was cut
            self.skipping = False
        for line in parts:
            out.append((line[:limit], True) if len(line) > limit else (line, False))
        if self.skipping or len(tail) > limit:
            if not self.skipping:
                out.append((tail[:limit], True))
                self.skipping = True
            self.buf = b""
        else:
            self.buf = tail
        return out

    def rest(self) -> list[tuple[bytes, bool]]:
        """The unfinished last line, once: the splitter is empty afterwards."""
        tail, self.buf = self.buf, b""
        if tail and not self.skipping:
            return [(tail, False)]
        return []


class SecretMask:
    """Replaces secret values in output lines by ``***``.

    Output is masked a line at a time, so a value split across two reads is
    whole by then.  A value of several lines is masked line by line (each of
    its lines is a piece), as a step prints it.  Pieces shorter than
    ``MIN_MASKED_BYTES`` are not masked: masking ``a`` would hide every a.
    """

    def __init__(self, values: Iterable[str]) -> None:
        pieces = set()
        for value in values:
            for piece in value.encode("utf-8").split(b"\n"):
                piece = piece.removesuffix(b"\r")
                if len(piece) >= MIN_MASKED_BYTES:
                    pieces.add(piece)
        self.pieces = sorted(pieces, key=len, reverse=True)  # a piece inside a longer one: the longer wins
        self.mask = SECRET_MASK.encode()

    def __bool__(self) -> bool:
        return bool(self.pieces)

    def found_in(self, data: bytes) -> bool:
        """Whether any piece is in ``data``: one scan per chunk spares the lines of chunks without one."""
        return any(piece in data for piece in self.pieces)

    def line(self, raw: bytes, truncated: bool) -> bytes:
        mask = self.mask
        for piece in self.pieces:
            if piece in raw:
                raw = raw.replace(piece, mask)
        if truncated:
            cut = self.cut_secret(raw)
            if cut:
                raw = raw[:-cut] + mask
        return raw

    def cut_secret(self, raw: bytes) -> int:
        """How many bytes at the end of a cut line are the start of a secret (0: none)."""
        best = 0
        for piece in self.pieces:
            first = piece[0]
            start = max(len(raw) - len(piece) + 1, 0)  # a whole piece was masked already
            at = raw.find(first, start)
            while at != -1:
                size = len(raw) - at
                if size > best and piece.startswith(raw[at:]):
                    best = size
                    break  # the earliest match is the longest
                at = raw.find(first, at + 1)
        return best


def secret_mask(secrets: dict[str, object]) -> tuple[SecretMask, Decision | None]:
    """The mask of a run's secret argument values, and the warning if one is too short to mask."""
    values = {name: arg_text(value) for name, value in secrets.items() if value not in (None, "")}
    short = sorted(name for name, text in values.items() if len(text.encode()) < MIN_MASKED_BYTES)
    warning = None
    if short:
        reason = f"secret argument {', '.join(short)} is shorter than {MIN_MASKED_BYTES} bytes: "
        warning = Decision("secret-output", Verdict.WARN, reason + "masked in plans and runs, not in step output")
    return SecretMask(values.values()), warning


@dataclass
class OutputBudget:
    """What a run has stored (``used``) and counted without storing (``dropped``), across its steps."""

    limit: int
    used: int = 0
    dropped: int = 0


class StepOutput:
    """One step's stdout and stderr on their way to ``emit_lines``, under the run's budget.

    Feeding is serialised: a container's log reader and its caller may both feed.
    """

    def __init__(
        self, emit_lines: EmitLines, budget: OutputBudget, max_line_bytes: int, secrets: SecretMask | None = None
    ) -> None:
        self.emit_lines = emit_lines
        self.budget = budget
        self.secrets = secrets or None
        self.splitters = {"stdout": LineSplitter(max_line_bytes), "stderr": LineSplitter(max_line_bytes)}
        self._lock = threading.Lock()

    def feed(self, stream: str, chunk: bytes) -> None:
        with self._lock:
            splitter = self.splitters[stream]
            # Every line this chunk completes lies within the splitter's unfinished line and the chunk.
            secret = self.secrets is not None and self.secrets.found_in(splitter.buf + chunk)
            self._deliver(stream, splitter.feed(chunk), secret)

    def end(self, stream: str) -> None:
        """The stream is over: deliver its unfinished last line."""
        with self._lock:
            splitter = self.splitters[stream]
            secret = self.secrets is not None and self.secrets.found_in(splitter.buf)
            self._deliver(stream, splitter.rest(), secret)

    def finish(self) -> None:
        for stream in self.splitters:
            self.end(stream)

    def note(self, text: str) -> None:
        """A line from flwd itself on stderr (it is not counted against the budget)."""
        self.emit_lines("stderr", [(f"[flwd: {text}]", False)])

    def _deliver(self, stream: str, pieces: list[tuple[bytes, bool]], secret: bool) -> None:
        budget = self.budget
        used, dropped, limit = budget.used, budget.dropped, budget.limit  # locals: this runs per line
        lines: list[tuple[str, bool]] = []
        secrets = self.secrets
        for raw, truncated in pieces:
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if secrets is not None and (secret or truncated):  # a cut line may end with a secret's start
                raw = secrets.line(raw, truncated)
            size = len(raw) + 1
            if dropped or used + size > limit:
                if not dropped:
                    lines.append((LIMIT_NOTICE.format(limit=limit), True))
                dropped += size
                continue
            used += size
            text = raw.decode("utf-8", errors="replace")
            lines.append((text + TRUNCATED_MARK if truncated else text, truncated))
        budget.used, budget.dropped = used, dropped
        if lines:
            self.emit_lines(stream, lines)
