"""Figures, goals, the printed table and the facts about the machine they were taken on."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    op: str  # ">=" or "<="
    target: float

    def met_by(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target

    def __str__(self) -> str:
        return f"{self.op} {self.target:,}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, its value and unit, and the goal it is held to (if any)."""

    figure: int
    name: str
    value: float | None
    unit: str = ""
    goal: Goal | None = None
    note: str = ""
    error: str = ""
    spread: tuple[float, float] | None = None  # min and max over the repetitions
    n: int = 1  # repetitions the value is the median of

    @property
    def result(self) -> str:
        if self.error:
            return "ERROR"
        if self.value is None:
            return "FAIL" if self.goal else ""
        if self.goal is None:
            return ""
        return "pass" if self.goal.met_by(self.value) else "FAIL"

    def to_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "goal": None if self.goal is None else {"op": self.goal.op, "target": self.goal.target},
            "result": self.result or None,
            "note": self.note,
            "error": self.error or None,
            "n": self.n,
            "spread": None if self.spread is None else {"min": self.spread[0], "max": self.spread[1]},
        }


def combine(repetitions: list[list[Row]]) -> list[Row]:
    """One row per line of a figure: the median over the repetitions, with min-max and the count.

    Rows are matched by position (a figure prints the same lines every time); a repetition
    that could not give a value leaves it out of that row's median.  An even count takes the
    mean of the two middle values."""
    if not repetitions:
        return []
    if len(repetitions) == 1:
        return repetitions[0]
    out = []
    for i, first in enumerate(repetitions[0]):
        same = [
            rep[i] for rep in repetitions if i < len(rep) and rep[i].name.split(" (")[0] == first.name.split(" (")[0]
        ]
        values = [r.value for r in same if r.value is not None]
        errors = [r.error for r in same if r.error]
        notes = sorted({r.note for r in same if r.note})
        out.append(
            Row(
                first.figure,
                first.name,
                statistics.median(values) if values else None,
                first.unit,
                first.goal,
                note="; ".join(notes),
                error=errors[0] if errors and not values else "",
                spread=(min(values), max(values)) if values else None,
                n=len(values),
            )
        )
    return out


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least ``pct`` % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def _number(value: float) -> str:
    if value == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """The table: each value is the median of its repetitions, "spread" their min-max and count."""
    header = ("#", "figure", "value", "goal", "result", "spread (n)")
    cells = [header]
    for row in rows:
        value = "n/a" if row.value is None else f"{_number(row.value)} {row.unit}".strip()
        spread = (
            "" if row.spread is None or row.n < 2 else f"{_number(row.spread[0])}-{_number(row.spread[1])} ({row.n})"
        )
        cells.append(
            (
                str(row.figure),
                row.name,
                value,
                "" if row.goal is None else f"{row.goal} {row.unit}".strip(),
                row.result,
                spread,
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for i, c in enumerate(cells):
        lines.append(
            "  ".join(
                text.rjust(w) if j == 2 else text.ljust(w) for j, (text, w) in enumerate(zip(c, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _version(args: list[str]) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def machine(repo: Path) -> dict[str, Any]:
    """The machine and the code the figures belong to."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = None
    try:
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    commit = _version(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "commit": commit,
        "webhook": _version(["webhook", "-version"]),
        "wrk": _version(["wrk", "--version"]),
    }
