"""HTTP/1.1 written byte by byte, for requests no well-behaved client would send.

aiohttp's client fixes up what the malformed-input tests need broken (header bytes that are
not UTF-8, a Content-Length that promises more than is sent, chunked bodies cut short), so
these tests speak to the listeners over a plain socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import orjson
import pytest


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)

    @property
    def error(self) -> str:
        """The ``error`` of a JSON problem answer."""
        doc = self.json()
        assert isinstance(doc, dict), doc
        return str(doc["error"])


def request(
    method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None,
    raw_headers: bytes = b"", length: bool = True,
) -> bytes:
    """The bytes of one request; ``raw_headers`` are added as they are (already CRLF-ended)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1") + raw_headers + b"\r\n" + body


def chunked(*chunks: bytes, end: bool = True) -> bytes:
    """A chunked body; ``end=False`` leaves it unfinished (the sender keeps streaming)."""
    out = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return out + (b"0\r\n\r\n" if end else b"")


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> Answer:
    """Send ``data`` on a new connection and read one answer, without sending more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    size = int(headers.get("content-length", "0"))
    body = await reader.readexactly(size) if size else b""
    return Answer(int(status_line.split(" ")[1]), headers, body)


def assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """No ERROR record (an unhandled exception in a handler, a traceback) was logged."""
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
