"""The ``flwd`` command: built-ins start with ``:``; anything else is a job to run.

``flwd :serve`` starts the server; ``flwd hello-world --name Alice`` runs a
job and streams its output.  With ``--server URL`` (or ``FLWD_SERVER``) every
command talks to a running server instead of the local engine.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import click

from flwd_server import __version__
from flwd_server.config import load_settings
from flwd_server.errors import FlwdError
from flwd_server.models import UNFINISHED_STATUSES, Profile, RunStatus
from flwd_server.store.queue import CLAIMABLE

from . import output
from .backends import RemoteError
from .commands import register as register_commands
from .options import connection, connection_params, make_backend, parse_arg_pairs, with_backend
from .serve_flags import flag_overrides, setting_options

# The values, not the enums: click would show and accept the members' names.
PROFILE_CHOICE = click.Choice([p.value for p in Profile])
STATUS_CHOICE = click.Choice([s.value for s in RunStatus])


class FlwdGroup(click.Group):
    """Built-in commands first; any other name is a job (flask's ``get_command`` idea)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name.startswith(":"):
            return command
        return job_command(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else None
        if name and name.startswith(":") and super().get_command(ctx, name) is None:
            known = ", ".join(sorted(self.commands))
            ctx.fail(f"no built-in command {name!r} (built-ins: {known}); job names do not start with ':'")
        return super().resolve_command(ctx, args)


@click.group(cls=FlwdGroup, params=connection_params(), context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flwd")
def cli(**given: Any) -> None:
    """Run named, parameterised jobs here or on a flwd server.

    \b
    flwd :jobs                      list jobs
    flwd hello-world --name Alice   run a job, streaming its output
    flwd :serve --dev               serve the same over HTTP + SSE

    --server, --token and --config go before the command or after it.
    """


_CONFIG_OPTION = click.Option(
    ["--config", "config_path"],
    envvar="FLWD_CONFIG",
    type=click.Path(exists=True, dir_okay=False),
    help="Server config file (YAML).",
)


@cli.command(":serve", params=[_CONFIG_OPTION, *setting_options()])
def serve_command(config_path: str | None, **flags: Any) -> None:
    """Serve the HTTP + SSE API with gunicorn (gthread workers).

    A flag overrides the config file and FLWD_* for its setting (see etc/server.yaml).
    """
    from flwd_server.web.serving import serve

    config_path = connection(click.get_current_context(), {"config_path": config_path})["config_path"]
    serve(load_settings(config_path, flag_overrides(flags)))


@cli.command(":jobs")
@click.option("--source", help="Only this source's jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def jobs_command(backend: Any, source: str | None, as_json: bool) -> None:
    """List the jobs of every source."""
    jobs = backend.jobs(source)
    if as_json:
        output.print_json({"jobs": jobs})
        return
    output.table(
        [[j["name"], j["source"], output.describe_args(j["args"]), j["description"]] for j in jobs],
        ["job", "source", "args", "description"],
    )


@cli.command(":plan")
@click.argument("job")
@click.option("--arg", "pairs", multiple=True, metavar="NAME=VALUE", help="A job argument (repeatable).")
@click.option("--source", help="Take the job from this source.")
@click.option("--profile", type=PROFILE_CHOICE, help="Ask for this profile.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def plan_command(
    backend: Any, job: str, pairs: tuple[str, ...], source: str | None, profile: str | None, as_json: bool
) -> None:
    """Show what running JOB would do, and every policy decision, without running it."""
    body = _body(job, parse_arg_pairs(pairs), source, profile)
    plan = backend.plan(body)
    output.print_json({"plan": plan}) if as_json else output.print_plan(plan)


@cli.command(":runs")
@click.option("--status", type=STATUS_CHOICE)
@click.option("--job", help="Only runs of this job.")
@click.option("--source", help="Only runs from this source.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_backend
def runs_command(
    backend: Any, status: str | None, job: str | None, source: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    page = backend.runs(status=status, job=job, source=source, limit=limit)
    if as_json:
        output.print_json(page)
        return
    rows = [
        [
            r["id"],
            f"{r['source']}:{r['job']}",
            r["status"],
            r["submitted_by"],
            r["created_at"],
            "" if r["exit_code"] is None else r["exit_code"],
        ]
        for r in page["runs"]
    ]
    output.table(rows, ["run", "job", "status", "by", "created", "exit"])


@cli.command(":events")
@click.argument("run_id")
@click.option("--after", type=click.IntRange(0), default=0, help="Only events after this id.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep streaming until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")
@with_backend
def events_command(backend: Any, run_id: str, after: int, follow: bool, as_json: bool) -> None:
    """Print a run's events (live until it ends)."""
    for event in backend.events(run_id, after, follow):
        if as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
        else:
            click.echo(
                f"{event['id']:>8}  {event['time']}  {event['type']:<24} {json.dumps(event['data'], ensure_ascii=False)}"
            )


@cli.command(":cancel")
@click.argument("run_id")
@click.option(
    "--wait",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the run to end (0: return once the cancel is requested).",
)
@with_backend
def cancel_command(backend: Any, run_id: str, wait: float) -> None:
    """Cancel a queued or running run (or one awaiting approval), and wait until it has ended."""
    run = backend.cancel(run_id)
    deadline = time.monotonic() + wait
    while run["status"] in UNFINISHED_STATUSES and time.monotonic() < deadline:
        time.sleep(0.1)  # the same polling whichever backend ran it: a local run may be another process's
        run = backend.run(run_id)
    click.echo(f"{run['id']}: {run['status']}" + (" (cancel requested)" if run["status"] == "running" else ""))


def _body(job: str, args: dict[str, Any], source: str | None, profile: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"job": job, "args": args}
    if source:
        body["source"] = source
    if profile:
        body["profile"] = profile
    return body


def run_params() -> list[click.Option]:
    """The options of every job run (new objects each call): where, how, and the connection."""
    return [
        click.Option(["--arg", "pairs"], multiple=True, metavar="NAME=VALUE", help="A job argument (repeatable)."),
        click.Option(["--source"], help="Take the job from this source."),
        click.Option(["--profile"], type=PROFILE_CHOICE, help="Ask for this profile."),
        click.Option(["--detach"], is_flag=True, help="Print the run id and return at once."),
        click.Option(
            ["--callback"], metavar="URL", help="POST the run here, signed, when it ends (callbacks.allowed_urls)."
        ),
        click.Option(["--quiet"], is_flag=True, help="Only the job's own output."),
        *connection_params(),
    ]


def _flags(spec: dict[str, Any], name: str) -> list[str]:
    flag = "--" + name.replace("_", "-")
    return [flag, "--no-" + flag[2:]] if spec["type"] == "boolean" else [flag]


def _arg_help(spec: dict[str, Any]) -> str:
    help_text = spec.get("description", "")
    if spec.get("default") is not None:
        help_text += f" [default: {spec['default']}]"
    if spec.get("required"):
        help_text += " [required]"
    return help_text.strip()


class JobArgsCommand(click.Command):
    """A job's command line: its arguments as options, then the run options; ``--help`` shows both.

    An argument whose flag is a run option's (``token``, ``server``, ``detach``...) gets no
    flag of its own: the run option keeps its meaning, and the argument is passed as
    ``--arg NAME=VALUE`` (the help says so).
    """

    def __init__(self, job: dict[str, Any]) -> None:
        self.run_params = run_params()
        taken = {opt for param in self.run_params for opt in param.opts + param.secondary_opts} | {"-h", "--help"}
        job_params: list[click.Parameter] = []
        self.clashes: dict[str, dict[str, Any]] = {}
        for name, spec in job["args"].items():
            flags = _flags(spec, name)
            if taken.intersection(flags):
                self.clashes[name] = spec
            elif spec["type"] == "boolean":
                job_params.append(click.Option([f"{flags[0]}/{flags[1]}", name], default=None, help=_arg_help(spec)))
            else:
                choices = spec.get("choices")
                kind = click.Choice([str(c) for c in choices]) if choices else click.STRING
                job_params.append(
                    click.Option([flags[0], name], type=kind, metavar=spec["type"].upper(), help=_arg_help(spec))
                )
        self.job_params = job_params
        super().__init__(
            f"flwd {job['name']}",
            params=[*job_params, *self.run_params],
            callback=lambda **values: values,
            help=job.get("description"),
            context_settings={"help_option_names": ["-h", "--help"]},
        )

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [row for row in (p.get_help_record(ctx) for p in self.job_params) if row]
        for name, spec in self.clashes.items():
            flag = _flags(spec, name)[0]
            rows.append(
                (f"--arg {name}={spec['type'].upper()}", f"{_arg_help(spec)} (not {flag}: that is a run option)")
            )
        if rows:
            with formatter.section("Job arguments"):
                formatter.write_dl(rows)
        helps = [p.get_help_record(ctx) for p in self.run_params]
        helps.append(self.get_help_option(ctx).get_help_record(ctx))
        with formatter.section("Run options"):
            formatter.write_dl([row for row in helps if row])


class JobCommand(click.Command):
    """``flwd JOB ...``: the backend comes from the run options, the job's arguments from the job it serves.

    The command line is read twice: first for the run options alone (to know where the job
    is), then whole, by :class:`JobArgsCommand`, which knows every option and the help.
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            name,
            params=run_params(),
            callback=self.run,
            help=f"Run the job {name!r} (see: flwd {name} --help).",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        )

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["flwd.argv"] = list(args)
        return super().parse_args(ctx, args)

    def run(self, **values: Any) -> None:
        ctx = click.get_current_context()
        backend = make_backend(**connection(ctx, values))
        try:
            ctx.exit(self.run_job(ctx, backend, values))
        finally:
            backend.close()

    def run_job(self, ctx: click.Context, backend: Any, first: dict[str, Any]) -> int:
        job = backend.job(self.name, first["source"])
        command = JobArgsCommand(job)
        parsed = command.main(ctx.meta["flwd.argv"], prog_name=f"flwd {self.name}", standalone_mode=False)
        if isinstance(parsed, int):  # --help was shown
            return parsed
        run_options = {p.name for p in command.run_params}
        args = {k: v for k, v in parsed.items() if k not in run_options and v is not None}
        args.update(parse_arg_pairs(parsed["pairs"]))
        for name, spec in command.clashes.items():
            flag = _flags(spec, name)[0]
            if name not in args and flag in ctx.meta["flwd.argv"]:
                click.echo(
                    f"flwd: {flag} is flwd's own run option; pass the job's argument {name!r} as --arg {name}=VALUE",
                    err=True,
                )
        body = _body(f"{job['source']}:{job['name']}", args, None, parsed["profile"])
        if parsed["callback"] is not None:
            body["callback"] = {"url": parsed["callback"]}
        run = backend.submit(body, detach=parsed["detach"])
        if run["status"] == RunStatus.AWAITING_APPROVAL:
            click.echo(
                f"flwd: run {run['id']} of {job['source']}:{job['name']} awaits approval (plan {run['plan_digest']}); "
                f"another person approves it with: flwd :approve {run['id']}",
                err=True,
            )
            click.echo(run["id"])
            return 0
        if parsed["detach"]:
            click.echo(run["id"])
            return output.EXIT_CODES["rejected"] if run["status"] == "rejected" else 0
        return follow_run(backend, run["id"], parsed["quiet"])


def job_command(name: str) -> click.Command:
    return JobCommand(name)


def follow_run(backend: Any, run_id: str, quiet: bool = False) -> int:
    """Stream a run to the terminal; Ctrl-C cancels it (twice: leave it running)."""
    interrupted = False

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        click.echo(f"flwd: cancelling {run_id} (Ctrl-C again to stop waiting)", err=True)
        backend.cancel(run_id)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        wait_in_queue(backend, run_id, quiet)
        for event in backend.events(run_id):
            output.render_event(event, quiet)
            if event["type"] == "run.finished":
                return output.exit_code_for(event["data"])
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    return 1


def wait_in_queue(backend: Any, run_id: str, quiet: bool = False, interval: float = 0.25) -> None:
    """While the run waits (it has a ``queue``), say where and why each time that changes.

    A run that is only about to be claimed is not worth a line unless that takes a while.
    """
    run = backend.run(run_id)
    shown, began = None, time.monotonic()
    while run.get("queue") is not None:
        queue = run["queue"]
        passing = queue["reason"] == CLAIMABLE and time.monotonic() - began < 2.0
        if queue != shown and not quiet and not passing:
            place = f"position {queue['position']}" if queue.get("position") else "waiting"
            click.echo(click.style(f"flwd: queued: {place} ({queue['reason']})", dim=True), err=True)
            shown = queue
        time.sleep(interval)  # the same polling whichever backend: a local run may wait behind a server's
        run = backend.run(run_id)


register_commands(cli)


def main(argv: list[str] | None = None) -> None:
    # Local commands share the server's core; its warnings read as flwd's own notes here
    # (`:serve` replaces this with JSON logs).
    logging.basicConfig(level=logging.WARNING, format="flwd: %(message)s")
    # no-color.org: NO_COLOR set and not empty means no ANSI colour, even on a terminal.
    color = False if os.environ.get("NO_COLOR") else None
    try:
        code = cli.main(args=argv, prog_name="flwd", standalone_mode=False, color=color)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except FlwdError as exc:
        click.echo(f"flwd: error: {exc.detail}", err=True)
        problem = exc.problem if isinstance(exc, RemoteError) else exc.to_problem()
        for item in problem.get("errors") or []:
            where = f"{item.get('path', '')} " if item.get("path") else ""
            click.echo(f"  {where}{item['field']}: {item['message']}", err=True)
        if problem.get("candidates"):
            click.echo("  candidates: " + ", ".join(problem["candidates"]), err=True)
        sys.exit(2 if 400 <= exc.status < 500 else 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
