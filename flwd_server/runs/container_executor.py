"""Container steps through the docker SDK, on Docker or podman's compatible socket.

The order and the guards answer known traps of the docker SDK on podman:

* The image is pulled as ``registry/repo@sha256:…`` (never tag plus digest),
  its ``RepoDigests`` must contain that digest, and the container is created
  from the verified image *ID*, so nothing re-resolves a tag in between.
* create -> attach -> start: attaching before start loses no output of a
  container that exits at once; the attach stream is read with no timeout, so
  a quiet container never raises ``ReadTimeout``.  Frames are demultiplexed
  into stdout and stderr and partial writes are joined into lines per stream.
* ``wait()`` runs in its own thread while this one watches cancel and the
  deadline; stopping is kill -> wait -> remove(force) in ``finally``, never
  ``auto_remove`` (which races with attach and wait).
* Containers carry labels (run, step, owner, installation), so a sweep at
  start-up removes what a crashed worker left behind.
* Network ``none`` unless the job requires ``network``; never privileged;
  ``no-new-privileges``; no host path mounted but the step's own ``$FLWD_OUTPUT``
  file (:mod:`.outputs`), at ``/flwd/output``, and the run's artifacts folder, at
  ``/flwd/artifacts`` (``$FLWD_ARTIFACTS``), which flwd collects when the run ends.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import docker.errors
import requests

from ..config import Settings
from ..containers.images import ImageRef, parse_image_ref
from ..containers.registry_client import RegistryClient
from ..errors import FlwdError, RunNotFound
from ..jobs.arguments import arg_env, render_command
from ..models import Job, Step
from ..store import Store
from ..store.owners import owner_is_dead
from .capture import StepOutput
from .host_executor import StepOutcome
from .outputs import CONTAINER_PATH

CONTAINER_ARTIFACTS = "/flwd/artifacts"
log = logging.getLogger("flwd.containers")

LABEL_RUN = "flwd.run"
LABEL_STEP = "flwd.step"
LABEL_OWNER = "flwd.owner"
LABEL_INSTANCE = "flwd.instance"
POLL = 0.1
STATE_EVERY = 1.0
READER_GRACE = 5.0
REMOVE_ATTEMPTS = 10
ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException)


def instance_label(digest_key: bytes) -> str:
    """Names this installation (its database) without revealing the key it is derived from."""
    return hashlib.sha256(b"flwd-instance\0" + digest_key).hexdigest()[:16]


class _Stopped(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _call_until(fn: Callable[[], Any], deadline: float, should_stop: Callable[[], str | None]) -> Any:
    """Run a blocking engine call in a thread; give up on it if the run is cancelled or times out."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="flwd-container-call", daemon=True)
    thread.start()
    while thread.is_alive():
        reason = should_stop() or ("timed_out" if time.time() >= deadline else None)
        if reason:
            raise _Stopped(reason)
        thread.join(POLL)
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _same_image(entry: str, ref: ImageRef) -> bool:
    try:
        parsed = parse_image_ref(entry)
    except FlwdError:
        return False
    return (parsed.registry, parsed.repository, parsed.digest) == (ref.registry, ref.repository, ref.digest)


def network_mode(job: Job, step: Step) -> str | None:
    """``none`` unless the job requires network (None: the engine's default network)."""
    if step.network == "host":
        return "host"  # policy denies this under secure; under permissive it was warned about
    if step.network == "none":
        return "none"
    if "network" in job.requires or step.network == "default":
        return None
    return "none"


