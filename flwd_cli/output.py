"""Rendering for people (tables, live output) and for programs (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 130, "timed_out": 124, "rejected": 77, "lost": 75}


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(rows: list[list[str]], headers: list[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def describe_args(args: dict[str, Any]) -> str:
    parts = []
    for name, spec in args.items():
        flag = f"--{name.replace('_', '-')}"
        parts.append(flag if spec.get("required") else f"[{flag}]")
    return " ".join(parts)


def print_plan(plan: dict[str, Any]) -> None:
    click.echo(f"job       {plan['source']}:{plan['job']}  (revision {plan.get('revision') or '-'})")
    click.echo(f"profile   {plan['profile']}")
    click.echo(f"args      {json.dumps(plan['args'], ensure_ascii=False)}")
    for step in plan["steps"]:
        what = step.get("run") or " ".join([step.get("image", "")] + step.get("command", []))
        click.echo(f"step      {step['name']}: {what}")
    for decision in plan["decisions"]:
        mark = {"allow": "ok  ", "warn": "WARN", "deny": "DENY"}[decision["outcome"]]
        click.echo(f"policy    {mark} {decision['check']}: {decision['reason']}")
    click.echo(f"runnable  {'yes' if plan['runnable'] else 'no'}")
    click.echo(f"digest    {plan['digest']}")


def render_event(event: dict[str, Any], quiet: bool = False) -> None:
    """Live run output: job lines to stdout/stderr as the job wrote them, flwd's notes to stderr."""
    kind, data = event["type"], event["data"]
    if kind == "step.output":
        stream = sys.stderr if data.get("stream") == "stderr" else sys.stdout
        stream.write(data["line"] + "\n")
        stream.flush()
        return
    if quiet:
        return
    note = None
    if kind == "policy.decision" and data["outcome"] != "allow":
        note = f"policy {data['outcome']}: {data['check']}: {data['reason']}"
    elif kind == "policy.profile_downgrade":
        note = f"profile downgrade {'granted' if data.get('granted') else 'refused'}: {data.get('reason')}"
    elif kind == "step.finished" and data.get("status") != "succeeded":
        note = f"step {data['step']} {data['status']} (exit code {data.get('exit_code')})"
    elif kind == "run.finished":
        note = f"run {event['run_id']} {data['status']} in {data.get('duration', 0):.2f}s"
        if data.get("reason"):
            note += f": {data['reason']}"
        for key, value in (data.get("outputs") or {}).items():  # after the run's line, one line each
            shown = value if isinstance(value, str) and "\n" not in value else json.dumps(value, ensure_ascii=False)
            note += f"\nflwd: output {key}={shown}"
    if note:
        click.echo(click.style(f"flwd: {note}", dim=True), err=True)


def exit_code_for(run_end: dict[str, Any]) -> int:
    status = run_end.get("status", "failed")
    if status == "failed" and isinstance(run_end.get("exit_code"), int) and run_end["exit_code"] > 0:
        return min(run_end["exit_code"], 255)
    return EXIT_CODES.get(status, 1)
