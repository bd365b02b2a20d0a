"""One interface, two backends: the local engine, or a server over HTTP.

Both return plain JSON-shaped dicts, so the CLI renders the same output
either way (rq's ``run_sync`` idea: one code path, the backend swapped).
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Iterator
from typing import Any

import requests

from flwd_server.auth.scopes import SCOPES
from flwd_server.config import Settings
from flwd_server.errors import FlwdError
from flwd_server.models import Principal, Profile, RunStatus
from flwd_server.planner import PlanRequest

SOURCE_TIMEOUT = 900.0  # adding or syncing a git source waits for the server's fetch


class RemoteError(FlwdError):
    """Raised when a server answers with a problem (or cannot be reached)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        self.status = status
        self.problem = problem


def _request_of(body: dict[str, Any]) -> PlanRequest:
    profile = body.get("profile")
    return PlanRequest(
        job=body["job"],
        args=body.get("args") or {},
        source=body.get("source"),
        profile=Profile(profile) if profile else None,
        plan=body.get("plan"),
        callback=(body.get("callback") or {}).get("url"),
    )


def _remote_error(response: requests.Response) -> RemoteError:
    """The server's problem+json as an error (or the status, if the body is not one)."""
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": f"HTTP {response.status_code}: {response.text[:200]}"}
    return RemoteError(response.status_code, problem)


