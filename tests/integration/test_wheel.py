"""The wheel holds the dashboard: built from this tree, installed (not editable) into a fresh venv, served.

An editable install reads ``web/ui/`` from the source tree, so only a real wheel shows
whether ``[options.package_data]`` ships the page and its assets. The wheel is built
from a copy of the tree (the build writes ``build/`` and ``*.egg-info`` next to the
sources) and installed without its dependencies into a venv whose only other path is
the site-packages that already hold them (a ``.pth`` line): the package itself comes
from the wheel alone, and nothing is downloaded but pip's build backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import flask
import requests

from tests.fixtures.server import REPO, ServerProcess

COPY_IGNORES = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache")


def build_wheel(work: Path) -> Path:
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*COPY_IGNORES))
    dist = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source), "-w", str(dist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = dist.glob("flwd-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = Path(flask.__file__).resolve().parents[1]  # where this environment keeps Flask and the rest
    assert dependencies == Path(sysconfig.get_path("purelib")).resolve()
    (Path(purelib) / "flwd-test-dependencies.pth").write_text(f"{dependencies}\n")
    return python


def test_the_installed_wheel_serves_the_dashboard_and_its_assets(tmp_path):
    wheel = build_wheel(tmp_path / "build")
    python = install(wheel, tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import flwd_server.web.ui_api as m; print(m.UI_DIR)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # the wheel's copy, not this tree's

    server = ServerProcess(tmp_path / "server", {}, dev=True, env={"PYTHONPATH": ""})
    server.command = [str(tmp_path / "venv" / "bin" / "flwd")]
    server.start()
    try:
        page = requests.get(server.url + "/ui/", timeout=10)
        assert page.status_code == 200, page.text
        assert '<base href="/ui/">' in page.text and '<meta name="flwd-dev" content="true">' in page.text
        script = requests.get(server.url + "/ui/assets/app.js", timeout=10)
        assert script.status_code == 200 and script.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert script.content == (Path(where) / "assets" / "app.js").read_bytes()
        assert requests.get(server.url + "/healthz", timeout=10).json()["status"] == "ok"
    finally:
        server.stop()
