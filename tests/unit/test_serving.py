"""How ``flwd :serve`` configures its embedded gunicorn."""

from __future__ import annotations

import gc

import pytest
from gunicorn.workers.gthread import ThreadWorker

from flwd_server.config import PARKED_STREAMS
from flwd_server.web.serving import FlwdServer
from flwd_server.web.worker import FlwdWorker, head_complete


def test_the_master_freezes_its_objects_before_each_fork(make_settings):
    """Workers' collections must not walk (and so copy) the master's objects: PSS stays shared."""
    server = FlwdServer(make_settings())
    hook = server.cfg.pre_fork
    assert gc.get_freeze_count() == 0
    try:
        hook(None, None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_workers_are_never_recycled_and_outlive_the_shutdown_grace(make_settings):
    settings = make_settings(shutdown_grace=20)
    cfg = FlwdServer(settings).cfg
    assert cfg.max_requests == 0 and cfg.worker_class is FlwdWorker and issubclass(FlwdWorker, ThreadWorker)
    assert cfg.graceful_timeout > settings.shutdown_grace


def test_flwd_serve_holds_1000_streams_a_worker_by_default_and_the_connections_for_them(make_settings):
    """A handed-off stream holds no thread: the cap is not threads - 4 under flwd :serve."""
    server = FlwdServer(make_settings(threads=32))
    assert server.settings.sse_max_streams == PARKED_STREAMS == 1000
    assert server.cfg.worker_connections >= PARKED_STREAMS + 1000  # the streams, and as many others
    # Where streams hold threads (the broadcaster off), or a cap is set, the settings stand.
    assert FlwdServer(make_settings(threads=32, sse={"broadcast": False})).settings.sse_max_streams == 28
    assert FlwdServer(make_settings(sse={"max_streams": 7})).settings.sse_max_streams == 7
    assert make_settings(threads=32).sse_max_streams == 28  # uWSGI, mod_wsgi: one thread a stream


def test_the_worker_refuses_tls_it_would_read_heads_before_the_handshake(make_settings):
    cfg = FlwdServer(make_settings()).cfg
    FlwdWorker.check_config(cfg, None)
    cfg.set("certfile", "/etc/ssl/flwd/fullchain.pem")
    with pytest.raises(RuntimeError, match="plain HTTP"):
        FlwdWorker.check_config(cfg, None)


def test_a_head_is_complete_at_its_blank_line_after_at_most_one_leading_empty_line():
    assert head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head_complete(b"\r\nGET / HTTP/1.1\r\n\r\nbody")
    assert not head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert not head_complete(b"\r\n\r\n")
