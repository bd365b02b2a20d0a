"""An idle stream sends a heartbeat comment at least every 15 s, so proxies (nginx waits 60 s by
default) keep it open (fake clock, no waiting)."""

from __future__ import annotations

from flwd_server.config import Settings
from flwd_server.events.sse import HEARTBEAT, event_stream


class IdleHub:
    """A hub with no events whose waits only move a fake clock."""

    closed = False

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def read(self, after: int, run_id: str | None = None, limit: int = 500, *, event_filter=None):
        return [], after

    def wait(self, after: int, timeout: float) -> bool:
        self.now += timeout
        return False

    def watch(self) -> None: ...

    def unwatch(self) -> None: ...


def heartbeat_times(heartbeat: float, count: int) -> list[float]:
    hub = IdleHub()
    frames = event_stream(hub, after=0, heartbeat=heartbeat, max_duration=10_000, clock=hub.clock)  # type: ignore[arg-type]
    assert next(frames).startswith(b"retry: ")
    times = []
    for frame in frames:
        assert frame == HEARTBEAT
        times.append(hub.now)
        if len(times) == count:
            break
    return times


def test_the_default_heartbeat_is_at_most_fifteen_seconds():
    assert Settings().sse.heartbeat <= 15


def test_an_idle_stream_sends_a_ping_comment_every_heartbeat_interval():
    times = heartbeat_times(Settings().sse.heartbeat, 10)
    gaps = [b - a for a, b in zip([1000.0, *times], times, strict=False)]
    assert all(0 < gap <= 15 for gap in gaps), gaps
    assert HEARTBEAT == b": ping\n\n"


def test_a_shorter_heartbeat_setting_is_honoured():
    times = heartbeat_times(0.5, 6)
    assert times[-1] - 1000.0 <= 3.0 + 1e-9
