"""Options every command shares, and the backend they choose (local engine or a server).

``--server``, ``--token`` and ``--config`` are accepted before the command
(``flwd --server URL :jobs``) and after it (``flwd :jobs --server URL``); given
after, they win; otherwise a value given before it does, then ``FLWD_SERVER``,
``FLWD_TOKEN``, ``FLWD_CONFIG``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from flwd_server.config import load_settings

from .backends import LocalBackend, RemoteBackend

CONNECTION = ("server", "token", "config_path")


def connection_params() -> list[click.Option]:
    """``--server``, ``--token`` and ``--config`` (also read from the environment), new objects each call."""
    return [
        click.Option(
            ["--server"],
            envvar="FLWD_SERVER",
            help="Use a running server (URL) instead of the local engine.",
            show_envvar=True,
        ),
        click.Option(["--token"], envvar="FLWD_TOKEN", help="Bearer token for --server.", show_envvar=True),
        click.Option(
            ["--config", "config_path"],
            envvar="FLWD_CONFIG",
            type=click.Path(dir_okay=False),
            help="Server config file (local mode).",
            show_envvar=True,
        ),
    ]


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--server``, ``--token`` and ``--config`` on a command."""
    for param in reversed(connection_params()):
        fn = click.option(*param.opts, param.name, **_option_kwargs(param))(fn)
    return fn


def _option_kwargs(param: click.Option) -> dict[str, Any]:
    return {"envvar": param.envvar, "help": param.help, "show_envvar": True, "type": param.type}


def connection(ctx: click.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The connection options of ``ctx``'s command, each from after the command, else from before it."""
    root = ctx.find_root()
    chosen = {}
    for name in CONNECTION:
        value = values.get(name)
        if (
            ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE
            and root is not ctx
            and root.get_parameter_source(name) is ParameterSource.COMMANDLINE
        ):
            value = root.params[name]
        chosen[name] = value
    return chosen


def make_backend(server: str | None, token: str | None, config_path: str | None) -> LocalBackend | RemoteBackend:
    if server:
        return RemoteBackend(server, token)
    return LocalBackend(load_settings(config_path), config_path)


def with_backend(fn: Callable[..., Any]) -> Callable[..., Any]:
    @common_options
    @functools.wraps(fn)
    def wrapper(server: str | None, token: str | None, config_path: str | None, **kwargs: Any) -> Any:
        chosen = connection(click.get_current_context(), {"server": server, "token": token, "config_path": config_path})
        backend = make_backend(**chosen)
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
