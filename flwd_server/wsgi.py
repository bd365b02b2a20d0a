"""The WSGI entry point under its historical name: ``flwd_server.wsgi:app`` (see :mod:`flwd_server.web.wsgi`)."""

from .web.wsgi import app

__all__ = ["app"]
