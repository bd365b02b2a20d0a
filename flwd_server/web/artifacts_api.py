"""A run's artifacts: ``GET /runs/ID/artifacts`` lists them, ``GET /runs/ID/artifacts/PATH`` serves one.

A path is only ever looked up among the run's recorded artifacts, never joined to
a directory, so no spelling of a path (``..``, encoded slashes, an absolute path)
reaches another file: what is not recorded is a 404.  Files are served as
downloads that no browser renders (``application/octet-stream``, ``nosniff``,
``Content-Disposition: attachment``), with the digest as a strong ``ETag`` and
single byte ranges.
"""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import wrap_file

from ..auth.scopes import Scope
from .access import principal
from .operations import operation
from .render import base_url, json_response
from .schemas import json_reply, object_schema, problems, ref

bp = Blueprint("artifacts", __name__)
ARTIFACT_LIST = object_schema({"artifacts": {"type": "array", "items": ref("Artifact")}}, ["artifacts"])
DOWNLOAD = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _engine():
    return current_app.config["FLWD_ENGINE"]


def content_disposition(path: str) -> str:
    """``attachment`` with the file's last name: an ASCII fallback and RFC 6266's ``filename*`` in UTF-8."""
    name = path.rsplit("/", 1)[-1] or "artifact"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@bp.get("/runs/<run_id>/artifacts")
@operation(
    Scope.RUNS_READ,
    "A run's artifacts: the files it left in $FLWD_ARTIFACTS, by path",
    {"200": json_reply(ARTIFACT_LIST), **problems(404)},
    operation_id="listRunArtifacts",
)
def list_artifacts(run_id: str) -> Response:
    root = f"{base_url()}/runs/{quote(run_id, safe='')}/artifacts/"
    artifacts = [
        {**artifact.to_dict(), "links": {"self": root + quote(artifact.path)}}
        for artifact in _engine().artifacts(run_id, principal())
    ]
    return json_response({"artifacts": artifacts})


@bp.get("/runs/<run_id>/artifacts/<path:path>")
@operation(
    Scope.RUNS_READ,
    "Download one artifact (a single byte range with Range; the ETag is its sha256)",
    {
        "200": {"description": "The file", "content": DOWNLOAD},
        "206": {"description": "The range asked for", "content": DOWNLOAD},
        "304": {"description": "Not modified (If-None-Match)"},
        **problems(404, 416, 503),
    },
    parameters=[
        {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
        {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
    ],
    operation_id="getRunArtifact",
)
def get_artifact(run_id: str, path: str) -> Response:
    artifact, handle = _engine().artifact(run_id, path, principal())
    try:
        response = Response(
            wrap_file(request.environ, handle), mimetype="application/octet-stream", direct_passthrough=True
        )
        response.content_length = artifact.size
        response.set_etag(artifact.sha256)
        response.headers["Content-Disposition"] = content_disposition(artifact.path)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "private, no-cache"
        response = response.make_conditional(request, accept_ranges=True, complete_length=artifact.size)
    except HTTPException:  # 416: nothing will read the file
        handle.close()
        raise
    if response.status_code == 304:
        handle.close()
    return response
