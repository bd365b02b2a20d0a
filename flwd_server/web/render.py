"""JSON responses and links, rendered one way."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(data, ensure_ascii=False) + "\n", status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def base_url() -> str:
    """Links are relative to where the app is mounted, so they work behind any proxy."""
    return request.script_root
