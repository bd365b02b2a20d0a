"""The broadcaster: one thread writing every stream, with real sockets."""

from __future__ import annotations

import json
import socket
import threading
import time

from flwd_server.events.broadcast import BroadcastBody, Broadcaster, HandOff, can_take_over, chunk
from tests.fixtures.helpers import wait_until


def read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    sock.settimeout(5)
    data = b""
    while marker not in data and len(data) < limit:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        length = int(size, 16)
        out, data = out + data[:length], data[length:]
        assert data.startswith(b"\r\n")
        data = data[2:]
    return out


def test_followers_get_the_same_chunked_frames_and_the_socket_back_when_the_run_ends(hub):
    caster = Broadcaster(hub, heartbeat=5, max_duration=60)
    pairs = [socket.socketpair() for _ in range(3)]
    subs = [caster.attach(server, 0, "r1", chunked=True) for server, _ in pairs]
    hub.store.emit("r1", "step.output", {"line": "hello"})
    hub.store.emit("r2", "step.output", {"line": "not yours"})
    hub.store.emit("r1", "run.finished", {"status": "succeeded"})
    for sub in subs:
        assert sub.done.wait(5) and not sub.failed
    received = [read_until(client, b"run.finished") for _, client in pairs]
    assert received[0] == received[1] == received[2]
    payload = dechunk(received[0])  # valid chunked framing, whatever the batches were
    assert b"not yours" not in payload and b"hello" in payload and payload.endswith(b"\n\n")
    assert all(server.getblocking() for server, _ in pairs)  # given back as the WSGI server expects
    for server, client in pairs:
        server.close()
        client.close()


def test_a_client_that_never_reads_is_dropped_and_the_others_go_on(hub):
    caster = Broadcaster(hub, heartbeat=5, max_duration=60, stall_timeout=0.5)
    slow_server, slow_client = socket.socketpair()
    fast_server, fast_client = socket.socketpair()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_until(fast_client, b"run.finished", limit=1 << 30)))
    try:
        slow = caster.attach(slow_server, 0, "busy", chunked=False)
        fast = caster.attach(fast_server, 0, "busy", chunked=False)
        reader.start()
        line = "x" * 1000
        for i in range(3000):  # ~3 MB: far more than the slow client's socket and buffer hold
            hub.store.emit("busy", "step.output", {"i": i, "line": line})
        hub.store.emit("busy", "run.finished", {"status": "succeeded"})
        assert slow.done.wait(10) and slow.failed and "read nothing" in slow.reason
        assert fast.done.wait(10) and not fast.failed
        reader.join(10)
        assert got[0].count(b"event: step.output") == 3000
    finally:
        for s in (slow_server, slow_client, fast_server, fast_client):
            s.close()


def test_an_idle_stream_gets_heartbeats_and_ends_at_its_max_duration(hub):
    caster = Broadcaster(hub, heartbeat=0.1, max_duration=0.5)
    server, client = socket.socketpair()
    sub = caster.attach(server, hub.last_id, None, chunked=True)
    assert sub.done.wait(5) and not sub.failed
    data = read_until(client, b"", limit=1)  # whatever arrived
    client.setblocking(False)
    try:
        data += client.recv(65536)
    except BlockingIOError:
        pass
    assert data.count(chunk(b": ping\n\n")) >= 2
    server.close()
    client.close()


def test_a_client_that_went_away_ends_its_stream(hub):
    caster = Broadcaster(hub, heartbeat=0.05, max_duration=60)
    server, client = socket.socketpair()
    sub = caster.attach(server, hub.last_id, None, chunked=True)
    client.close()
    assert sub.done.wait(5) and sub.failed and "went away" in sub.reason
    server.close()


def test_the_wsgi_body_sends_the_first_chunk_itself_then_hands_over(hub):
    caster = Broadcaster(hub, heartbeat=5, max_duration=60)
    server, client = socket.socketpair()
    released = []
    body = BroadcastBody(
        caster, server, after=0, run_id="r9", chunked=True, retry_ms=1500, release=lambda: released.append(1)
    )
    frames = iter(body)
    assert next(frames) == b"retry: 1500\n\n"
    hub.store.emit("r9", "run.finished", {"status": "succeeded"})
    assert list(frames) == []  # returned after the terminal event: the WSGI server closes the response
    assert b"run.finished" in read_until(client, b"run.finished")
    body.close()
    body.close()
    assert released == [1]
    server.close()
    client.close()


