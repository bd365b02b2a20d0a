"""``flwd :export``: the NDJSON audit export (runs with their events), to stdout or a file."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from flwd_server.errors import FlwdError
from flwd_server.formats.atomic_file import atomic_file

from ..options import with_backend


class IncompleteExport(FlwdError):
    """Raised when an export stream ended without its closing ``end`` record."""


@click.command(":export")
@click.option(
    "-o",
    "--output",
    default="-",
    show_default=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write ('-': stdout).",
)
@click.option("--since", help="Runs created at or after this ISO 8601 time.")
@click.option("--until", help="Runs created before this ISO 8601 time.")
@click.option("--status", help="Only runs with this status (comma-separated for several).")
@click.option("--job", help="Only runs of this job (NAME or SOURCE:NAME).")
@click.option("--source", help="Only runs from this source, and the events without a run that name it.")
@with_backend
def export_command(
    backend: Any,
    output: str,
    since: str | None,
    until: str | None,
    status: str | None,
    job: str | None,
    source: str | None,
) -> None:
    """Write runs and their events, and the events without a run (source syncs...), as NDJSON, the same as GET /export.

    The file is written next to its destination and renamed into place only
    when the export is complete, so a failed export never leaves half a file.
    """
    given = {"since": since, "until": until, "status": status, "job": job, "source": source}
    filters = {k: v for k, v in given.items() if v is not None}
    chunks = backend.export(filters)
    if output == "-":
        tail = _copy(chunks, sys.stdout.buffer)
        sys.stdout.flush()
        end = _end_record(tail)
    else:
        with atomic_file(output) as handle:
            end = _end_record(_copy(chunks, handle))
    where = "stdout" if output == "-" else output
    click.echo(f"flwd: exported {end['runs']} runs and {end['events']} events to {where}", err=True)


def _copy(chunks: Any, handle: Any) -> bytes:
    """Write every chunk; return the last bytes (where the ``end`` record is)."""
    tail = b""
    for chunk in chunks:
        handle.write(chunk)
        tail = (tail + chunk)[-4096:]
    return tail


def _end_record(tail: bytes) -> dict[str, Any]:
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        record = json.loads(last)
    except ValueError:
        record = {}
    if not isinstance(record, dict) or record.get("record") != "end":
        raise IncompleteExport("the export ended before its last record (connection lost?); nothing was written")
    return record
