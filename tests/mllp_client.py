"""A bare MLLP client for tests: send raw bytes, read framed answers."""

from __future__ import annotations

import asyncio
import contextlib

from adapters.mllp import END, START, FrameReader
from engine.hl7 import Hl7Message, parse


class MllpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = FrameReader(reader, 1 << 20)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> MllpClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_ack(self, timeout: float = 10.0) -> Hl7Message:
        frame = await asyncio.wait_for(self.frames.next(), timeout)
        assert frame is not None, "connection closed without an answer"
        return parse(frame.data)

    async def send(self, message: str | bytes, timeout: float = 10.0) -> Hl7Message:
        raw = message.encode() if isinstance(message, str) else message
        await self.send_raw(START + raw + END)
        return await self.read_ack(timeout)

    async def exchange(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send one frame and return the answering frame's bytes (an ACK or an ACK batch)."""
        await self.send_raw(START + data + END)
        frame = await asyncio.wait_for(self.frames.next(), timeout)
        assert frame is not None, "connection closed without an answer"
        return frame.data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

