"""The CLI's options come from one place each: profiles and statuses from their enums."""

from __future__ import annotations

import dataclasses

import click

from flwd_cli.main import PROFILE_CHOICE, STATUS_CHOICE, cli, job_command
from flwd_server.config import Settings
from flwd_server.models import Profile, RunStatus


def option(command: click.Command, flag: str) -> click.Option:
    return next(p for p in command.params if isinstance(p, click.Option) and flag in p.opts)


def test_profile_and_status_choices_are_the_enums_values():
    assert list(PROFILE_CHOICE.choices) == [p.value for p in Profile]
    assert list(STATUS_CHOICE.choices) == [s.value for s in RunStatus]
    for command in (cli.commands[":plan"], job_command("hello-world")):
        assert option(command, "--profile").type is PROFILE_CHOICE
    assert option(cli.commands[":runs"], "--status").type is STATUS_CHOICE
    assert list(option(cli.commands[":serve"], "--profile").type.choices) == [p.value for p in Profile]
    profile = next(f for f in dataclasses.fields(Settings) if f.name == "default_profile")
    assert list(profile.metadata["choices"]) == [p.value for p in Profile]
