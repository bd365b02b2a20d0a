"""Built-in commands that live in their own modules; ``register`` adds them to the group."""

from __future__ import annotations

import click

from .export import export_command


def register(cli: click.Group) -> None:
    """Add every command module's commands (one import line per module)."""
    cli.add_command(export_command)
