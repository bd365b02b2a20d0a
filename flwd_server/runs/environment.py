"""What a host step gets from the host: a scrubbed environment and its limits, by profile."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import disk_error
from ..jobs.arguments import arg_env
from ..models import Job, Profile, Step
from ..policy import host_env_passthrough
from .host_executor import StepLimits

SAFE_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ARTIFACTS_FOLDER = "artifacts"  # in the work dir: $FLWD_ARTIFACTS, collected when the run ends


def artifacts_folder(workdir: Path) -> Path:
    return workdir / ARTIFACTS_FOLDER


def host_environment(
    run_id: str,
    job: Job,
    step: Step,
    args: dict[str, Any],
    profile: Profile,
    workdir: Path,
    settings: Settings,
    source_dir: str | None = None,
) -> dict[str, str]:
    """The environment of a host step: scrubbed, unless the job may have the host's.

    Under ``secure`` (and whenever the job does not require ``host-env``) a step
    sees only PATH, HOME (its own work dir), LANG, the job's variables and
    ``FLWD_*``: a secret in the server's environment never reaches a job.
    """
    env = host_env_passthrough(job, profile, settings)
    env.update(
        {
            "PATH": os.environ.get("PATH", SAFE_HOST_PATH) if profile is not Profile.SECURE else SAFE_HOST_PATH,
            "HOME": str(workdir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(dict(job.env))
    env.update(dict(step.env))
    env.update(arg_env(args))
    env.update(
        {
            "FLWD_RUN_ID": run_id,
            "FLWD_JOB": job.name,
            "FLWD_SOURCE": job.source,
            "FLWD_STEP": step.name,
            "FLWD_WORKDIR": str(workdir),
            "FLWD_ARTIFACTS": str(artifacts_folder(workdir)),
        }
    )
    if job.revision:
        env["FLWD_SOURCE_REVISION"] = job.revision
    if source_dir:
        env["FLWD_SOURCE_DIR"] = source_dir
    return env


def host_limits(profile: Profile, settings: Settings) -> StepLimits:
    r"""The ``ulimit``\ s of a host step: under ``secure`` only."""
    if profile is not Profile.SECURE:
        return StepLimits()
    policy = settings.policy
    return StepLimits(
        cpu_seconds=policy.cpu_seconds, open_files=policy.open_files, file_size_bytes=policy.file_size_bytes
    )


def make_workdir(root: Path, run_id: str) -> Path:
    """A run's own working directory (also its steps' HOME) and its ``artifacts`` folder, private to the
    server's user."""
    workdir = root / run_id
    try:
        try:
            os.mkdir(workdir, 0o700)
        except FileNotFoundError:
            root.mkdir(parents=True, exist_ok=True)
            os.mkdir(workdir, 0o700)
        os.mkdir(artifacts_folder(workdir), 0o700)
    except OSError as exc:  # the disk (read-only, full), not the code: the run ends saying so
        raise disk_error("could not create the run's work dir", workdir, exc) from None
    return workdir


def remove_workdir(workdir: Path) -> None:
    try:
        os.rmdir(workdir)  # the usual case: the step left nothing
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)
