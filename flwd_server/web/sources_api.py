"""Sources: list, register (local, git), show with each job file's errors, remove, sync."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..auth.scopes import Scope
from ..sources.registry import SPEC_FIELDS
from .access import principal
from .bodies import json_body, no_body
from .operations import operation
from .render import base_url, json_response
from .schemas import NULLABLE_STR, json_reply, json_request, object_schema, problems, ref

bp = Blueprint("sources", __name__)
SOURCE_REPLY = object_schema({"source": ref("Source")}, ["source"])


def _engine():
    return current_app.config["FLWD_ENGINE"]


@bp.get("/sources")
@operation(
    Scope.SOURCES_READ,
    "List sources with their revisions, jobs and job-file errors",
    {"200": json_reply(object_schema({"sources": {"type": "array", "items": ref("Source")}}, ["sources"]))},
    operation_id="listSources",
)
def list_sources() -> Response:
    return json_response({"sources": _engine().sources()})


@bp.post("/sources")
@operation(
    Scope.SOURCES_WRITE,
    "Register a source (a git source is fetched first)",
    {"201": json_reply(SOURCE_REPLY, "Created"), **problems(400, 409, 413, 415, 422, 503)},
    request_body=json_request(ref("SourceRequest")),
    operation_id="addSource",
)
def add_source() -> Response:
    source = _engine().add_source(json_body(SPEC_FIELDS), principal())
    return json_response({"source": source}, status=201, headers={"Location": f"{base_url()}/sources/{source['name']}"})


@bp.get("/sources/<name>")
@operation(
    Scope.SOURCES_READ,
    "One source, each job file's error with its path and line",
    {"200": json_reply(SOURCE_REPLY), **problems(404)},
    operation_id="getSource",
)
def get_source(name: str) -> Response:
    return json_response({"source": _engine().source(name)})


@bp.delete("/sources/<name>")
@operation(
    Scope.SOURCES_WRITE,
    "Remove a source registered over the API (bundled and config sources: 409)",
    {"204": {"description": "Removed"}, **problems(404, 409, 413, 415, 503)},
    operation_id="removeSource",
)
def remove_source(name: str) -> Response:
    no_body()
    _engine().remove_source(name, principal())
    return Response(status=204)


@bp.post("/sources/<name>/sync")
@operation(
    Scope.SOURCES_WRITE,
    "Fetch (git) or rescan (local) a source now",
    {
        "200": json_reply(
            object_schema(
                {"source": ref("Source"), "previous_revision": NULLABLE_STR, "changed": {"type": "boolean"}},
                ["source", "previous_revision", "changed"],
            )
        ),
        **problems(404, 413, 415, 502, 503),
    },
    operation_id="syncSource",
)
def sync_source(name: str) -> Response:
    no_body()
    return json_response(_engine().sync_source(name, principal()))