class ContainerExecutor:
    """The runner's ``container_executor``: one call runs one container step to its end."""

    def __init__(
        self, runtime: Any, registry: RegistryClient, instance: Callable[[], str], owner: Callable[[], str]
    ) -> None:
        self.runtime = runtime
        self.registry = registry
        self.instance = instance
        self.owner = owner

    def __call__(
        self,
        *,
        run_id: str,
        step: Step,
        args: dict[str, Any],
        env: dict[str, str],
        deadline: float,
        should_stop: Callable[[], str | None],
        output: StepOutput,
        job: Job,
        settings: Settings,
        output_file: str | None = None,
        artifacts: str | None = None,
    ) -> StepOutcome:
        started = time.monotonic()
        out = output

        def outcome(code: int | None, status: str, reason: str | None = None) -> StepOutcome:
            return StepOutcome(code, status, time.monotonic() - started, reason)

        def cannot_pull(detail: str) -> StepOutcome:
            out.note(f"cannot pull image {step.image}: {detail}")
            return outcome(None, "failed", f"step {step.name!r}: cannot pull image {step.image}: {detail}")

        try:
            client = self.runtime.client()
            image_id = self._image(client, step.image or "", deadline, should_stop, settings)
        except _Stopped as stop:
            return outcome(None, stop.status)
        except FlwdError as exc:
            return cannot_pull(exc.detail)
        except ENGINE_ERRORS as exc:
            self.runtime.invalidate()
            return cannot_pull(_engine_message(exc))
        return self._run(
            client, image_id, run_id, step, args, env, deadline, should_stop, out, job, outcome, output_file, artifacts
        )

    # -- image -----------------------------------------------------------------

    def _image(
        self, client: Any, image: str, deadline: float, should_stop: Callable[[], str | None], settings: Settings
    ) -> str:
        """Pull by digest if needed; return the ID of the image whose RepoDigests hold that digest."""
        ref = parse_image_ref(image)
        digest = ref.digest or self.registry.require_manifest(ref).digest  # a tag is resolved once, then pinned
        pinned = ref.with_digest(digest)
        name = str(pinned)
        found = self._local_image(client, pinned)
        if found is None:
            log.info("pulling %s", name, extra={"event": "container.pull", "image": name})
            _call_until(lambda: self._pull(client, name, settings.container.pull_timeout), deadline, should_stop)
            found = self._local_image(client, pinned)
            if found is None:
                raise FlwdError(f"the engine pulled {name} but holds no image with that digest")
        return found

    @staticmethod
    def _local_image(client: Any, ref: ImageRef) -> str | None:
        try:
            attrs = client.api.inspect_image(str(ref))
        except docker.errors.NotFound:
            return None
        if not any(_same_image(entry, ref) for entry in attrs.get("RepoDigests") or []):
            return None
        return attrs["Id"]

    @staticmethod
    def _pull(client: Any, name: str, timeout: float) -> None:
        # fromImage=repo@sha256:… with no tag: podman answers tag=sha256:… with a 500 (podman#7925).
        response = client.api._post(
            client.api._url("/images/create"), params={"fromImage": name}, stream=True, timeout=timeout
        )
        client.api._raise_for_status(response)
        for item in client.api._stream_helper(response, decode=True):
            if isinstance(item, dict) and item.get("error"):
                raise FlwdError(f"the container engine answered: {item['error']}")

    # -- container -------------------------------------------------------------

    def _run(
        self,
        client: Any,
        image_id: str,
        run_id: str,
        step: Step,
        args: dict[str, Any],
        env: dict[str, str],
        deadline: float,
        should_stop: Callable[[], str | None],
        out: StepOutput,
        job: Job,
        outcome: Callable[..., StepOutcome],
        output_file: str | None = None,
        artifacts: str | None = None,
    ) -> StepOutcome:
        api = client.api
        environment = {
            **env,
            **dict(step.env),
            **arg_env(args),
            "FLWD_RUN_ID": run_id,
            "FLWD_JOB": job.name,
            "FLWD_SOURCE": job.source,
            "FLWD_STEP": step.name,
        }
        host_config: dict[str, Any] = {"privileged": False, "security_opt": ["no-new-privileges"]}
        # The only host paths a container sees: the step's $FLWD_OUTPUT file and its run's artifacts folder.
        binds: dict[str, dict[str, str]] = {}
        if artifacts:
            environment["FLWD_ARTIFACTS"] = CONTAINER_ARTIFACTS
            binds[artifacts] = {"bind": CONTAINER_ARTIFACTS, "mode": "rw"}
        if output_file:
            binds[output_file] = {"bind": CONTAINER_PATH, "mode": "rw"}
        if binds:
            host_config["binds"] = binds
        mode = network_mode(job, step)
        if mode:
            host_config["network_mode"] = mode
        labels = {
            LABEL_RUN: run_id,
            LABEL_STEP: step.name[:63],
            LABEL_OWNER: self.owner(),
            LABEL_INSTANCE: self.instance(),
        }
        container_id: str | None = None
        reader: threading.Thread | None = None
        stopped: str | None = None
        exit_code: int | None = None
        failure: str | None = None
        try:
            container_id = api.create_container(
                image_id,
                command=render_command(step.command, args) or None,
                environment=environment,
                working_dir=step.workdir,
                labels=labels,
                host_config=api.create_host_config(**host_config),
                tty=False,
                stdin_open=False,
            )["Id"]
            frames = api.attach(container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            reader = threading.Thread(target=self._read, args=(frames, out), name=f"flwd-attach-{run_id}", daemon=True)
            reader.start()
            api.start(container_id)
            waited: dict[str, Any] = {}
            waiter = threading.Thread(
                target=self._wait, args=(api, container_id, waited), name=f"flwd-wait-{run_id}", daemon=True
            )
            waiter.start()
            next_look = time.monotonic() + STATE_EVERY
            while waiter.is_alive():
                if stopped is None:
                    stopped = should_stop() or ("timed_out" if time.time() >= deadline else None)
                    if stopped:
                        _quietly(api.kill, container_id)
                waiter.join(POLL)
                if waiter.is_alive() and time.monotonic() >= next_look:
                    # wait() can answer late (podman whose exit clean-up runs with another
                    # config); the container's own state is the authority.
                    next_look = time.monotonic() + STATE_EVERY
                    state = api.inspect_container(container_id).get("State") or {}
                    if state.get("Status") in ("exited", "stopped", "dead"):
                        waited.setdefault("code", int(state.get("ExitCode", -1)))
                        break
            if "error" in waited and "code" not in waited:
                raise waited["error"]
            exit_code = waited.get("code")
        except ENGINE_ERRORS as exc:
            self.runtime.invalidate()
            failure = _engine_message(exc)
        finally:
            if container_id is not None:
                self._remove(api, container_id, running=exit_code is None)
            if reader is not None:
                reader.join(READER_GRACE)
            out.finish()
        if failure:
            out.note(f"container step failed: {failure}")
            return outcome(exit_code, stopped or "failed", f"step {step.name!r}: container step failed: {failure}")
        if stopped:
            return outcome(exit_code, stopped)
        return outcome(exit_code, "succeeded" if exit_code == 0 else "failed")

    @staticmethod
    def _read(frames: Any, out: StepOutput) -> None:
        try:
            for stdout, stderr in frames:
                if stdout:
                    out.feed("stdout", stdout)
                if stderr:
                    out.feed("stderr", stderr)
        except Exception:  # the stream breaks when the container is removed under it
            log.debug("attach stream ended with an error", exc_info=True)

    @staticmethod
    def _wait(api: Any, container_id: str, box: dict[str, Any]) -> None:
        try:
            box["code"] = int(api.wait(container_id, timeout=None)["StatusCode"])
        except Exception as exc:  # handed to the step's thread
            box["error"] = exc

    @staticmethod
    def _remove(api: Any, container_id: str, running: bool = True) -> None:
        """kill -> wait -> remove(force); retried while the engine is still busy with it."""
        if running:
            _quietly(api.kill, container_id)
            _quietly(lambda cid: api.wait(cid, timeout=10), container_id)
        for attempt in range(REMOVE_ATTEMPTS):
            try:
                api.remove_container(container_id, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except ENGINE_ERRORS as exc:
                if attempt == REMOVE_ATTEMPTS - 1:
                    log.error("could not remove container %s: %s", container_id[:12], _engine_message(exc))
                    return
                time.sleep(0.2 * (attempt + 1))

    # -- orphans ---------------------------------------------------------------

    def sweep_orphans(self, store: Store, me: str) -> list[str]:
        """Remove this installation's containers whose run ended or whose process is gone."""
        try:
            return self._sweep(store, me)
        except (FlwdError, *ENGINE_ERRORS):
            return []  # no engine (or it went away): nothing to sweep now
        except Exception:  # a sweep must never take a worker down
            log.exception("sweeping orphaned containers failed")
            return []

    def _sweep(self, store: Store, me: str) -> list[str]:
        api = self.runtime.client().api
        found = api.containers(all=True, filters={"label": [f"{LABEL_INSTANCE}={self.instance()}"]})
        owners = {row[0]: row[1:] for row in store.owners()}
        removed = []
        for item in found:
            labels = item.get("Labels") or {}
            run_id, owner = labels.get(LABEL_RUN, ""), labels.get(LABEL_OWNER, "")
            try:
                ended = store.get_run(run_id).status.is_terminal
            except RunNotFound:
                ended = True
            host, pid, beat = owners.get(owner, ("", 0, None))
            if ended or owner_is_dead(owner, host, pid, beat, me=me):
                self._remove(api, item["Id"], running=False)  # remove(force) kills it first
                removed.append(item["Id"])
                log.warning(
                    "removed container %s left by run %s",
                    item["Id"][:12],
                    run_id,
                    extra={"event": "container.orphan_removed", "run_id": run_id},
                )
        return removed


def _quietly(fn: Callable[[str], Any], container_id: str) -> None:
    try:
        fn(container_id)
    except ENGINE_ERRORS:
        pass


def _engine_message(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        return f"the container engine answered: {exc.explanation or exc}"
    if isinstance(exc, requests.RequestException):
        return f"the container engine does not answer ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"
