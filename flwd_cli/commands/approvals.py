"""``flwd :approve RUN [--digest D]`` and ``flwd :deny RUN --reason TEXT``: runs awaiting approval.

Without ``--digest``, ``:approve`` shows the run (job, args, plan digest) and approves that digest.
A local approval that releases a run runs it in this process, as ``flwd JOB`` would, and follows it.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .. import output
from ..options import with_backend


@click.command(":approve")
@click.argument("run_id")
@click.option("--digest", metavar="sha256:HEX", help="The plan digest approved (default: the run's, shown first).")
@with_backend
def approve_command(backend: Any, run_id: str, digest: str | None) -> None:
    """Approve a run awaiting approval: exactly its plan, named by its digest."""
    if digest is None:
        run = backend.run(run_id)
        click.echo(f"run      {run['id']} ({run['status']}, submitted by {run['submitted_by']})", err=True)
        click.echo(f"job      {run['source']}:{run['job']}  (revision {run.get('revision') or '-'})", err=True)
        click.echo(f"args     {json.dumps(run['args'], ensure_ascii=False)}", err=True)
        click.echo(f"digest   {run['plan_digest']}", err=True)
        digest = run["plan_digest"] or ""
    run = backend.approve(run_id, digest)
    if run["status"] == "queued" and not backend.remote:  # released to this process: run it here
        for event in backend.events(run_id):
            output.render_event(event)
            if event["type"] == "run.finished":
                click.get_current_context().exit(output.exit_code_for(event["data"]))
    click.echo(f"{run['id']}: {run['status']}" + (f" ({run['reason']})" if run.get("reason") else ""))
    if run["status"] == "rejected":
        click.get_current_context().exit(output.EXIT_CODES["rejected"])


@click.command(":deny")
@click.argument("run_id")
@click.option("--reason", required=True, help="Why: the run ends rejected with this reason.")
@with_backend
def deny_command(backend: Any, run_id: str, reason: str) -> None:
    """Deny a run awaiting approval: it ends rejected, never runs."""
    run = backend.deny(run_id, reason)
    click.echo(f"{run['id']}: {run['status']} ({run['reason']})")
