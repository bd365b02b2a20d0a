"""The job sources the bench writes into its temp dir: its own jobs, and a source of N jobs.

The bench brings its own jobs rather than relying on the bundled examples, so
what is measured does not change when the examples do.
"""

from __future__ import annotations

import json
from pathlib import Path

BENCH_SOURCE = "bench"

TICKER = """\
import os, time
go = os.environ["FLWD_ARG_GO"]
deadline = time.monotonic() + 120
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.005)
lines = int(os.environ["FLWD_ARG_LINES"])
start = time.monotonic()
for i in range(lines):
    print(f"tick {i} {time.time():.6f}", flush=True)
    # A fixed schedule, not sleep(0.01) after each line: 100 lines/s even on a loaded machine.
    delay = start + (i + 1) * 0.01 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""

# The command of the throughput job; figure 4 also times it writing to /dev/null.
LINES_COMMAND = 'seq -f "line %g" "$FLWD_ARG_LINES"'

JOBS = {
    "bench-true": {
        "description": "Run true (one trivial run; figure 1)",
        "timeout": 60,
        "steps": [{"name": "true", "run": "true"}],
    },
    "bench-echo": {
        "description": "Print one line at once (first-output latency; figure 2)",
        "timeout": 60,
        "steps": [{"name": "echo", "run": "echo first"}],
    },
    "bench-ticker": {
        "description": "Once GO exists, print 'tick N EPOCH' every 10 ms (SSE fan-out; figure 3)",
        "args": {
            "lines": {"type": "integer", "default": 500, "minimum": 1, "maximum": 100000},
            "go": {"type": "string", "required": True, "pattern": "^/[A-Za-z0-9/_.-]{1,300}$"},
        },
        "timeout": 600,
        "steps": [{"name": "tick", "run": "exec python3 -u - <<'PY'\n" + TICKER + "PY\n"}],
    },
    "bench-lines": {
        "description": "Print LINES numbered lines as fast as seq can (output throughput; figure 4)",
        "args": {
            "lines": {"type": "integer", "default": 200000, "minimum": 1, "maximum": 10000000},
            # Never printed: every line is searched for it, as in any run with a secret argument.
            "secret": {"type": "string", "default": "bench-secret-value", "secret": True},
        },
        "timeout": 600,
        "steps": [{"name": "print", "run": LINES_COMMAND}],
    },
}


def write_job(folder: Path, name: str, spec: dict) -> None:
    # JSON is YAML: no YAML library needed to write job files.
    (folder / f"{name}.yaml").write_text(json.dumps({"name": name, **spec}, indent=2))


def write_bench_source(root: Path) -> dict[str, str]:
    """Write the bench's own jobs; returns the ``sources:`` entry for a server config."""
    jobs = root / "jobs"
    jobs.mkdir(parents=True)
    for name, spec in JOBS.items():
        write_job(jobs, name, spec)
    return {"type": "local", "name": BENCH_SOURCE, "path": str(root)}


def write_many_source(root: Path, count: int, name: str = "many") -> dict[str, str]:
    """A source of ``count`` small, distinct jobs (the /jobs figure), one file each."""
    jobs = root / "jobs"
    jobs.mkdir(parents=True)
    for i in range(count):
        job = f"job-{i:05d}"
        write_job(
            jobs,
            job,
            {
                "description": f"Generated job {i} of {count}",
                "args": {
                    "name": {
                        "type": "string",
                        "required": True,
                        "pattern": "^[A-Za-z ]{1,64}$",
                        "description": "Who to greet",
                    },
                    "times": {"type": "integer", "default": 1, "minimum": 1, "maximum": 5},
                },
                "timeout": 60,
                "steps": [{"name": "greet", "run": f'echo "job {i}: hello, $FLWD_ARG_NAME"'}],
            },
        )
    return {"type": "local", "name": name, "path": str(root)}
