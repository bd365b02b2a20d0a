"""Built-in commands that live in their own modules; ``register`` adds them to the group."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add every command module's commands (one import line per module)."""
    from .addon import addon_group
    from .approvals import approve_command, deny_command
    from .artifacts import artifacts_command
    from .export import export_command
    from .keys import keys_group
    from .sign import sign_command
    from .sources import sources_group
    from .token import token_command

    cli.add_command(token_command)
    cli.add_command(keys_group)
    cli.add_command(sources_group)
    cli.add_command(addon_group)
    cli.add_command(export_command)
    cli.add_command(sign_command)
    cli.add_command(artifacts_command)
    cli.add_command(approve_command)
    cli.add_command(deny_command)
