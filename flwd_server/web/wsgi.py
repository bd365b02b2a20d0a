"""Plain WSGI entry point for gunicorn, uWSGI or mod_wsgi, loaded as ``flwd_server.wsgi:app``.

Configure it with ``FLWD_CONFIG=/etc/flwd/server.yaml`` and ``FLWD_*`` variables.
Like ``flwd :serve``, it refuses to load without a way to verify tokens.
"""

import os

from ..auth.tokens import require_auth
from ..config import load_settings
from .app import create_app

settings = load_settings(os.environ.get("FLWD_CONFIG") or None)
require_auth(settings)
app = create_app(settings)
