"""flwd under a sub-path behind real nginx with TLS (etc/nginx/flwd-subpath.conf, ``/flwd/``), with
``http.trusted_proxies: 1``: the dashboard's base, its assets, the API and an event stream on a ticket."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin

import pytest
import requests

from tests.fixtures.helpers import sse_events
from tests.fixtures.nginx import SUBPATH_SITE, NginxProxy, start_nginx
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.nginx

PREFIX = "/flwd"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def flwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {"sse": {"heartbeat": 0.5}, "http": {"trusted_proxies": 1}}
    server = ServerProcess(tmp_path_factory.mktemp("flwd-under-a-prefix"), config, dev=True, env=None).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(flwd: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxy]:
    nginx = start_nginx(tmp_path_factory.mktemp("nginx-subpath"), flwd.port, site_file=SUBPATH_SITE, prefix=PREFIX)
    yield nginx
    nginx.stop()


def https(proxy: NginxProxy, method: str, path: str, token: str | None = "dev-token", **kwargs) -> requests.Response:
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **kwargs.pop("headers", {})}
    return requests.request(
        method,
        proxy.url + path,
        headers=headers,
        verify=str(proxy.cert),
        timeout=kwargs.pop("timeout", 10),
        allow_redirects=False,
        **kwargs,
    )


def test_the_dashboard_under_the_prefix_has_its_base_there_and_its_assets_load(proxy):
    page = https(proxy, "GET", f"{PREFIX}/ui/", token=None)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    html = page.text
    base = re.search(r'<base href="([^"]*)">', html)
    assert base and base.group(1) == f"{PREFIX}/ui/"
    assets = re.findall(r'(?:src|href)="(assets/[^"]+)"', html)
    assert assets, html
    for asset in assets:  # relative URLs, resolved against the base as a browser does
        url = urljoin(proxy.url + base.group(1), asset)
        assert url.startswith(f"{proxy.url}{PREFIX}/ui/assets/")
        loaded = requests.get(url, verify=str(proxy.cert), timeout=10)
        assert loaded.status_code == 200, url
        assert loaded.headers["Cache-Control"] == "no-cache" and loaded.headers["ETag"]
    view = https(proxy, "GET", f"{PREFIX}/ui/runs/0123", token=None)
    assert view.status_code == 200 and f'<base href="{PREFIX}/ui/">' in view.text


def test_the_way_in_keeps_the_prefix(proxy):
    bare = https(proxy, "GET", PREFIX, token=None)
    assert bare.status_code == 301 and bare.headers["Location"].endswith(f"{PREFIX}/")
    browser = https(proxy, "GET", f"{PREFIX}/", token=None, headers={"Accept": BROWSER_ACCEPT})
    assert browser.status_code == 303 and browser.headers["Location"] == "ui/"
    assert urljoin(f"{proxy.url}{PREFIX}/", browser.headers["Location"]) == f"{proxy.url}{PREFIX}/ui/"
    ui = https(proxy, "GET", f"{PREFIX}/ui", token=None)
    assert ui.status_code == 303 and urljoin(f"{proxy.url}{PREFIX}/ui", ui.headers["Location"]) == (
        f"{proxy.url}{PREFIX}/ui/"
    )
    index = https(proxy, "GET", f"{PREFIX}/", token=None).json()
    assert index["links"]["ui"] == f"{PREFIX}/ui/" and index["links"]["jobs"] == f"{PREFIX}/jobs"


def test_the_api_and_a_runs_stream_on_a_ticket_work_under_the_prefix(proxy):
    jobs = https(proxy, "GET", f"{PREFIX}/jobs")
    assert jobs.status_code == 200 and "hello-world" in [job["name"] for job in jobs.json()["jobs"]]
    me = https(proxy, "GET", f"{PREFIX}/auth/me")
    assert me.status_code == 200 and "runs:read" in me.json()["scopes"]
    run = https(proxy, "POST", f"{PREFIX}/runs", json={"job": "hello-world", "args": {"name": "Prefix"}})
    assert run.status_code == 202, run.text
    run_id = run.json()["run"]["id"]
    assert run.json()["run"]["links"]["events"] == f"{PREFIX}/runs/{run_id}/events"  # links keep the prefix
    ticket = https(proxy, "POST", f"{PREFIX}/stream-tickets", json={"run": run_id})
    assert ticket.status_code == 201, ticket.text
    url = f"{proxy.url}{PREFIX}/runs/{run_id}/events?ticket={ticket.json()['ticket']}"
    with requests.get(url, verify=str(proxy.cert), stream=True, timeout=(5, 30)) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        types = [e["event"] for e in sse_events(response.iter_lines(chunk_size=None)) if "event" in e]
    assert types[-1] == "run.finished" and "step.output" in types
