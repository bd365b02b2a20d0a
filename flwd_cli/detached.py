"""The background runner of a detached local run (``flwd JOB --detach`` without ``--server``).

A local run is claimed only by the process it names (its *affinity*), so a CLI
that returns at once cannot run it itself, and a server on the same database
leaves it alone.  The CLI therefore starts this module first, in a session of
its own, queues the run for it (the child's owner id is the run's affinity)
and writes the run id to its stdin.  The child runs that run on the same
engine and database and exits when it has ended; a CLI that queued nothing
closes the pipe, and the child exits at once.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from types import TracebackType

from flwd_server.config import load_settings
from flwd_server.models import EventType
from flwd_server.store.owners import owner_id


class BackgroundRunner:
    """The parent's side: start the child, name it (``owner``), hand it a run id or nothing."""

    def __init__(self, config_path: str | None) -> None:
        argv = [sys.executable, "-m", "flwd_cli.detached"]
        if config_path:
            argv += ["--config", config_path]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C or a closed terminal of the CLI does not reach it
        )
        self.owner = owner_id(self.proc.pid)  # what the child's runner calls itself

    def hand_over(self, run_id: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(run_id.encode() + b"\n")

    def __enter__(self) -> BackgroundRunner:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()  # the child has its run id, or EOF: nothing to run
        # Not waited for: it outlives this process, and init (or the caller's subreaper) reaps it.


def run_one(config_path: str | None, run_id: str) -> None:
    """Run ``run_id`` (queued for this process) on the local engine; return when it has ended."""
    from flwd_server.engine import Engine

    engine = Engine(load_settings(config_path), local_affinity=True)
    try:
        engine.start()
        engine.callbacks.adopt(run_id)  # its callback, if it has one, is this process's to deliver
        hub = engine.hub
        hub.watch()
        position = 0
        while True:
            events, position = hub.read(position, run_id)
            if any(event.type == EventType.RUN_FINISHED.value for event in events):
                return
            if not events:
                hub.wait(position, 0.5)
    finally:
        engine.close(grace=0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    config_path = args[1] if args[:1] == ["--config"] and len(args) > 1 else None
    run_id = sys.stdin.readline().strip()
    if run_id:
        run_one(config_path, run_id)


if __name__ == "__main__":
    main()
