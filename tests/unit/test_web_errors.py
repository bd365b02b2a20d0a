"""Every error is application/problem+json, whatever raised it."""

from __future__ import annotations

import pytest

from flwd_server.web.app import create_app

AUTH = {"Authorization": "Bearer dev-token"}


@pytest.fixture
def client(make_settings):
    app = create_app(make_settings(dev=True))
    yield app.test_client(), app.config["FLWD_ENGINE"]
    app.config["FLWD_ENGINE"].close(grace=0)


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("post", "/runs", {**AUTH, "Content-Type": "application/json"}, 400),
        ("get", "/jobs", {}, 401),
        ("get", "/jobs", {"Authorization": "Bearer nope"}, 401),
        ("get", "/nowhere", AUTH, 404),
        ("put", "/jobs", AUTH, 405),
        ("post", "/runs", {**AUTH, "Content-Type": "text/plain"}, 415),
    ],
)
def test_client_errors_are_problems(client, method, path, headers, status):
    test_client, _ = client
    response = getattr(test_client, method)(path, headers=headers, data=b"{")
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == status


def test_an_unexpected_error_is_a_500_problem_without_a_traceback(client, monkeypatch):
    test_client, engine = client

    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail at /srv/flwd/thing.py line 42")

    monkeypatch.setattr(engine, "jobs_document", explode)
    response = test_client.get("/jobs", headers=AUTH)
    assert response.status_code == 500 and response.mimetype == "application/problem+json"
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_405_keeps_its_allow_header(client):
    test_client, _ = client
    response = test_client.delete("/plans", headers=AUTH)
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


def test_every_response_carries_a_request_id(client):
    test_client, _ = client
    assert len(test_client.get("/healthz").headers["X-Request-ID"]) >= 8
    assert test_client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    assert test_client.get("/healthz", headers={"X-Request-ID": "bad id\x01"}).headers["X-Request-ID"] != "bad id\x01"
