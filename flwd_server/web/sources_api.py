"""Sources: list, register (local, git), show with each job file's errors, remove, sync."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from ..sources.registry import SPEC_FIELDS
from .access import principal, requires
from .bodies import json_body
from .render import base_url, json_response

bp = Blueprint("sources", __name__)


def _engine():
    return current_app.config["FLWD_ENGINE"]


@bp.get("/sources")
@requires("sources:read")
def list_sources() -> Response:
    return json_response({"sources": _engine().sources()})


@bp.post("/sources")
@requires("sources:write")
def add_source() -> Response:
    source = _engine().add_source(json_body(SPEC_FIELDS), principal())
    return json_response({"source": source}, status=201, headers={"Location": f"{base_url()}/sources/{source['name']}"})


@bp.get("/sources/<name>")
@requires("sources:read")
def get_source(name: str) -> Response:
    return json_response({"source": _engine().source(name)})


@bp.delete("/sources/<name>")
@requires("sources:write")
def remove_source(name: str) -> Response:
    _engine().remove_source(name, principal())
    return Response(status=204)


@bp.post("/sources/<name>/sync")
@requires("sources:write")
def sync_source(name: str) -> Response:
    return json_response(_engine().sync_source(name, principal()))
