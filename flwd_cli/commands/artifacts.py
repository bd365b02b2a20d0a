"""``flwd :artifacts RUN [PATH] [-o FILE]``: a run's artifacts listed, or one downloaded."""

from __future__ import annotations

import sys
from typing import Any

import click

from flwd_server.formats.atomic_file import atomic_file

from .. import output
from ..options import with_backend


@click.command(":artifacts")
@click.argument("run_id")
@click.argument("path", required=False)
@click.option(
    "-o",
    "--output",
    "target",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Where to write the downloaded file ('-': stdout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@with_backend
def artifacts_command(backend: Any, run_id: str, path: str | None, target: str, as_json: bool) -> None:
    """List RUN_ID's artifacts, or write the one at PATH to stdout or -o FILE.

    A file is written next to FILE and renamed into place only when complete, so a
    failed download never leaves half a file.
    """
    if path is None:
        listed = backend.artifacts(run_id)
        if as_json:
            output.print_json({"artifacts": listed})
        else:
            output.table([[a["path"], str(a["size"]), a["sha256"]] for a in listed], ["path", "size", "sha256"])
        return
    chunks = backend.artifact(run_id, path)  # raises (404, 503) before anything is written
    if target == "-":
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    with atomic_file(target) as handle:
        for chunk in chunks:
            handle.write(chunk)
