"""The CLI's options come from one place each: profiles and statuses from their enums,
``flwd :serve``'s flags from the settings' declarations."""

from __future__ import annotations

import dataclasses
import os

import click
import pytest

from flwd_cli.main import PROFILE_CHOICE, STATUS_CHOICE, cli, job_command, main
from flwd_server.config import Settings, declarations
from flwd_server.models import Profile, RunStatus
from flwd_server.web import serving


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


SERVE_FLAGS = {
    "--bind",
    "--profile",
    "--dev",
    "--config",
    "--workers",
    "--threads",
    "--data-dir",
    "--db-path",
    "--db-url",
}


def test_serve_has_todays_flags_each_made_from_its_settings_declaration():
    serve = cli.commands[":serve"]
    assert sorted(opt for p in serve.params for opt in p.opts) == sorted(SERVE_FLAGS)
    flagged = {d.flag: d for d in declarations() if d.flag}
    assert set(flagged) == SERVE_FLAGS - {"--config"}  # --config names the file, it is not a setting
    assert flagged["--profile"].key == "default_profile"
    for flag, declared in flagged.items():
        default = (
            f"  [default: {declared.default}]" if declared.default is not None and declared.hint is not bool else ""
        )
        assert option(serve, flag).help == declared.help + default, f"{flag}: one help text, the setting's"
    for flag, low, high in (("--workers", 1, 64), ("--threads", 2, 10000)):
        kind = option(serve, flag).type
        assert isinstance(kind, click.IntRange) and (kind.min, kind.max) == (low, high) == (
            flagged[flag].minimum,
            flagged[flag].maximum,
        )
    dev = option(serve, "--dev")
    assert dev.is_flag and dev.default is None and not dev.secondary_opts
    assert isinstance(option(serve, "--data-dir").type, click.Path) and not option(serve, "--data-dir").type.file_okay
    assert isinstance(option(serve, "--db-path").type, click.Path) and not option(serve, "--db-path").type.dir_okay
    assert option(serve, "--config").envvar == "FLWD_CONFIG"


@pytest.fixture
def served(monkeypatch):
    """What ``flwd :serve`` would serve: the settings, instead of starting gunicorn."""
    for name in [n for n in os.environ if n.startswith("FLWD_")]:
        monkeypatch.delenv(name)
    settings: list[Settings] = []
    monkeypatch.setattr(serving, "serve", settings.append)
    return settings


def flwd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    return exited.value.code, capsys.readouterr().err


def test_serve_flags_override_the_file_and_flags_left_out_do_not(served, capsys, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("workers: 3\nthreads: 8\ndev: true\ndefault_profile: permissive\nbind: 127.0.0.1:9001\n")
    assert flwd(capsys, ":serve", "--config", str(config)) == (0, "")
    assert (served[0].workers, served[0].threads, served[0].dev, served[0].default_profile, served[0].bind) == (
        3,
        8,
        True,
        "permissive",
        "127.0.0.1:9001",
    )
    db = tmp_path / "flwd.db"
    argv = [
        "--workers",
        "5",
        "--profile",
        "disabled",
        "--bind",
        "127.0.0.1:9002",
        "--db-path",
        str(db),
        "--data-dir",
        str(tmp_path),
    ]
    assert flwd(capsys, ":serve", "--config", str(config), *argv)[0] == 0
    got = served[1]
    assert (got.workers, got.threads, got.dev, got.default_profile, got.bind) == (
        5,
        8,
        True,
        "disabled",
        "127.0.0.1:9002",
    )
    assert (got.db_path, got.data_dir) == (str(db), str(tmp_path))
    assert flwd(capsys, ":serve", "--dev", "--db-url", "postgresql://flwd@db.example/flwd")[0] == 0
    assert served[2].dev and served[2].db_url == "postgresql://flwd@db.example/flwd" and served[2].workers == 2


@pytest.mark.parametrize(
    "argv",
    [["--workers", "65"], ["--workers", "0"], ["--threads", "10001"], ["--threads", "1"], ["--profile", "relaxed"]],
)
def test_a_serve_flag_out_of_its_bounds_or_choices_is_a_usage_error(served, capsys, argv):
    code, err = flwd(capsys, ":serve", *argv)
    assert code == 2 and f"Invalid value for '{argv[0]}'" in err
    assert served == []


def test_a_file_out_of_bounds_stops_serve_naming_the_key(served, capsys, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("workers: 500\n")
    code, err = flwd(capsys, ":serve", "--config", str(config))
    assert code != 0 and "workers: must be at most 64, got 500" in err and served == []