class LocalBackend:
    """Runs through the same engine and database as the server, in this process."""

    remote = False

    def __init__(self, settings: Settings, config_path: str | None = None) -> None:
        from flwd_server.engine import Engine

        self.engine = Engine(settings, local_affinity=True)
        self.config_path = config_path
        self.principal = Principal(f"local:{getpass.getuser()}", frozenset(SCOPES))

    def close(self) -> None:
        self.engine.close(grace=0)

    def jobs(self, source: str | None = None) -> list[dict[str, Any]]:
        return [job.summary() for job in self.engine.jobs(source)]

    def job(self, name: str, source: str | None = None) -> dict[str, Any]:
        return self.engine.job(name, source).to_dict()

    def plan(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.engine.plan(_request_of(body), self.principal).to_dict()

    def submit(self, body: dict[str, Any], detach: bool = False) -> dict[str, Any]:
        """Queue a run for this process's runner, or (``detach``) for a background runner that outlives it."""
        if not detach:
            run, _ = self.engine.submit(_request_of(body), self.principal)
            return run.to_dict()
        from .detached import BackgroundRunner

        with BackgroundRunner(self.config_path) as runner:
            run, _ = self.engine.submit(_request_of(body), self.principal, runner=runner.owner)
            if run.status is RunStatus.QUEUED:
                runner.hand_over(run.id)
        return run.to_dict()

    def runs(self, **filters: Any) -> dict[str, Any]:
        runs, cursor = self.engine.runs(**filters)
        return {"runs": [r.to_dict() for r in runs], "next": str(cursor) if cursor else None}

    def run(self, run_id: str) -> dict[str, Any]:
        return self.engine.placed([self.engine.run(run_id)])[0].to_dict()

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self.engine.cancel(run_id, self.principal).to_dict()

    def approve(self, run_id: str, digest: str) -> dict[str, Any]:
        return self.engine.approve(run_id, self.principal, digest).to_dict()

    def deny(self, run_id: str, reason: str) -> dict[str, Any]:
        return self.engine.deny(run_id, self.principal, reason).to_dict()

    def sources(self) -> list[dict[str, Any]]:
        return self.engine.sources()

    def source(self, name: str) -> dict[str, Any]:
        return self.engine.source(name)

    def add_source(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.engine.add_source(spec, self.principal)

    def remove_source(self, name: str) -> None:
        self.engine.remove_source(name, self.principal)

    def sync_source(self, name: str) -> dict[str, Any]:
        return self.engine.sync_source(name, self.principal)

    def export(self, filters: dict[str, str]) -> Iterator[bytes]:
        from flwd_server.store.export import ExportFilter

        return self.engine.export(ExportFilter.parse(filters))

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        root = f"/runs/{quote(run_id, safe='')}/artifacts/"
        return [{**a.to_dict(), "links": {"self": root + quote(a.path)}} for a in self.engine.artifacts(run_id)]

    def artifact(self, run_id: str, path: str) -> Iterator[bytes]:
        """The file's bytes; opened (a missing one raises) before anything is yielded."""
        _, handle = self.engine.artifact(run_id, path)

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        return chunks()

    def events(self, run_id: str, after: int = 0, follow: bool = True) -> Iterator[dict[str, Any]]:
        self.engine.run(run_id)
        hub = self.engine.hub
        hub.start()
        hub.watch()
        try:
            position = after
            while True:
                events, position = hub.read(position, run_id)
                for event in events:
                    yield event.to_dict()
                    if event.type == "run.finished":
                        return
                if not events:
                    if not follow:
                        return
                    hub.wait(position, 0.5)
        finally:
            hub.unwatch()


class RemoteBackend:
    """Calls a running ``flwd :serve`` with a bearer token."""

    remote = True

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path, **{"timeout": self.timeout, **kwargs})
        except requests.RequestException as exc:
            raise RemoteError(0, {"detail": f"cannot reach {self.url}: {exc.__class__.__name__}"}) from None
        if response.status_code >= 400:
            raise _remote_error(response)
        return response.json() if response.content else {}

    def jobs(self, source: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/jobs", params={"source": source} if source else None)["jobs"]

    def job(self, name: str, source: str | None = None) -> dict[str, Any]:
        return self._call(
            "GET", f"/jobs/{requests.utils.quote(name, safe=':')}", params={"source": source} if source else None
        )["job"]

    def plan(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/plans", json=body)["plan"]

    def submit(self, body: dict[str, Any], detach: bool = False) -> dict[str, Any]:
        return self._call("POST", "/runs", json=body)["run"]

    def runs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        if "before" in params:
            params["cursor"] = params.pop("before")
        return self._call("GET", "/runs", params=params)

    def run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/runs/{run_id}")["run"]

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/runs/{run_id}/cancel")["run"]

    def approve(self, run_id: str, digest: str) -> dict[str, Any]:
        return self._call("POST", f"/runs/{requests.utils.quote(run_id, safe='')}/approve", json={"digest": digest})[
            "run"
        ]

    def deny(self, run_id: str, reason: str) -> dict[str, Any]:
        return self._call("POST", f"/runs/{requests.utils.quote(run_id, safe='')}/deny", json={"reason": reason})["run"]

    def sources(self) -> list[dict[str, Any]]:
        return self._call("GET", "/sources")["sources"]

    def source(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/sources/{requests.utils.quote(name, safe='')}")["source"]

    def add_source(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/sources", json=spec, timeout=SOURCE_TIMEOUT)["source"]

    def remove_source(self, name: str) -> None:
        self._call("DELETE", f"/sources/{requests.utils.quote(name, safe='')}")

    def sync_source(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/sources/{requests.utils.quote(name, safe='')}/sync", timeout=SOURCE_TIMEOUT)

    def export(self, filters: dict[str, str]) -> Iterator[bytes]:
        """Stream GET /export; a problem answer raises before anything is written."""
        return self._stream(f"{self.url}/export", params=filters)

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/runs/{requests.utils.quote(run_id, safe='')}/artifacts")["artifacts"]

    def artifact(self, run_id: str, path: str) -> Iterator[bytes]:
        """Stream one artifact; a problem answer raises before anything is written."""
        quoted = f"{requests.utils.quote(run_id, safe='')}/artifacts/{requests.utils.quote(path)}"
        return self._stream(f"{self.url}/runs/{quoted}", cut_is_an_error=True)

    def _stream(self, url: str, params: dict[str, str] | None = None, cut_is_an_error: bool = False) -> Iterator[bytes]:
        """A long download in chunks. A cut raises where the bytes carry no end of their own (a file);
        an export ends with its end record, which its reader checks."""
        try:
            response = self.session.get(url, params=params, stream=True, timeout=(10, 300))
        except requests.RequestException as exc:
            raise RemoteError(0, {"detail": f"cannot reach {self.url}: {exc.__class__.__name__}"}) from None
        if response.status_code >= 400:
            error = _remote_error(response)
            response.close()
            raise error

        def chunks() -> Iterator[bytes]:
            with response:
                try:
                    yield from response.iter_content(64 * 1024)
                except requests.RequestException as exc:
                    if cut_is_an_error:
                        raise RemoteError(
                            0, {"detail": f"the download from {url} was cut: {exc.__class__.__name__}"}
                        ) from None
                    return  # the caller sees the missing end record

        return chunks()

    def events(self, run_id: str, after: int = 0, follow: bool = True) -> Iterator[dict[str, Any]]:
        """Follow the SSE stream, reconnecting with Last-Event-ID if the connection drops."""
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                with self.session.get(
                    f"{self.url}/runs/{run_id}/events", headers=headers, stream=True, timeout=(10, 60)
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        raise _remote_error(response)
                    for event in parse_sse(response.iter_lines(decode_unicode=False)):
                        failures = 0
                        last = event["id"]
                        yield event
                        if event["type"] == "run.finished":
                            return
            except requests.RequestException:
                failures += 1
                if failures > 5:
                    raise RemoteError(
                        0, {"detail": f"lost the event stream of {run_id} and could not reconnect"}
                    ) from None
                time.sleep(min(0.2 * 2**failures, 5))
            if not follow:
                return


def parse_sse(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Parse an SSE byte stream into flwd event dicts (comments and retry lines skipped)."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="replace")
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
