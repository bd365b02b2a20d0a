"""Plain WSGI entry point for gunicorn, uWSGI or mod_wsgi: ``flwd_server.wsgi:app``.

Configure it with ``FLWD_CONFIG=/etc/flwd/server.yaml`` and ``FLWD_*`` variables.
"""

from .app import create_app

app = create_app()
