"""The OCI add-on artifact: a source's ``jobs/`` tree as one gzip'd tar layer.

Layout (an OCI image manifest, so any OCI 1.0 registry stores it)::

    manifest  application/vnd.oci.image.manifest.v1+json
      artifactType  application/vnd.flwd.addon.v1
      config        application/vnd.flwd.addon.config.v1+json   {"flwd.addon": 1, "jobs": N, "files": N}
      layers[0]     application/vnd.flwd.addon.jobs.v1.tar+gzip  the jobs/ tree

The tar holds only directories and regular files under ``jobs/`` (sorted,
mtime 0, owner 0, modes 0644/0755), so publishing the same folder twice gives
the same digest.  Extraction trusts nothing in it: absolute paths, ``..``,
links, devices and fifos are refused, and sizes and entry counts are capped.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import UnsafeSource, disk_error
from .images import ImageRef
from .registry_client import OCI_MANIFEST, Manifest, RegistryClient, sha256_digest

ARTIFACT_TYPE = "application/vnd.flwd.addon.v1"
CONFIG_TYPE = "application/vnd.flwd.addon.config.v1+json"
LAYER_TYPE = "application/vnd.flwd.addon.jobs.v1.tar+gzip"
MAX_LAYER_BYTES = 16 * 1024 * 1024  # compressed
MAX_TREE_BYTES = 64 * 1024 * 1024  # extracted
MAX_ENTRIES = 20000
JOB_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Limits:
    layer_bytes: int = MAX_LAYER_BYTES
    tree_bytes: int = MAX_TREE_BYTES
    entries: int = MAX_ENTRIES


# -- packing ---------------------------------------------------------------------


def pack(folder: str | os.PathLike[str], limits: Limits = Limits()) -> tuple[bytes, dict[str, int]]:
    """The add-on layer for ``folder/jobs`` and a summary; refuses links and special files."""
    root = Path(folder)
    jobs = root / "jobs"
    if not jobs.is_dir() or jobs.is_symlink():
        raise UnsafeSource(f"{folder} has no jobs/ folder to publish")
    entries: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(jobs):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        entries.append((base.relative_to(root).as_posix(), base))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            entries.append(((base / name).relative_to(root).as_posix(), base / name))
        for name in dirnames:
            if (base / name).is_symlink():
                raise UnsafeSource(f"{base / name} is a symlink; add-ons carry only folders and regular files")
    buf = io.BytesIO()
    total = files = job_files = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries:
            info = os.lstat(path)
            item = tarfile.TarInfo(name)
            item.mtime, item.uid, item.gid, item.uname, item.gname = 0, 0, 0, "", ""
            if stat.S_ISDIR(info.st_mode):
                item.type, item.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(item)
            elif stat.S_ISREG(info.st_mode):
                item.size, item.mode = info.st_size, 0o644
                total += info.st_size
                files += 1
                job_files += name.endswith(JOB_SUFFIXES)
                if total > limits.tree_bytes:
                    raise UnsafeSource(
                        f"{folder}/jobs holds more than {limits.tree_bytes} bytes; too large for an add-on"
                    )
                with open(path, "rb") as handle:
                    tar.addfile(item, handle)
            else:
                raise UnsafeSource(f"{path} is not a regular file or folder (symlinks and devices are not published)")
    if len(entries) > limits.entries:
        raise UnsafeSource(f"{folder}/jobs holds more than {limits.entries} entries")
    layer = gzip.compress(buf.getvalue(), mtime=0)
    if len(layer) > limits.layer_bytes:
        raise UnsafeSource(f"the packed jobs/ tree is {len(layer)} bytes, more than {limits.layer_bytes}")
    return layer, {"files": files, "jobs": job_files, "bytes": total}


def manifest_for(layer: bytes, summary: dict[str, int]) -> tuple[bytes, bytes]:
    """``(manifest, config)`` bytes for a packed layer."""
    config = json.dumps({"flwd.addon": 1, **summary}, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": sha256_digest(config)},
        "layers": [
            {
                "mediaType": LAYER_TYPE,
                "size": len(layer),
                "digest": sha256_digest(layer),
                "annotations": {"org.opencontainers.image.title": "jobs.tar.gz"},
            }
        ],
    }
    return json.dumps(manifest, separators=(",", ":")).encode(), config


def publish(registry: RegistryClient, ref: ImageRef, folder: str | os.PathLike[str]) -> str:
    """Push ``folder/jobs`` as an add-on to ``ref`` (a tag); returns the manifest digest."""
    layer, summary = pack(folder)
    manifest, config = manifest_for(layer, summary)
    registry.push_blob(ref.registry, ref.repository, config)
    registry.push_blob(ref.registry, ref.repository, layer)
    return registry.put_manifest(
        ref.registry, ref.repository, ref.tag or sha256_digest(manifest), manifest, OCI_MANIFEST
    )


# -- reading ---------------------------------------------------------------------


def addon_layer(manifest: Manifest, where: str) -> dict:
    """The jobs layer descriptor of an add-on manifest; refuses anything else."""
    data = manifest.data
    if manifest.is_index or data.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise UnsafeSource(f"{where} is not a flwd add-on (media type {manifest.media_type or 'unknown'})")
    config = data.get("config") or {}
    if data.get("artifactType") != ARTIFACT_TYPE and config.get("mediaType") != CONFIG_TYPE:
        raise UnsafeSource(
            f"{where} is not a flwd add-on (artifact type {data.get('artifactType') or config.get('mediaType')!r}; publish one with `flwd :addon publish`)"
        )
    layers = [
        layer for layer in data.get("layers") or [] if isinstance(layer, dict) and layer.get("mediaType") == LAYER_TYPE
    ]
    if len(layers) != 1:
        raise UnsafeSource(f"{where} has {len(layers)} jobs layers; a flwd add-on has exactly one")
    return layers[0]


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise UnsafeSource(f"add-on entry {name!r} points outside the add-on")
    parts = [p for p in path.parts if p != "."]
    if not parts or parts[0] != "jobs":
        raise UnsafeSource(f"add-on entry {name!r} is outside jobs/")
    return PurePosixPath(*parts)


def extract(layer: bytes, dest: str | os.PathLike[str], limits: Limits = Limits()) -> Path:
    """Unpack an add-on layer into ``dest`` (created atomically); returns it.

    Everything is checked before it touches the disk: entry names, entry types
    and the running totals of bytes and entries.  A failure leaves nothing behind.
    """
    target = Path(dest)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    except OSError as exc:  # our disk (read-only, full), not the add-on: a 503
        raise disk_error("could not unpack the add-on into", target.parent, exc) from None
    try:
        total = count = 0
        try:
            with tarfile.open(fileobj=io.BytesIO(layer), mode="r|gz") as tar:
                for member in tar:
                    count += 1
                    if count > limits.entries:
                        raise UnsafeSource(f"the add-on has more than {limits.entries} entries")
                    rel = _member_path(member.name)
                    out = staging / rel
                    if member.isdir():
                        out.mkdir(mode=0o755, parents=True, exist_ok=True)
                        continue
                    if not member.isreg():
                        kind = "link" if member.issym() or member.islnk() else "device or fifo"
                        raise UnsafeSource(
                            f"add-on entry {member.name!r} is a {kind}; only files and folders are accepted"
                        )
                    total += member.size
                    if total > limits.tree_bytes:
                        raise UnsafeSource(f"the add-on unpacks to more than {limits.tree_bytes} bytes")
                    out.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                    if out.is_dir():
                        raise UnsafeSource(f"add-on entry {member.name!r} is both a folder and a file")
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(out, "wb") as handle:
                        shutil.copyfileobj(source, handle)
                    os.chmod(out, 0o644)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
            raise UnsafeSource(f"the add-on layer is not a readable tar+gzip: {exc}") from None
        except OSError as exc:  # writing the files, not reading the layer (that is an in-memory buffer)
            raise disk_error("could not unpack the add-on into", target.parent, exc) from None
        if not (staging / "jobs").is_dir():
            raise UnsafeSource("the add-on holds no jobs/ folder")
        try:
            os.rename(staging, target)
        except OSError as exc:
            if not target.is_dir():  # another process extracted the same digest first: use theirs
                raise disk_error("could not unpack the add-on into", target.parent, exc) from None
            shutil.rmtree(staging, ignore_errors=True)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
