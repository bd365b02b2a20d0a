"""``flwd :serve``'s flags, made from the settings that declare one (as gunicorn makes its CLI from its settings).

A flag's name, type, choices, bounds and help are written once, in flwd_server/config.py.
A flag left out is None (``--dev`` too: ``default=None``), so it does not override the file
or ``FLWD_*``.
"""

from __future__ import annotations

from typing import Any

import click

from flwd_server.config import Declaration, declarations


def _param_name(key: str) -> str:
    return key.replace(".", "__")


def _option(declared: Declaration) -> click.Option:
    """The setting's type, choices and bounds as click's, so the flag refuses what start-up would (exit code 2)."""
    decls = [declared.flag or "", _param_name(declared.key)]
    if declared.hint is bool:
        return click.Option(decls, is_flag=True, default=None, help=declared.help)
    kind: click.ParamType | None = None
    if declared.choices:
        kind = click.Choice([str(choice) for choice in declared.choices])
    elif declared.path:
        kind = click.Path(file_okay=declared.path == "file", dir_okay=declared.path == "directory")
    elif declared.hint is int:
        kind = (
            click.IntRange(declared.minimum, declared.maximum)
            if declared.minimum is not None or declared.maximum is not None
            else click.INT
        )
    elif declared.hint is float:
        kind = (
            click.FloatRange(declared.minimum, declared.maximum)
            if declared.minimum is not None or declared.maximum is not None
            else click.FLOAT
        )
    elif declared.hint is not str:
        raise TypeError(f"{declared.key}: no flag for a {declared.hint} setting")
    # The flag's own default is None (a flag left out overrides nothing); the help shows the setting's.
    shown = (
        f"{declared.help}  [default: {declared.default}]"
        if declared.default is not None and declared.hint is not bool
        else declared.help
    )
    return click.Option(decls, type=kind, help=shown)


def setting_options() -> list[click.Option]:
    """One option per setting declared with a ``flag``, in declaration order."""
    return [_option(declared) for declared in declarations() if declared.flag]


def flag_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The flags given, as ``load_settings`` overrides (dotted keys); flags left out are None and dropped."""
    flagged = {_param_name(declared.key): declared.key for declared in declarations() if declared.flag}
    return {flagged[name]: value for name, value in values.items() if value is not None}