def test_a_handed_off_body_frees_its_thread_and_the_broadcaster_ends_the_response(hub):
    """With ``hand_off`` nothing waits: the broadcaster writes the last chunk, then says the stream is over."""
    caster = Broadcaster(hub, heartbeat=5, max_duration=60)
    server, client = socket.socketpair()
    released, ended, outcomes = [], threading.Event(), []
    body = BroadcastBody(
        caster,
        server,
        after=0,
        run_id="r8",
        chunked=True,
        retry_ms=1500,
        release=lambda: released.append(1),
        hand_off=True,
    )
    frames = iter(body)
    assert next(frames) == b"retry: 1500\n\n"
    try:
        next(frames)
        raise AssertionError("the body should have handed the stream off")
    except HandOff as hand_off:
        body.close()  # what the WSGI server does on its way out: the slot stays taken
        assert released == []
        hand_off.start(lambda reusable: (outcomes.append(reusable), ended.set()))
    hub.store.emit("r8", "step.output", {"line": "live"})
    hub.store.emit("r8", "run.finished", {"status": "succeeded"})
    assert ended.wait(5)
    assert outcomes == [True]  # a whole response: the connection may serve the next request
    data = read_until(client, b"0\r\n\r\n")
    assert data.endswith(b"0\r\n\r\n")  # the chunked response is complete
    payload = dechunk(data[: -len(b"0\r\n\r\n")])
    assert b"live" in payload and b"run.finished" in payload
    assert released == [1]
    server.close()
    client.close()


def test_only_plain_http1_gets_on_a_gunicorn_socket_are_taken_over():
    sock = socket.socket()
    try:
        base = {"gunicorn.socket": sock, "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1"}
        assert can_take_over(base) is sock
        assert can_take_over({**base, "SERVER_PROTOCOL": "HTTP/2"}) is None
        assert can_take_over({**base, "REQUEST_METHOD": "HEAD"}) is None
        assert can_take_over({k: v for k, v in base.items() if k != "gunicorn.socket"}) is None
    finally:
        sock.close()


def test_a_handed_off_stream_whose_client_closes_ends_at_once_not_at_the_next_heartbeat(hub):
    caster = Broadcaster(hub, heartbeat=60, max_duration=600)
    server, client = socket.socketpair()
    ended, outcomes = threading.Event(), []
    sub = caster.attach(
        server, 0, "quiet", chunked=True, on_end=lambda reusable: (outcomes.append(reusable), ended.set())
    )
    client.close()
    assert ended.wait(5)  # the heartbeat's write would have noticed only after 60 s
    assert outcomes == [False]  # the response is cut: the connection is closed
    assert sub.failed and "closed" in sub.reason
    server.close()


def test_events_pending_for_a_stream_go_out_in_one_write_whole_and_in_order(hub):
    """Rounds at least ``min_interval`` apart: what arrives meanwhile is one batch, one ``send``, one chunk."""
    caster = Broadcaster(hub, heartbeat=5, max_duration=60, min_interval=0.5)
    server, client = socket.socketpair()
    try:
        sub = caster.attach(server, hub.last_id, "coalesced", chunked=True)
        hub.store.emit("coalesced", "step.output", {"line": "first"})
        first = read_until(client, b'"first"')
        assert first.endswith(b"\n\n\r\n")  # one whole chunk
        sends = caster.sends
        for i in range(5):
            hub.store.emit("coalesced", "step.output", {"line": f"pending {i}"})
        data = read_until(client, b'"pending 4"')
        assert caster.sends == sends + 1
        payload = dechunk(data)  # exactly one chunk: dechunk would leave or refuse a second
        assert data.startswith(b"%x\r\n" % len(payload))
        assert [payload.index(b'"pending %d"' % i) for i in range(5)] == sorted(
            payload.index(b'"pending %d"' % i) for i in range(5)
        )
        assert payload.count(b"event: step.output") == 5 and payload.endswith(b"\n\n")
        hub.store.emit("coalesced", "run.finished", {"status": "succeeded"})
        assert sub.done.wait(5) and not sub.failed
    finally:
        server.close()
        client.close()


