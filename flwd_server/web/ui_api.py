"""The dashboard: its page and assets under ``/ui/``, the API's front door ``/``, and ``/auth/me``.

The page is static files in ``web/ui/`` (no build step). Every page URL answers
``index.html`` with two placeholders filled in, ``{{base}}`` (where the page lives,
so relative URLs work at ``/`` and under a proxy's prefix) and ``{{dev}}``; the page
routes on the client. These routes need no token: the page holds no data until
the user signs in, and then calls the API like any client.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

from flask import Blueprint, Response, current_app, request

from .. import __version__
from ..errors import NotFound
from .access import principal
from .operations import AUTHENTICATED, PUBLIC, operation
from .render import json_response
from .schemas import json_reply, object_schema, problems

bp = Blueprint("ui", __name__)
UI_DIR = Path(__file__).resolve().parent / "ui"
ASSETS_DIR = UI_DIR / "assets"
# Explicit, not mimetypes': its answers vary with the host's /etc/mime.types and Python version.
ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".woff2": "font/woff2",
}
OTHER_ASSET_TYPE = "application/octet-stream"
# Listed one by one (client generators refuse */*), the text types first: they read the first they know.
ASSET_CONTENT = {
    media.split(";")[0]: {"schema": {"type": "string"}} for media in (*ASSET_TYPES.values(), OTHER_ASSET_TYPE)
}
HTML_PAGE = {"description": "The dashboard's page", "content": {"text/html": {"schema": {"type": "string"}}}}
INDEX_LINKS = {"ui": "/ui/", "openapi": "/openapi.json", "jobs": "/jobs", "runs": "/runs", "events": "/events"}
TO_UI = {"description": "To the dashboard: Location is the relative URL ui/"}


def page() -> Response:
    """``index.html`` with ``{{base}}`` and ``{{dev}}`` replaced, and nothing else."""
    text = (UI_DIR / "index.html").read_text(encoding="utf-8")
    base = html.escape(request.script_root + "/ui/", quote=True)
    dev = "true" if current_app.config["FLWD_DEV"] else "false"
    text = text.replace("{{base}}", base).replace("{{dev}}", dev)
    return Response(text, mimetype="text/html", headers={"Cache-Control": "no-cache"})


def to_ui() -> Response:
    """A 303 to the relative ``ui/``: a client resolves it against the URL it asked, so a proxy's prefix stays."""
    return Response(status=303, headers={"Location": "ui/"})


@bp.get("/")
@operation(
    PUBLIC,
    "Where things are; a browser (an Accept that prefers text/html) is sent to the dashboard instead",
    {
        "200": json_reply(
            object_schema(
                {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "links": object_schema({name: {"type": "string"} for name in INDEX_LINKS}, list(INDEX_LINKS)),
                },
                ["name", "version", "links"],
            )
        ),
        "303": TO_UI,
    },
    operation_id="getIndex",
)
def index() -> Response:
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        return to_ui()
    root = request.script_root
    return json_response(
        {"name": "flwd", "version": __version__, "links": {name: root + path for name, path in INDEX_LINKS.items()}}
    )


@bp.get("/ui")
@operation(PUBLIC, "The dashboard, at ui/", {"303": TO_UI}, operation_id="redirectToDashboard")
def ui_redirect() -> Response:
    return to_ui()


@bp.get("/ui/")
@operation(PUBLIC, "The dashboard (an HTML page)", {"200": HTML_PAGE}, operation_id="getDashboard")
def ui_index() -> Response:
    return page()


@bp.get("/ui/<path:where>")
@operation(
    PUBLIC,
    "A view of the dashboard (the same HTML page; it routes on the client)",
    {"200": HTML_PAGE, **problems(404)},
    operation_id="getDashboardView",
)
def ui_view(where: str) -> Response:
    if where.split("/", 1)[0] == "assets":
        raise NotFound(f"no such asset of the dashboard: {where}", asset=where)
    return page()


@bp.get("/ui/assets/<path:name>")
@operation(
    PUBLIC,
    "A file of the dashboard (script, style sheet, icon)",
    {"200": {"description": "The file", "content": ASSET_CONTENT}, **problems(404)},
    operation_id="getDashboardAsset",
)
def ui_asset(name: str) -> Response:
    path = (ASSETS_DIR / name).resolve()
    if not path.is_relative_to(ASSETS_DIR) or not path.is_file():
        raise NotFound(f"no such asset of the dashboard: assets/{name}", asset=f"assets/{name}")
    data = path.read_bytes()  # small files: read whole, so the ETag is their content's
    content_type = ASSET_TYPES.get(path.suffix.lower(), OTHER_ASSET_TYPE)
    response = Response(data, content_type=content_type, headers={"Cache-Control": "no-cache"})
    response.set_etag(hashlib.sha256(data).hexdigest()[:32])
    return response.make_conditional(request)


@bp.get("/auth/me")
@operation(
    AUTHENTICATED,
    "Who the token is: its subject and scopes (any valid token, no scope needed)",
    {
        "200": json_reply(
            object_schema(
                {
                    "subject": {"type": "string"},
                    "scopes": {"type": "array", "items": {"type": "string"}},
                    "dev": {"type": "boolean"},
                },
                ["subject", "scopes", "dev"],
            )
        )
    },
    operation_id="getCurrentPrincipal",
)
def me() -> Response:
    who = principal()
    return json_response(
        {"subject": who.subject, "scopes": sorted(who.scopes), "dev": bool(current_app.config["FLWD_DEV"])}
    )
