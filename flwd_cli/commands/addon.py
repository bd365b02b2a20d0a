"""``flwd :addon publish DIR REGISTRY/REPO:TAG``: make an OCI add-on source from a folder.

The folder's ``jobs/`` tree becomes one layer of an OCI artifact (format:
``flwd_server.containers.addons``); with ``--sign-key`` the pushed digest is also signed in
cosign's key-based format, so servers with ``verify_signatures: enforce`` and the
matching public key accept it.  Credentials for registries that need them come
from ``FLWD_REGISTRY_USERNAME`` / ``FLWD_REGISTRY_PASSWORD``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from flwd_server.config import load_settings
from flwd_server.containers.addons import publish
from flwd_server.containers.images import ImageRef, normalize_registry, parse_image_ref
from flwd_server.containers.registry_client import RegistryClient
from flwd_server.containers.signatures import PrivateKey, attach_signature, load_private_key
from flwd_server.errors import ConfigError, InvalidJob, Unprocessable
from flwd_server.jobs.files import parse_job

F = TypeVar("F", bound=Callable[..., Any])


def registry_options(command: F) -> F:
    """``--insecure`` and ``--config``: how a command that pushes to a registry reaches it."""
    command = click.option(
        "--config",
        "config_path",
        envvar="FLWD_CONFIG",
        type=click.Path(dir_okay=False),
        help="Config file (its container.insecure_registries apply).",
    )(command)
    return click.option(
        "--insecure", is_flag=True, help="Reach the registry over plain HTTP (loopback test registries)."
    )(command)


@click.group(":addon")
def addon_group() -> None:
    """OCI add-on sources: publish a folder of jobs to a registry."""


@addon_group.command("publish")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("ref")
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM private key: also push a cosign-format signature.",
)
@registry_options
def publish_command(folder: str, ref: str, sign_key: str | None, insecure: bool, config_path: str | None) -> None:
    """Publish FOLDER/jobs as an add-on at REF (registry/repo:tag); prints REF@DIGEST.

    \b
    flwd :addon publish ./tools registry.example.org/flwd/tools:1.0 --sign-key cosign.pem
    """
    target = parse_image_ref(ref, field="ref")
    if target.digest:
        raise Unprocessable(
            "ref: publish to a tag (registry/repo:tag); the digest is what publishing gives you",
            [{"field": "ref", "message": "expected a tag, not a digest"}],
        )
    first, slash, _ = ref.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        raise Unprocessable(
            "ref: name the registry (registry.example.org/repo:tag)",
            [{"field": "ref", "message": "expected registry/repo:tag"}],
        )
    _check_jobs(Path(folder))
    key = signing_key(sign_key) if sign_key else None
    registry = registry_client(target, insecure, config_path)
    try:
        digest = publish(registry, target, folder)
        click.echo(f"{target.registry}/{target.repository}@{digest}")
        if key is not None:
            tag = attach_signature(registry, target, digest, key)
            click.echo(f"signed: {target.registry}/{target.repository}:{tag}", err=True)
    finally:
        registry.close()


def signing_key(path: str) -> PrivateKey:
    """The PEM private key at ``path`` (its password in ``FLWD_SIGN_KEY_PASSWORD``)."""
    password = os.environ.get("FLWD_SIGN_KEY_PASSWORD")
    return load_private_key(Path(path).read_bytes(), password.encode() if password else None, Path(path).name)


def registry_client(target: ImageRef, insecure: bool, config_path: str | None) -> RegistryClient:
    """A client for ``target``'s registry: plain HTTP with ``--insecure`` or the config's insecure_registries."""
    settings = load_settings(config_path) if config_path else None
    insecure_list = list(settings.container.insecure_registries) if settings else []
    if insecure:
        insecure_list.append(target.registry)
    return RegistryClient(insecure_list, credentials=registry_credentials)


def _check_jobs(folder: Path) -> None:
    """Refuse to publish job files that a server would refuse to load."""
    jobs = folder / "jobs"
    if not jobs.is_dir():
        raise ConfigError("", f"{folder} has no jobs/ folder")
    problems = []
    for path in sorted(jobs.rglob("*")):
        if path.suffix in (".yaml", ".yml") and path.is_file() and not path.name.startswith("."):
            rel = path.relative_to(folder).as_posix()
            try:
                parse_job(path.read_bytes(), "addon", rel)
            except InvalidJob as exc:  # every field, and the line of a YAML syntax error (path:line, as :sources show)
                problems.extend(
                    f"{rel}{':' + str(e['line']) if e.get('line') else ''}: {e['field']}: {e['message']}"
                    for e in exc.errors
                )
            except OSError as exc:
                problems.append(f"{rel}: cannot read it ({exc.strerror})")
    if problems:
        raise Unprocessable("invalid job files; nothing was published: " + "; ".join(problems))


def registry_credentials(registry: str) -> tuple[str, str] | None:
    user = os.environ.get("FLWD_REGISTRY_USERNAME")
    password = os.environ.get("FLWD_REGISTRY_PASSWORD")
    host = os.environ.get("FLWD_REGISTRY_HOST")
    if user and password and (not host or normalize_registry(host) == registry):
        return user, password
    return None
