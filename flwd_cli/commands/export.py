"""``flwd :export``: the NDJSON audit export (runs with their events), to stdout or a file."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from flwd_server.errors import FlwdError
from flwd_server.formats.atomic_file import atomic_file

from ..options import common_options, connection, make_backend


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
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(dir_okay=False),
    help="Sign the export with this private key (PEM or JWK, as `flwd :keys` makes): a last 'signature' line.",
)
@click.option(
    "--verify",
    "verify_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Check an export offline instead: its hash chains, and its signature (with --jwks).",
)
@click.option("--jwks", type=click.Path(dir_okay=False, exists=True), help="With --verify: the public keys (JWKS).")
@common_options
def export_command(
    server: str | None,
    token: str | None,
    config_path: str | None,
    output: str,
    since: str | None,
    until: str | None,
    status: str | None,
    job: str | None,
    source: str | None,
    sign_key: str | None,
    verify_file: str | None,
    jwks: str | None,
) -> None:
    """Write runs and their events, and the events without a run (source syncs...), as NDJSON, the same as GET /export.

    The file is written next to its destination and renamed into place only
    when the export is complete, so a failed export never leaves half a file.
    With --verify FILE nothing is exported: FILE is checked, and the first line
    that was edited, deleted, inserted or moved is named (exit status 1).
    """
    given = {"since": since, "until": until, "status": status, "job": job, "source": source}
    filters = {k: v for k, v in given.items() if v is not None}
    if verify_file is not None:
        if filters or sign_key:
            raise click.UsageError("--verify checks a file: it takes no filter and no --sign")
        sys.exit(_verify(verify_file, jwks))
    if jwks is not None:
        raise click.UsageError("--jwks goes with --verify")
    signer = _signer(sign_key) if sign_key else None
    chosen = connection(click.get_current_context(), {"server": server, "token": token, "config_path": config_path})
    backend = make_backend(**chosen)
    try:
        _export(backend, filters, output, signer)
    finally:
        backend.close()


def _export(backend: Any, filters: dict[str, str], output: str, signer: Any) -> None:
    chunks = backend.export(filters)
    if signer is not None:
        chunks = _signed(chunks, signer)
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


def _signer(path: str) -> Any:
    """A function that signs a digest with the key at ``path`` (read now: a bad key fails before exporting)."""
    import jwt

    from flwd_server.auth.keys import algorithm_of, load_private_key, public_jwk

    key, kid = load_private_key(path)
    headers = {"kid": kid or public_jwk(key)["kid"], "typ": "flwd-export"}

    def sign(digest: str) -> str:
        return jwt.encode(
            {"sha256": digest, "iat": int(time.time())}, key, algorithm=algorithm_of(key), headers=headers
        )

    return sign


def _signed(chunks: Any, sign: Any) -> Any:
    """The chunks, then a ``signature`` line: a JWS over the sha256 of every byte before it."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    value = digest.hexdigest()
    record = {"record": "signature", "sha256": value, "jws": sign(value)}
    yield (json.dumps(record, separators=(",", ":")) + "\n").encode()


def _verify(path: str, jwks: str | None) -> int:
    """Check the export at ``path``; print the verdict; the exit status (0: intact and, with --jwks, signed)."""
    from flwd_server.store.chain_verify import Tampered, verify_export

    data = Path(path).read_bytes()
    lines = data.splitlines(keepends=True)
    try:
        result = verify_export(lines)
    except Tampered as exc:
        click.echo(f"flwd: {path}: line {exc.line}: {exc.reason}", err=True)
        return 1
    click.echo(f"flwd: {path}: the chains hold ({result['runs']} runs, {result['events']} events)", err=True)
    signature = _signature_of(lines, result["lines"])
    if jwks is None:
        if signature is not None:
            click.echo("flwd: the export is signed; give --jwks to check the signature", err=True)
        return 0
    if signature is None:
        click.echo(f"flwd: {path}: not signed", err=True)
        return 1
    problem = _check_signature(b"".join(lines[: result["lines"]]), signature, jwks)
    if problem:
        click.echo(f"flwd: {path}: line {result['lines'] + 1}: the signature does not hold: {problem}", err=True)
        return 1
    click.echo(f"flwd: {path}: the signature holds", err=True)
    return 0


def _signature_of(lines: list[bytes], end: int) -> dict[str, Any] | None:
    if len(lines) <= end:
        return None
    record = json.loads(lines[end])
    return record if record.get("record") == "signature" else None


def _check_signature(signed: bytes, record: dict[str, Any], jwks: str) -> str | None:
    """Why the signature over ``signed`` does not hold with the keys in ``jwks``; None when it does."""
    import jwt

    from flwd_server.auth.keys import read_jwks

    token = str(record.get("jws", ""))
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return "not a JWS"
    keys = [k for k in read_jwks(jwks)["keys"] if k.get("kid") == header.get("kid")]
    if not keys:
        return f"no key {header.get('kid')!r} in {jwks}"
    try:
        jwk = jwt.PyJWK(keys[0])
        claims = jwt.decode(token, jwk.key, algorithms=[header.get("alg", "")], options={"verify_aud": False})
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    digest = hashlib.sha256(signed).hexdigest()
    if claims.get("sha256") != digest or record.get("sha256") != digest:
        return "it signs other content"
    return None


def _end_record(tail: bytes) -> dict[str, Any]:
    last_two = tail.rstrip(b"\n").rsplit(b"\n", 2)[-2:]
    try:
        record = json.loads(last_two[-1])
        if isinstance(record, dict) and record.get("record") == "signature" and len(last_two) == 2:
            record = json.loads(last_two[0])  # a signed export: the end record is the line before
    except ValueError:
        record = {}
    if not isinstance(record, dict) or record.get("record") != "end":
        raise IncompleteExport("the export ended before its last record (connection lost?); nothing was written")
    return record
