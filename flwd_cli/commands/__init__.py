"""Built-in commands that live in their own modules; ``register`` adds them to the group."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add every command module's commands (one import line per module)."""
    from .addon import addon_group

    cli.add_command(addon_group)
