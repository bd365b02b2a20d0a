"""``flwd :sources list|show|add|remove|sync``: the twins of /sources, local or remote."""

from __future__ import annotations

import os
from typing import Any

import click

from .. import output
from ..options import with_backend


def _location(source: dict[str, Any]) -> str:
    if source.get("url"):
        return f"{source['url']}@{source.get('ref') or 'HEAD'}"
    return source.get("path") or source.get("ref") or ""


def _revision(source: dict[str, Any]) -> str:
    revision = source.get("revision") or "-"
    return revision[:12] if len(revision) == 40 else revision


def _print_source(source: dict[str, Any]) -> None:
    click.echo(f"source    {source['name']} ({source['type']}, {source['origin']})")
    click.echo(f"from      {_location(source)}")
    click.echo(f"revision  {source.get('revision') or '-'}")
    if source.get("last_error"):
        click.echo(f"error     {source['last_error']}")
    for job in source["jobs"]:
        click.echo(f"job       {job['name']}  {output.describe_args(job['args'])}  {job['description']}".rstrip())
    for error in source["errors"]:
        line = f":{error['line']}" if error.get("line") else ""
        click.echo(f"problem   {error['path']}{line}: {error['field']}: {error['message']}")


@click.group(":sources")
def sources_group() -> None:
    """List, add, remove and sync job sources (local folders, git repositories, OCI add-ons)."""


@sources_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def list_command(backend: Any, as_json: bool) -> None:
    """List sources with their revision, jobs and job-file problems."""
    sources = backend.sources()
    if as_json:
        output.print_json({"sources": sources})
        return
    rows = [
        [s["name"], s["type"], s["origin"], _location(s), _revision(s), len(s["jobs"]), len(s["errors"])]
        for s in sources
    ]
    output.table(rows, ["source", "type", "origin", "from", "revision", "jobs", "problems"])


@sources_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def show_command(backend: Any, name: str, as_json: bool) -> None:
    """Show one source: its jobs and each job file's problem (path and line)."""
    source = backend.source(name)
    output.print_json({"source": source}) if as_json else _print_source(source)


@sources_group.command("add")
@click.argument("name")
@click.option("--path", help="A local folder holding jobs/ (local source).")
@click.option("--url", help="A git URL: https://, ssh://, git://, file:/// (git source); oci://REF is --oci REF.")
@click.option("--ref", help="Branch, tag or commit of a git source (default: the remote's HEAD).")
@click.option("--oci", "oci_ref", metavar="REF", help="An OCI add-on: registry/repo:tag or registry/repo@sha256:….")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def add_command(
    backend: Any, name: str, path: str | None, url: str | None, ref: str | None, oci_ref: str | None, as_json: bool
) -> None:
    """Register a source NAME from --path (local), --url [--ref] (git) or --oci REF (OCI add-on).

    \b
    flwd :sources add tools --url https://git.example.org/ops/tools.git --ref main
    flwd :sources add boxed --oci registry.example.org/flwd/tools:1.0
    """
    if url and url.lower().startswith("oci://"):
        if oci_ref:
            raise click.UsageError("give the add-on once: --oci REF (or --url oci://REF)")
        url, oci_ref = None, url[len("oci://") :]
    if sum(bool(x) for x in (path, url, oci_ref)) != 1:
        raise click.UsageError(
            "give exactly one of --path (a local folder), --url (a git repository) or --oci (an OCI add-on)"
        )
    if ref and not url:
        hint = "; an add-on's tag or digest is part of --oci REF" if oci_ref else ""
        raise click.UsageError(f"--ref applies to git sources (--url){hint}")
    if path:
        if not backend.remote:
            path = os.path.abspath(os.path.expanduser(path))
        spec: dict[str, Any] = {"type": "local", "name": name, "path": path}
    elif oci_ref:
        spec = {"type": "oci", "name": name, "ref": oci_ref}
    else:
        spec = {"type": "git", "name": name, "url": url}
        if ref:
            spec["ref"] = ref
    source = backend.add_source(spec)
    if as_json:
        output.print_json({"source": source})
        return
    click.echo(
        f"added {source['name']} at {source.get('revision') or '-'}: {len(source['jobs'])} jobs, {len(source['errors'])} problems"
    )
    for error in source["errors"]:
        line = f":{error['line']}" if error.get("line") else ""
        click.echo(f"  {error['path']}{line}: {error['field']}: {error['message']}", err=True)


@sources_group.command("remove")
@click.argument("name")
@with_backend
def remove_command(backend: Any, name: str) -> None:
    """Remove a source added with :sources add (or over HTTP)."""
    backend.remove_source(name)
    click.echo(f"removed {name}")


@sources_group.command("sync")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def sync_command(backend: Any, name: str, as_json: bool) -> None:
    """Fetch a git source or an add-on's tag (or rescan a local folder) now."""
    result = backend.sync_source(name)
    if as_json:
        output.print_json(result)
        return
    source = result["source"]
    if result["changed"]:
        click.echo(f"{name}: {result['previous_revision'] or '-'} -> {source['revision']}")
    else:
        click.echo(f"{name}: unchanged at {source['revision'] or '-'}")
    click.echo(f"{len(source['jobs'])} jobs, {len(source['errors'])} problems")
