"""How ``flwd :serve`` configures its embedded gunicorn."""

from __future__ import annotations

import gc

from flwd_server.web.serving import FlwdServer


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
    assert cfg.max_requests == 0 and cfg.worker_class_str == "gthread"
    assert cfg.graceful_timeout > settings.shutdown_grace
