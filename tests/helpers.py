"""Test helpers: polling with a deadline (never a bare sleep), an independent SSE reader."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import requests

T = TypeVar("T")
IN_CI = os.environ.get("CI", "").lower() == "true"


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def require_tool(name: str) -> str:
    """The path of a tool the test needs: missing fails under CI, skips on a developer machine."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None)
    if path:
        return path
    message = f"{name} is not installed (scripts/test installs it)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def sse_events(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Parse SSE by the WHATWG rules, independently of flwd's own client.

    Yields ``{"id", "event", "data"}`` per dispatched event and ``{"comment": text}``
    for comment lines (heartbeats).
    """
    fields: dict[str, Any] = {"data": []}
    for raw in lines:
        line = raw.decode("utf-8")
        if line == "":
            if fields["data"]:
                yield {"id": fields.get("id"), "event": fields.get("event", "message"), "data": json.loads("\n".join(fields["data"]))}
            fields = {"data": []}
            continue
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            fields["data"].append(value)
        elif name in ("id", "event", "retry"):
            fields[name] = value


def read_stream(url: str, headers: dict[str, str], *, until: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 20.0, comments: bool = False) -> list[dict[str, Any]]:
    """Read an SSE stream until ``until(event)`` is true, the server ends it, or ``timeout``."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with requests.get(url, headers=headers, stream=True, timeout=(5, timeout)) as response:
        assert response.status_code == 200, (response.status_code, response.text[:500])
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for event in sse_events(response.iter_lines(chunk_size=None)):
            if time.monotonic() > deadline:  # heartbeats keep the connection busy: check on every line
                raise AssertionError(f"stream {url} did not finish within {timeout}s; got {len(out)} events")
            if "comment" in event and not comments:
                continue
            out.append(event)
            if until is not None and "comment" not in event and until(event):
                break
    return out


def processes_of_run(run_id: str) -> list[int]:
    """Live (non-zombie) processes whose environment says they belong to ``run_id``."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if f"FLWD_RUN_ID={run_id}".encode() in environ.split(b"\0") and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found
