"""Options every command shares, and the backend they choose (local engine or a server)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from flwd_server.config import load_settings

from .backends import LocalBackend, RemoteBackend


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--server``, ``--token`` and ``--config`` on every command (also read from the environment)."""
    fn = click.option(
        "--config",
        "config_path",
        envvar="FLWD_CONFIG",
        type=click.Path(dir_okay=False),
        help="Server config file (local mode).",
    )(fn)
    fn = click.option("--token", envvar="FLWD_TOKEN", help="Bearer token for --server.", show_envvar=True)(fn)
    fn = click.option(
        "--server",
        envvar="FLWD_SERVER",
        help="Use a running server (URL) instead of the local engine.",
        show_envvar=True,
    )(fn)
    return fn


def make_backend(server: str | None, token: str | None, config_path: str | None) -> LocalBackend | RemoteBackend:
    if server:
        return RemoteBackend(server, token)
    return LocalBackend(load_settings(config_path))


def with_backend(fn: Callable[..., Any]) -> Callable[..., Any]:
    @common_options
    @functools.wraps(fn)
    def wrapper(server: str | None, token: str | None, config_path: str | None, **kwargs: Any) -> Any:
        backend = make_backend(server, token, config_path)
        try:
            return fn(backend, **kwargs)
        finally:
            backend.close()

    return wrapper


def parse_arg_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    args = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--arg")
        args[name.replace("-", "_")] = value
    return args
