"""The dashboard's live streams survive what happens to long connections, in a real browser: a
server-side close (sse.max_duration), a network drop, a proxy timeout and a server restart. After
each, the next runs' events reach the page with no gap and no duplicate: the ids the page handled
(window.flwd.streams) are exactly the ids the store has for those runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.browser import Browser, Cable
from tests.fixtures.nginx import SUBPATH_SITE, NginxProxy, start_nginx
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

TICKER = """name: ticker
description: Print numbered lines, a few a second
args:
  lines: {type: integer, default: 20, minimum: 1, maximum: 1000}
steps:
  - name: tick
    run: 'i=0; while [ "$i" -lt "$FLWD_ARG_LINES" ]; do i=$((i+1)); echo "tick $i"; sleep 0.1; done'
"""
MAX_DURATION = 2  # seconds: the server closes every stream this often
PROXY_READ_TIMEOUT = "1s"  # nginx closes a stream idle this long (the server's heartbeat is slower)


def start(root, config) -> ServerProcess:
    jobs = root / "ops" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "ticker.yaml").write_text(TICKER)
    sources = [{"type": "local", "name": "ops", "path": str(root / "ops")}]
    return ServerProcess(root, {"sources": sources, **config}, dev=True, env=None).start()


@pytest.fixture(scope="module")
def flwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Streams closed by the server every MAX_DURATION seconds; browsers asked to retry fast."""
    server = start(tmp_path_factory.mktemp("ui-reconnect"), {"sse": {"max_duration": MAX_DURATION, "retry_ms": 200}})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def quiet_flwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Long streams and slow heartbeats: only a proxy's read timeout closes them. Behind one proxy."""
    config = {"sse": {"heartbeat": 30, "retry_ms": 200}, "http": {"trusted_proxies": 1}}
    server = start(tmp_path_factory.mktemp("ui-quiet"), config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cable(flwd: ServerProcess) -> Iterator[Cable]:
    relay = Cable(flwd.port)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def proxy(quiet_flwd: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxy]:
    nginx = start_nginx(tmp_path_factory.mktemp("ui-nginx"), quiet_flwd.port, read_timeout=PROXY_READ_TIMEOUT)
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def subpath_proxy(quiet_flwd: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxy]:
    """etc/nginx/flwd-subpath.conf: flwd under /flwd/."""
    root = tmp_path_factory.mktemp("ui-nginx-subpath")
    nginx = start_nginx(root, quiet_flwd.port, site_file=SUBPATH_SITE, prefix="/flwd")
    yield nginx
    nginx.stop()


def live_runs_page(browser: Browser, url: str, server: ServerProcess | None = None) -> dict:
    """The runs page, its stream live and, given the server, caught up with every run.* event stored so
    far (the page replays the newest run's events first: a mark taken before that replay ends would
    count them as new)."""
    browser.sign_in(url + "/ui/")
    stream = browser.wait(lambda: live(browser, "runs"), message="the runs stream to be live")
    if server is None:
        return stream
    runs = server.get("/runs?limit=500").json()["runs"]
    stored = run_event_ids(server, [run["id"] for run in runs])
    if not stored:
        return stream
    return browser.wait(
        lambda: (s := browser.stream("runs")) and s["lastId"] >= stored[-1] and s,
        message="the runs stream to catch up with the store",
    )


def live(browser: Browser, name: str) -> dict | None:
    stream = browser.stream(name)
    return stream if stream and stream["state"] == "live" else None


def run_event_ids(server: ServerProcess, run_ids: list[str]) -> list[int]:
    """The ids of these runs' run.* events, from the store (the stream the runs list follows)."""
    ids = []
    for run_id in run_ids:
        ids += [int(e["id"]) for e in server.events(run_id) if e["event"].startswith("run.")]
    return sorted(ids)


def assert_next_runs_arrive_whole(
    browser: Browser,
    server: ServerProcess,
    mark: int,
    submit: Callable[[], list[str]] | None = None,
    again: bool = False,
) -> None:
    """Two runs (submitted by ``submit``, or now) reach the table as succeeded; the page handled each
    of their events exactly once and nothing else after ``mark`` (and, if ``again``, still so after
    the stream's next reconnect)."""
    run_ids = submit() if submit else [server.submit("ops:ticker", {"lines": 1})["id"] for _ in range(2)]
    for run_id in run_ids:
        browser.wait(
            lambda run_id=run_id: browser.find_all(f'#runs-table tr[data-run-id="{run_id}"][data-status="succeeded"]'),
            20,
            f"run {run_id} to show as succeeded",
        )
    expected = run_event_ids(server, run_ids)
    stream = browser.wait(lambda: (s := browser.stream("runs")) and s["lastId"] >= expected[-1] and s)
    if again:  # the streams are cut periodically: one more cut must not bring anything back twice
        stream = browser.wait(lambda: (s := browser.stream("runs"))["connects"] > stream["connects"] and s, 15)
    everything = stream["handled"]
    assert everything == sorted(set(everything)), f"an event was handled twice or out of order: {everything}"
    handled = [i for i in everything if i > mark]
    assert handled == expected, f"page handled {handled}, the store has {expected}"


def test_a_stream_closed_by_the_server_resumes_without_gap_or_duplicate(browser, flwd):
    stream = live_runs_page(browser, flwd.url, flwd)
    # The server ends every stream after MAX_DURATION: wait until the page has been cut and back twice.
    browser.wait(lambda: browser.stream("runs")["connects"] >= stream["connects"] + 2, 4 * MAX_DURATION + 5)
    assert_next_runs_arrive_whole(browser, flwd, browser.stream("runs")["lastId"], again=True)


def test_a_network_drop_resumes_without_gap_or_duplicate(browser, flwd, cable):
    stream = live_runs_page(browser, cable.url, flwd)
    mark = stream["lastId"]
    browser.driver.execute_cdp_cmd("Network.enable", {})
    offline = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    browser.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": True})
    cable.unplug()
    browser.wait(lambda: browser.stream("runs")["state"] == "reconnecting", message="the page to notice the drop")

    def while_offline() -> list[str]:
        # Submitted to the server directly, and finished, while the page cannot hear of them.
        ids = [flwd.submit("ops:ticker", {"lines": 1})["id"] for _ in range(2)]
        for run_id in ids:
            flwd.wait_finished(run_id)
        assert browser.find_all(f'#runs-table tr[data-run-id="{ids[0]}"]') == []
        browser.driver.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": False})
        cable.plug()
        return ids

    assert_next_runs_arrive_whole(browser, flwd, mark, while_offline)


def test_a_run_page_resumes_its_output_after_a_network_drop(browser, flwd, cable):
    run = flwd.submit("ops:ticker", {"lines": 30})
    browser.open(f"{cable.url}/ui/runs/{run['id']}")
    browser.wait(lambda: int(browser.find(".log").get_attribute("data-lines")) >= 5, message="the first lines")
    cable.unplug()
    browser.wait(lambda: browser.stream("run")["state"] == "reconnecting", message="the page to notice the drop")
    browser.wait(lambda: flwd.run_status(run["id"]) == "succeeded", 20, "the run to finish while the page is cut off")
    cable.plug()
    browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 20, "the run page to show succeeded")
    expected = [int(e["id"]) for e in flwd.events(run["id"])]
    stream = browser.stream("run")
    assert stream["handled"] == expected and stream["handledCount"] == len(expected)
    # 30 output lines, and a line each for the step's start and end.
    assert browser.find(".log").get_attribute("data-lines") == "32"


