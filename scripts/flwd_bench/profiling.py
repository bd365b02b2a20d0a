"""``--py-spy DIR``: a py-spy profile of each flwd worker while figure 1's load runs.

py-spy samples a running Python process from outside (ptrace), so the server runs
unchanged.  One ``py-spy record`` per worker for the seconds of load, 200 samples a
second, idle threads left out (a thread waiting on a socket or a lock is not where
CPU goes); each writes a flame graph ``DIR/runs-N-worker-PID.svg`` (N counts the
profiles taken into DIR: one per repetition).  ``--nonblocking`` reads the worker
without pausing it, so the profile does not slow what it measures (samples may be
slightly torn).  py-spy is not a dependency of flwd or of its tests:
``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .harness import Workspace


def py_spy_binary() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--py-spy: py-spy is not installed (.venv/bin/pip install py-spy)")
    return found


class PySpy:
    def __init__(self, out: Path, ws: Workspace) -> None:
        self.out = out
        self.ws = ws
        self.binary = py_spy_binary()
        self.outputs: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, pids: list[int], seconds: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        n = 1
        while any(self.out.glob(f"runs-{n}-*")):
            n += 1
        for pid in pids:
            path = self.out / f"runs-{n}-worker-{pid}.svg"
            args = [self.binary, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
            args += ["--format", "flamegraph", "--output", str(path), "--nonblocking"]
            self._procs.append(self.ws.spawn(args, log="py-spy.log"))
            self.outputs.append(str(path))

    def finish(self, timeout: float = 60.0) -> None:
        for proc in self._procs:
            self.ws.wait(proc, timeout)
            self.ws.stop(proc)
        self._procs = []
