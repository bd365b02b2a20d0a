"""The dashboard's server side: the page and its assets, the front door ``/`` and ``/auth/me``."""

from __future__ import annotations

import re

import pytest

from flwd_server.auth.scopes import SCOPES
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