@pytest.mark.nginx
def test_a_proxy_timeout_resumes_without_gap_or_duplicate(browser, quiet_flwd, proxy):
    stream = live_runs_page(browser, proxy.url, quiet_flwd)
    browser.wait(lambda: browser.stream("runs")["connects"] >= stream["connects"] + 2, 15, "nginx to cut the stream")
    assert "upstream timed out" in proxy.logs()
    assert_next_runs_arrive_whole(browser, quiet_flwd, browser.stream("runs")["lastId"], again=True)


def test_a_server_restart_resumes_without_gap_or_duplicate(browser, flwd):
    stream = live_runs_page(browser, flwd.url, flwd)
    mark = stream["lastId"]
    flwd.stop()
    browser.wait(lambda: browser.stream("runs")["state"] == "reconnecting", message="the page to notice the stop")

    def after_restart() -> list[str]:
        flwd.start()  # the same port and database
        return [flwd.submit("ops:ticker", {"lines": 1})["id"] for _ in range(2)]

    assert_next_runs_arrive_whole(browser, flwd, mark, after_restart)


@pytest.mark.nginx
def test_the_dashboard_works_under_a_proxys_sub_path(browser, quiet_flwd, subpath_proxy):
    live_runs_page(browser, subpath_proxy.url + "/flwd")
    run = quiet_flwd.submit("ops:ticker", {"lines": 2})
    browser.click(f'#runs-table tr[data-run-id="{run["id"]}"] a', 10, "the new run's link")
    page = f"{subpath_proxy.url}/flwd/ui/runs/{run['id']}"
    browser.wait(lambda: browser.driver.current_url == page, 10, f"the browser to open {page}")
    browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 15, "the run to succeed")
    browser.wait(lambda: "tick 2" in browser.find(".log").text, message="its output, streamed through the prefix")
