"""Plain WSGI entry point for gunicorn, uWSGI or mod_wsgi, loaded as ``flwd_server.wsgi:app``.

Configure it with ``FLWD_CONFIG=/etc/flwd/server.yaml`` and ``FLWD_*`` variables.
Like ``flwd :serve``, it refuses to load without a way to verify tokens, and
under uWSGI without threads.  ``threads`` (and so the stream cap) is what the
host runs (:mod:`.hosts`).  The app may be built in a process that then forks
its workers (uWSGI's default): the engine leaves no thread running here, and
each worker forgets what it inherited on its first request.
"""

import os

from ..auth.tokens import require_auth
from ..config import load_settings
from . import hosts
from .app import create_app

settings = hosts.adapt(load_settings(os.environ.get("FLWD_CONFIG") or None))
require_auth(settings)
app = create_app(settings)
app.config["FLWD_ENGINE"].park()
