"""Small HTTP clients: a blocking one for API calls, an asyncio one for timed requests and SSE.

The asyncio side speaks just enough HTTP/1.1 over a raw loopback socket
(keep-alive, ``Content-Length`` and ``chunked`` bodies) so that what is timed is
the server, not a client library.  SSE frames are split on the blank line that
ends them; only the fields a figure needs are parsed.
"""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator
from typing import Any

TOKEN = "dev-token"


class Api:
    """Blocking JSON calls on one keep-alive connection (reconnects once if the server closed it)."""

    def __init__(self, host: str, port: int, token: str = TOKEN, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.headers = {"Authorization": f"Bearer {token}"}
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = dict(self.headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self._conn.request(method, path, body=payload, headers=headers)
        response = self._conn.getresponse()
        return response.status, response.read()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        try:
            return self._request(method, path, body)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.close()
            return self._request(method, path, body)

    def get(self, path: str) -> tuple[int, bytes]:
        return self.call("GET", path)

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        status, raw = self.call(method, path, body)
        if status != expect:
            raise RuntimeError(f"{method} {path}: expected {expect}, got {status}: {raw[:300]!r}")
        return json.loads(raw)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def request_bytes(
    method: str, path: str, host: str, body: bytes | None = None, token: str = TOKEN, accept: str | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {token}"]
    if accept:
        lines.append(f"Accept: {accept}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class HttpConnection:
    """One asyncio keep-alive connection: send a request, read the status, headers and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer, f"{host}:{port}")

    def send(self, method: str, path: str, body: Any = None, accept: str | None = None) -> None:
        raw = None if body is None else json.dumps(body).encode()
        self.writer.write(request_bytes(method, path, self.host, raw, accept=accept))

    async def head(self) -> tuple[int, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body_chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives, de-chunked; ends with the body."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    return
                data = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield data
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                data = await self.reader.read(min(left, 1 << 16))
                if not data:
                    raise ConnectionError("connection closed inside a response body")
                left -= len(data)
                yield data
        else:
            while data := await self.reader.read(1 << 16):
                yield data

    async def body(self, headers: dict[str, str]) -> bytes:
        return b"".join([chunk async for chunk in self.body_chunks(headers)])

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        self.send(method, path, body)
        status, headers = await self.head()
        return status, await self.body(headers)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class Frames:
    """Split an SSE body into complete frames (the text up to each blank line)."""

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._tail + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._tail = buf
            return []
        self._tail = buf[end + 2 :]
        return buf[:end].split(b"\n\n")


def frame_fields(frame: bytes) -> dict[str, str]:
    """``{"id", "event", "data"}`` of one frame (comments and ``retry`` are skipped)."""
    out: dict[str, str] = {}
    for line in frame.decode().split("\n"):
        name, _, value = line.partition(":")
        if name in ("id", "event", "data"):
            out[name] = value[1:] if value.startswith(" ") else value
    return out
