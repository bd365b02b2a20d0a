"""The CLI's downloads from a server that cuts them: a file is an error, never a short file taken as whole."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from flwd_cli.backends import RemoteBackend, RemoteError


@pytest.fixture
def cutting_server() -> Iterator[str]:
    """Answers one request with Content-Length: 1000 and 10 bytes, then closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n"
            conn.sendall(head + b"0123456789")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    thread.join(timeout=10)
    listener.close()


def test_a_cut_artifact_download_raises(cutting_server):
    backend = RemoteBackend(cutting_server, token="t")
    chunks = backend.artifact("01run", "report.txt")
    with pytest.raises(RemoteError, match="was cut"):
        b"".join(chunks)
    backend.close()


def test_a_cut_export_ends_its_chunks_for_the_reader_to_see_no_end_record(cutting_server):
    backend = RemoteBackend(cutting_server, token="t")
    received = b"".join(backend.export({}))  # no exception: `flwd :export` then misses the end record
    assert b"0123456789".startswith(received)
    backend.close()
