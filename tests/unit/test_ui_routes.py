"""The dashboard's server side: the page and its assets, the front door ``/`` and ``/auth/me``."""

from __future__ import annotations

import re

import pytest
from flask import request

from flwd_server.auth.scopes import SCOPES
from flwd_server.models import RunStatus
from flwd_server.web.operations import PUBLIC, operation
from flwd_server.web.ui_api import UI_DIR

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def base_and_dev(html: str) -> tuple[str, str]:
    base = re.search(r'<base href="([^"]*)">', html)
    dev = re.search(r'<meta name="flwd-dev" content="([^"]*)">', html)
    assert base and dev, html
    return base.group(1), dev.group(1)


@pytest.mark.parametrize("path", ["/ui/", "/ui/runs", "/ui/runs/0123abcd", "/ui/jobs/local:hello", "/ui/sources"])
def test_every_page_url_answers_the_page_with_its_placeholders_filled(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    text = response.get_data(as_text=True)
    assert base_and_dev(text) == ("/ui/", "true")
    assert "{{" not in text
    # Nothing but the two placeholders changes: the file with them filled in is the answer, byte for byte.
    source = (UI_DIR / "index.html").read_text(encoding="utf-8")
    assert text == source.replace("{{base}}", "/ui/").replace("{{dev}}", "true")


def test_the_base_is_the_mount_point_html_escaped(app):
    response = app.test_client().get("/ui/", environ_overrides={"SCRIPT_NAME": '/a"<b>&c'})
    assert base_and_dev(response.get_data(as_text=True))[0] == "/a&quot;&lt;b&gt;&amp;c/ui/"


def test_ui_without_a_slash_is_sent_to_ui_slash_relatively(app):
    response = app.test_client().get("/ui")
    assert response.status_code == 303
    assert response.headers["Location"] == "ui/"  # relative: resolved against /ui (or /prefix/ui) it is .../ui/


def test_an_asset_has_its_type_an_etag_and_no_cache(app):
    client = app.test_client()
    response = client.get("/ui/assets/app.js")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    etag = response.headers["ETag"]
    assert response.get_data() == (UI_DIR / "assets" / "app.js").read_bytes()
    again = client.get("/ui/assets/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path", ["/ui/assets/nope.js", "/ui/assets/", "/ui/assets/../index.html", "/ui/assets/%2e%2e/index.html"]
)
def test_an_unknown_asset_is_a_404_problem(app, path):
    response = app.test_client().get(path)
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


def test_auth_me_names_the_tokens_subject_and_scopes_and_needs_no_scope(app):
    client = app.test_client()
    response = client.get("/auth/me", headers={"Authorization": "Bearer dev-token"})
    assert response.status_code == 200
    body = response.get_json()
    assert body == {"subject": body["subject"], "scopes": sorted(SCOPES), "dev": True}
    assert body["subject"]


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic eDp5"])
def test_auth_me_without_a_valid_token_is_a_401_problem(app, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = app.test_client().get("/auth/me", headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "text/html", "application/json;q=0.5, text/html"])
def test_a_browser_at_the_root_is_sent_to_the_dashboard(app, accept):
    response = app.test_client().get("/", headers={"Accept": accept})
    assert response.status_code == 303
    assert response.headers["Location"] == "ui/"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.9"])
def test_any_other_client_at_the_root_gets_the_json_index(app, accept):
    headers = {"Accept": accept} if accept else {}
    response = app.test_client().get("/", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["name"] == "flwd" and body["version"]
    assert body["links"] == {
        "ui": "/ui/",
        "openapi": "/openapi.json",
        "jobs": "/jobs",
        "runs": "/runs",
        "events": "/events",
    }


CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'self'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'"
)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/healthz", {}),
        ("GET", "/jobs", {}),  # a 401
        ("GET", "/jobs", {"Authorization": "Bearer dev-token"}),
        ("GET", "/no-such-endpoint", {}),
        ("DELETE", "/healthz", {}),  # a 405
        ("OPTIONS", "/jobs", {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}),
        ("GET", "/", {}),
        ("GET", "/jobs", {"Host": "evil.example"}),  # the --dev Host check's 421
    ],
)
def test_every_response_forbids_sniffing_and_referrers(app, method, path, headers):
    response = app.test_client().open(path, method=method, headers=headers)
    assert response.headers["X-Content-Type-Options"] == "nosniff", response.status
    assert response.headers["Referrer-Policy"] == "no-referrer", response.status
    assert "Content-Security-Policy" not in response.headers  # the API's JSON is not a page


@pytest.mark.parametrize("path", ["/ui", "/ui/", "/ui/runs/x", "/ui/assets/app.js", "/ui/assets/nope.css"])
def test_the_dashboards_responses_hold_it_to_its_own_files_and_refuse_frames(app, path):
    response = app.test_client().get(path)
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.fixture
def proxied_app(make_settings):
    """An app behind one trusted proxy (``http.trusted_proxies: 1``)."""
    from flwd_server.engine import Engine
    from flwd_server.web.app import create_app

    eng = Engine(make_settings(dev=True, **{"http.trusted_proxies": 1}))
    yield create_app(engine=eng)
    eng.close(grace=0)


FORWARDED = {
    "X-Forwarded-Prefix": "/flwd",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "localhost",
}


def test_behind_a_trusted_proxy_the_prefix_is_the_pages_base_and_the_indexs_links(proxied_app):
    client = proxied_app.test_client()
    page = client.get("/ui/runs/x", headers=FORWARDED)
    assert base_and_dev(page.get_data(as_text=True))[0] == "/flwd/ui/"
    index = client.get("/", headers=FORWARDED).get_json()
    assert index["links"]["ui"] == "/flwd/ui/" and index["links"]["events"] == "/flwd/events"
    # The redirects stay relative, so the browser keeps the prefix it asked under.
    assert client.get("/", headers={**FORWARDED, "Accept": BROWSER_ACCEPT}).headers["Location"] == "ui/"
    assert client.get("/ui", headers=FORWARDED).headers["Location"] == "ui/"
    # Without the headers the same app is at the root.
    assert base_and_dev(client.get("/ui/").get_data(as_text=True))[0] == "/ui/"


def test_behind_a_trusted_proxy_the_clients_address_and_scheme_are_the_forwarded_ones(proxied_app):
    @proxied_app.get("/whoami-test")
    @operation(PUBLIC, "What the app sees of the client", {"200": {"description": "OK"}}, operation_id="getWhoami")
    def whoami() -> str:
        return f"{request.remote_addr} {request.scheme} {request.host} {request.script_root}"

    answer = proxied_app.test_client().get("/whoami-test", headers=FORWARDED).get_data(as_text=True)
    assert answer == "203.0.113.7 https localhost /flwd"


def test_without_trusted_proxies_forwarded_headers_are_ignored(app):
    client = app.test_client()
    page = client.get("/ui/", headers=FORWARDED)
    assert base_and_dev(page.get_data(as_text=True))[0] == "/ui/"
    assert client.get("/", headers=FORWARDED).get_json()["links"]["ui"] == "/ui/"


def test_the_dashboard_knows_every_run_status_and_no_other():
    """dom.js declares the statuses once for the badges and the filter; they are the server's."""
    dom = (UI_DIR / "assets" / "dom.js").read_text()
    declared = re.search(r"export const STATUSES = \[(.*?)\];", dom, re.S)
    assert declared is not None
    assert sorted(re.findall(r'"([a-z_]+)"', declared.group(1))) == sorted(s.value for s in RunStatus)