def test_a_partial_write_is_resumed_with_the_rest_of_the_batch_then_the_next(hub):
    """A client slower than the socket: every event arrives once, whole and in order, after the partial writes."""
    caster = Broadcaster(hub, heartbeat=5, max_duration=60)
    server, client = socket.socketpair()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sub = caster.attach(server, hub.last_id, "partial", chunked=False)
        line = "y" * 2000
        for i in range(200):  # ~400 KB: many times what the two socket buffers hold
            hub.store.emit("partial", "step.output", {"i": i, "line": line})
        wait_until(lambda: sub.out, 10, message="a write stopped part-way, the rest waiting")
        assert sub.out
        hub.store.emit("partial", "run.finished", {"status": "succeeded"})
        data = read_until(client, b"event: run.finished", limit=1 << 30)
        frames = [frame for frame in data.split(b"\n\n") if frame]
        numbers = [json.loads(frame.split(b"data: ", 1)[1])["data"]["i"] for frame in frames[:-1]]
        assert numbers == list(range(200))
        assert sub.done.wait(5) and not sub.failed
    finally:
        server.close()
        client.close()


def test_a_round_is_followed_by_a_pause_for_its_cost_but_a_backlog_is_sent_without_one(hub):
    """``pace`` so large that any round's cost pauses for ``max_pause`` (2 s): new events wait for it..."""
    caster = Broadcaster(hub, heartbeat=5, max_duration=60, pace=1e9, max_pause=2.0)
    server, client = socket.socketpair()
    try:
        caster.attach(server, hub.last_id, "paced", chunked=False)
        hub.store.emit("paced", "step.output", {"line": "a"})
        read_until(client, b'"a"')
        sent_a = time.monotonic()
        hub.store.emit("paced", "step.output", {"line": "b"})
        read_until(client, b'"b"')
        assert time.monotonic() - sent_a >= 1.5
    finally:
        server.close()
        client.close()
    # ...but a backlog (here: more than max_batch bytes of history, ten rounds of it) is sent
    # without a pause between its rounds (a fresh broadcaster: the first may still be pausing).
    caster = Broadcaster(hub, heartbeat=5, max_duration=60, pace=1e9, max_pause=2.0, max_batch=2000)
    for i in range(100):
        hub.store.emit("backlog", "step.output", {"i": i})
    hub.store.emit("backlog", "run.finished", {"status": "succeeded"})
    server, client = socket.socketpair()
    try:
        began = time.monotonic()
        sub = caster.attach(server, 0, "backlog", chunked=False)
        data = read_until(client, b"event: run.finished", limit=1 << 30)
        assert data.count(b"event: step.output") == 100
        assert time.monotonic() - began < 2.0  # one pause would be 2 s
        assert sub.done.wait(5) and not sub.failed
    finally:
        server.close()
        client.close()


def test_a_stream_attached_during_a_pause_gets_its_history_though_no_new_event_comes(hub):
    """Figure 2's lost stream: a run ended before its stream attached, in the pause after the round
    that sent the run's events to another follower; no later event woke the broadcaster, so the
    new stream got heartbeats only."""
    caster = Broadcaster(hub, heartbeat=5, max_duration=60, pace=1e9, max_pause=1.0)
    all_server, all_client = socket.socketpair()
    server, client = socket.socketpair()
    try:
        caster.attach(all_server, hub.last_id, None, chunked=False)  # a follower of every event
        hub.store.emit("quick", "step.output", {"line": "done before its stream"})
        hub.store.emit("quick", "run.finished", {"status": "succeeded"})
        read_until(all_client, b"event: run.finished")  # that round sent them: a pause follows
        sub = caster.attach(server, 0, "quick", chunked=False)
        assert b"event: run.finished" in read_until(client, b"event: run.finished")
        assert sub.done.wait(5) and not sub.failed
    finally:
        for sock in (all_server, all_client, server, client):
            sock.close()
