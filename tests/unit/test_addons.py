"""The add-on artifact: deterministic packing, and extraction that trusts nothing in the tar."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from flwd_server.containers.addons import (
    ARTIFACT_TYPE,
    CONFIG_TYPE,
    LAYER_TYPE,
    Limits,
    addon_layer,
    extract,
    manifest_for,
    pack,
)
from flwd_server.containers.registry_client import Manifest, sha256_digest
from flwd_server.errors import StorageError, UnsafeSource
from tests.fixtures.mounts import need_root_mounts, read_only_bind


def make_folder(root: Path) -> Path:
    (root / "jobs" / "nested").mkdir(parents=True)
    (root / "jobs" / "a.yaml").write_text("name: a\nsteps: [{run: 'true'}]\n")
    (root / "jobs" / "nested" / "b.yml").write_text("name: b\nsteps: [{run: 'true'}]\n")
    (root / "jobs" / "notes.txt").write_text("not a job\n")
    (root / "jobs" / ".hidden.yaml").write_text("ignored\n")
    (root / "secret.env").write_text("TOKEN=never-published\n")
    return root


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buf.getvalue())


def entry(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def test_packing_is_deterministic_and_carries_only_the_jobs_tree(tmp_path):
    folder = make_folder(tmp_path / "src")
    first, summary = pack(folder)
    os.utime(folder / "jobs" / "a.yaml", (1, 1))  # timestamps do not change the digest
    second, _ = pack(folder)
    assert sha256_digest(first) == sha256_digest(second)
    assert summary == {"files": 3, "jobs": 2, "bytes": summary["bytes"]}
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        names = tar.getnames()
    assert names == ["jobs", "jobs/a.yaml", "jobs/notes.txt", "jobs/nested", "jobs/nested/b.yml"]
    out = extract(first, tmp_path / "out")
    assert (out / "jobs" / "nested" / "b.yml").read_text().startswith("name: b")
    assert not (out / "secret.env").exists()


def test_the_manifest_names_the_flwd_types(tmp_path):
    layer, summary = pack(make_folder(tmp_path / "src"))
    raw, config = manifest_for(layer, summary)
    manifest = Manifest(sha256_digest(raw), "application/vnd.oci.image.manifest.v1+json", raw, json.loads(raw))
    assert manifest.data["artifactType"] == ARTIFACT_TYPE and manifest.data["config"]["mediaType"] == CONFIG_TYPE
    assert addon_layer(manifest, "x")["digest"] == sha256_digest(layer)
    assert manifest.data["layers"][0]["mediaType"] == LAYER_TYPE


def test_a_plain_image_is_not_an_addon():
    data = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": [],
    }
    with pytest.raises(UnsafeSource, match="not a flwd add-on"):
        addon_layer(Manifest("sha256:" + "0" * 64, data["mediaType"], b"", data), "registry/x@sha256:0")


def test_packing_refuses_symlinks(tmp_path):
    folder = make_folder(tmp_path / "src")
    (folder / "jobs" / "link.yaml").symlink_to(folder / "secret.env")
    with pytest.raises(UnsafeSource, match="symlink"):
        pack(folder)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(entry("/etc/evil.yaml"), b"x")], "outside"),
        ([(entry("jobs/../../evil.yaml"), b"x")], "outside"),
        ([(entry("../jobs/x.yaml"), b"x")], "outside"),
        ([(entry("elsewhere/x.yaml"), b"x")], "outside jobs/"),
        (
            [
                (entry("jobs", tarfile.DIRTYPE), None),
                (entry("jobs/link.yaml", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
            ],
            "link",
        ),
        (
            [
                (entry("jobs", tarfile.DIRTYPE), None),
                (entry("jobs/hard.yaml", tarfile.LNKTYPE, linkname="jobs/a.yaml"), None),
            ],
            "link",
        ),
        (
            [
                (entry("jobs", tarfile.DIRTYPE), None),
                (entry("jobs/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None),
            ],
            "device",
        ),
        ([(entry("jobs", tarfile.DIRTYPE), None), (entry("jobs/fifo", tarfile.FIFOTYPE), None)], "device or fifo"),
        ([(entry("readme.txt"), b"no jobs here")], "outside jobs/"),
    ],
    ids=[
        "absolute",
        "dotdot-inside",
        "dotdot-first",
        "outside-jobs",
        "symlink",
        "hardlink",
        "device",
        "fifo",
        "no-jobs",
    ],
)
def test_extraction_refuses_what_could_escape_or_surprise(tmp_path, members, message):
    with pytest.raises(UnsafeSource, match=message):
        extract(tar_of(*members), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # the staging folder went too
    assert not Path("/etc/evil.yaml").exists()


def test_extraction_caps_the_unpacked_size(tmp_path):
    bomb = tar_of((entry("jobs", tarfile.DIRTYPE), None), (entry("jobs/big.yaml"), b"\0" * 5000))
    with pytest.raises(UnsafeSource, match="more than 4096 bytes"):
        extract(bomb, tmp_path / "out", Limits(tree_bytes=4096))
    assert not (tmp_path / "out").exists()


def test_extraction_caps_the_entry_count(tmp_path):
    many = tar_of((entry("jobs", tarfile.DIRTYPE), None), *[(entry(f"jobs/{i}.yaml"), b"x") for i in range(20)])
    with pytest.raises(UnsafeSource, match="more than 10 entries"):
        extract(many, tmp_path / "out", Limits(entries=10))


def test_a_layer_that_is_not_tar_gzip_is_refused(tmp_path):
    with pytest.raises(UnsafeSource, match="not a readable"):
        extract(b"definitely not gzip", tmp_path / "out")


def test_extracted_files_get_plain_modes(tmp_path):
    layer = tar_of(
        (entry("jobs", tarfile.DIRTYPE, mode=0o777), None), (entry("jobs/x.yaml", mode=0o4777), b"name: x\n")
    )
    out = extract(layer, tmp_path / "out")
    assert (out / "jobs" / "x.yaml").stat().st_mode & 0o7777 == 0o644


def test_a_folder_that_cannot_be_written_is_a_storage_error_not_a_bad_add_on(tmp_path):
    need_root_mounts()
    layer = tar_of((entry("jobs", tarfile.DIRTYPE), None), (entry("jobs/x.yaml"), b"name: x\n"))
    root = tmp_path / "addons"
    root.mkdir()
    with read_only_bind(root), pytest.raises(StorageError) as raised:
        extract(layer, root / "digest")
    assert raised.value.detail == f"could not unpack the add-on into {root}: read-only file system"
    assert raised.value.status == 503
    assert (extract(layer, root / "digest") / "jobs" / "x.yaml").read_text() == "name: x\n"  # writable again
