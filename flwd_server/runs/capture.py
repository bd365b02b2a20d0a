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
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

TRUNCATED_MARK = " [flwd: line truncated]"
LIMIT_NOTICE = "[flwd: output limit of {limit} bytes reached; the rest is not stored]"

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

    def __init__(self, emit_lines: EmitLines, budget: OutputBudget, max_line_bytes: int) -> None:
        self.emit_lines = emit_lines
        self.budget = budget
        self.splitters = {"stdout": LineSplitter(max_line_bytes), "stderr": LineSplitter(max_line_bytes)}
        self._lock = threading.Lock()

    def feed(self, stream: str, chunk: bytes) -> None:
        with self._lock:
            self._deliver(stream, self.splitters[stream].feed(chunk))

    def end(self, stream: str) -> None:
        """The stream is over: deliver its unfinished last line."""
        with self._lock:
            self._deliver(stream, self.splitters[stream].rest())

    def finish(self) -> None:
        for stream in self.splitters:
            self.end(stream)

    def note(self, text: str) -> None:
        """A line from flwd itself on stderr (it is not counted against the budget)."""
        self.emit_lines("stderr", [(f"[flwd: {text}]", False)])

    def _deliver(self, stream: str, pieces: list[tuple[bytes, bool]]) -> None:
        budget = self.budget
        used, dropped, limit = budget.used, budget.dropped, budget.limit  # locals: this runs per line
        lines: list[tuple[str, bool]] = []
        for raw, truncated in pieces:
            if raw.endswith(b"\r"):
                raw = raw[:-1]
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
