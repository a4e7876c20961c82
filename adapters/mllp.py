"""HL7 v2 over MLLP: a listening source and a sending destination.

Framing is ``0x0B <message> 0x1C 0x0D``. The source answers every frame with an original-mode
ACK: AA only after ingest has durably committed the message; AE when the engine cannot take
it now (the sender should resend later); AR with an ERR segment naming what is wrong when
the input itself is bad. A frame above ``max_frame_bytes`` is discarded as it streams in (at
most one limit's worth is ever buffered) and answered with AR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

from pydantic import Field, field_validator

from engine.contracts import Ingest, Result
from engine.errors import PermanentError, RejectedInput, TransientError
from engine.hl7 import Hl7Message, build_ack, parse
from engine.hl7_batch import answer_batch, is_batch
from engine.logsetup import log_failure
from engine.message import Message
from engine.settings import DestinationSettings, HostPort, Model, split_host_port
from queues.contract import Envelope

log = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"  # what this side writes after a frame
# What ends a frame read: the file separator alone. Some devices and older HIS omit the
# carriage return after it; it cannot occur inside HL7 text, and a CR that does follow is
# skipped with anything else before the next start block.
_FS = b"\x1c"
_CHUNK = 64 * 1024


class MllpSourceConfig(Model):
    """An MLLP listener.

    Attributes:
        listen: ``host:port`` to listen on.
        max_frame_bytes: frames larger than this are refused (AR) without being buffered.
        default_encoding: codec when MSH-18 is empty (``gb18030`` for legacy GBK senders).
        idle_timeout: seconds a silent connection is kept open.
        frame_timeout: seconds a frame may take from its start block to its end; a sender
            that stalls mid-frame is disconnected instead of holding a connection slot
            for ``idle_timeout``.
        max_connections: concurrent connections; more wait in the kernel's backlog.
        strict: validate each message with hl7apy (about 200 messages/s per core).
        batch: what to do with a frame holding a batch (FHS/BHS, or several MSH): ``split``
            stores its messages, all or none, and answers an acknowledgement batch
            (``engine.hl7_batch``); ``reject`` answers AR.
        ack_mode: ``original`` answers every message AA/AE/AR. ``msh15`` honours a sender
            in enhanced mode: when MSH-15 (accept acknowledgment type) is set, the answer is
            CA/CE/CR, sent always (AL), never (NE), on errors only (ER) or on success only
            (SU); messages without MSH-15, batches and unreadable frames stay original.
    """

    type: Literal["mllp"]
    listen: HostPort
    max_frame_bytes: int = Field(default=1_048_576, ge=1024)
    default_encoding: str = "utf-8"
    idle_timeout: float = Field(default=600.0, gt=0)
    frame_timeout: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    strict: bool = False
    batch: Literal["split", "reject"] = "split"
    ack_mode: Literal["original", "msh15"] = "original"

    def build(self, channel: str) -> MllpSource:
        return MllpSource(self, channel)


class MllpSource:
    """Listens for MLLP connections and hands each message to ingest."""

    def __init__(self, config: MllpSourceConfig, channel: str) -> None:
        self.config = config
        self.channel = channel
        self._server: asyncio.Server | None = None
        self._ingest: Ingest | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.max_connections)
        self._stopping = False
        self.port = 0

    async def start(self, ingest: Ingest) -> None:
        self._ingest = ingest
        host, port = split_host_port(self.config.listen)
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=_CHUNK, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp source %s listening on %s:%d", self.channel, host, self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; connections mid-message get ``grace`` seconds to answer it."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in self._connections - self._busy:
            task.cancel()  # idle: waiting for the next frame
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            async with self._slots:
                await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # peer went away, or the source is stopping: close quietly
        except Exception as exc:
            log_failure(log, exc, "mllp source %s: connection from %s failed", self.channel,
                        peer)
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = FrameReader(reader, self.config.max_frame_bytes,
                             frame_timeout=self.config.frame_timeout)
        while not self._stopping:
            try:
                async with asyncio.timeout(self.config.idle_timeout):
                    frame = await frames.next()
            except FrameTimeout:
                log.info("mllp source %s: a frame was not completed within %gs; "
                         "connection closed", self.channel, self.config.frame_timeout)
                return
            except TimeoutError:
                return
            if frame is None:
                return
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                answer = await self._answer(frame)
                if answer is not None:  # None: the sender asked for no accept ACK (MSH-15)
                    writer.write(START + answer + END)
                    await writer.drain()
            finally:
                self._busy.discard(task)

    async def _answer(self, frame: Frame) -> bytes | None:
        if frame.error is not None:
            partial = frame.error.partial
            return self._refuse(frame.error, partial if isinstance(partial, Hl7Message) else None)
        try:
            if is_batch(frame.data):
                return await self._answer_batch(frame.data)
            msg = parse(frame.data, default_encoding=self.config.default_encoding)
            if self.config.strict:
                await _strict(msg)
        except RejectedInput as exc:
            partial = exc.partial if isinstance(exc.partial, Hl7Message) else None
            # The reason may quote a piece of the input (a malformed segment name), so it
            # goes to the peer in the ACK and to the log only at DEBUG.
            log.info("mllp source %s rejected a frame (%s, HL7 error %s)", self.channel,
                     exc.code, exc.hl7_error)
            log.debug("rejection reason: %s", _safe(str(exc)))
            return self._refuse(exc, partial)
        assert self._ingest is not None
        message = Message(channel=self.channel, content_type="hl7v2", body=frame.data)
        try:
            await self._ingest(message, hl7=msg)
        except RejectedInput as exc:  # a control id an earlier, different message holds
            return self._refuse(exc, msg)
        except TransientError as exc:
            return self._ack(msg, "AE", text=str(exc), error_code="206")
        except Exception as exc:
            log_failure(log, exc, "mllp source %s: ingest failed for %s", self.channel,
                        msg.control_id)
            return self._ack(msg, "AE", text=f"internal error: {type(exc).__name__}",
                             error_code="207")
        return self._ack(msg, "AA")

    def _refuse(self, exc: RejectedInput, msg: Hl7Message | None) -> bytes | None:
        return self._ack(msg, exc.code, text=str(exc), error_code=exc.hl7_error)

    def _ack(self, msg: Hl7Message | None, code: str, *, text: str = "",
             error_code: str | None = None) -> bytes | None:
        """The ACK to write, in the mode the sender asked for; None when it asked for none."""
        accept = msg.get("MSH", 15).upper() if msg is not None and (
            self.config.ack_mode == "msh15") else ""
        if accept in _ACCEPT_TYPES:
            success = code == "AA"
            if accept == "NE" or (accept == "ER" and success) or (accept == "SU" and not success):
                return None
            code = _ENHANCED.get(code, code)
        return _encode(build_ack(msg, code, text=text, error_code=error_code), msg)

    async def _answer_batch(self, data: bytes) -> bytes:
        """A batch frame: split and answered with an acknowledgement batch, or refused."""
        if self.config.batch == "reject":
            raise RejectedInput(
                "batches (FHS/BHS, or several MSH in one frame) are not accepted on this "
                "source: send one message per frame", hl7_error="200")
        assert self._ingest is not None
        answer = await answer_batch(
            data, self._ingest, self.channel, default_encoding=self.config.default_encoding,
            check=_strict if self.config.strict else None,
        )
        log.info("mllp source %s: batch of %d message(s) answered %s", self.channel,
                 answer.count, answer.code)
        return answer.body


async def _strict(msg: Hl7Message) -> None:
    await asyncio.to_thread(strict_validate, msg)


# Enhanced mode: MSH-15 values (HL7 table 0155) and the accept acknowledgment codes.
_ACCEPT_TYPES = ("AL", "NE", "ER", "SU")
_ENHANCED = {"AA": "CA", "AE": "CE", "AR": "CR"}


def _safe(text: str) -> str:
    """Reasons quote control ids and field names, never field values; cap the length anyway."""
    return text[:200]


def _encode(ack: str, msg: Hl7Message | None) -> bytes:
    return ack.encode(msg.encoding if msg else "utf-8", errors="replace")


def strict_validate(msg: Hl7Message) -> None:
    """Full structural validation with hl7apy; raises RejectedInput naming the problem."""
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    try:
        parsed = parse_message(msg.text.replace("\n", "\r"), find_groups=True)
        parsed.validate()
    except (HL7apyException, ValueError, KeyError, IndexError) as exc:
        raise RejectedInput(
            f"message fails strict validation: {exc}"[:300], hl7_error="207", partial=msg
        ) from None


class Frame:
    __slots__ = ("data", "error")

    def __init__(self, data: bytes, error: RejectedInput | None = None) -> None:
        self.data = data
        self.error = error


class FrameTimeout(TimeoutError):
    """A frame began (start block) but did not end within the reader's ``frame_timeout``."""


class FrameReader:
    """Reads MLLP frames from a stream, never buffering more than ``limit`` bytes of one."""

    def __init__(self, reader: asyncio.StreamReader, limit: int,
                 frame_timeout: float | None = None) -> None:
        self.reader = reader
        self.limit = limit
        self.frame_timeout = frame_timeout
        self.buf = bytearray()

    async def _fill(self) -> bool:
        chunk = await self.reader.read(_CHUNK)
        if not chunk:
            return False
        self.buf += chunk
        return True

    async def next(self) -> Frame | None:
        """The next frame, a Frame carrying an error, or None at end of stream.

        Raises:
            FrameTimeout: the frame began but did not end within ``frame_timeout``.
        """
        # Skip anything before the start block (whitespace between frames, line noise).
        while True:
            start = self.buf.find(START)
            if start >= 0:
                del self.buf[: start + 1]
                break
            self.buf.clear()
            if not await self._fill():
                return None
        if self.frame_timeout is None or _FS in self.buf:  # the whole frame is here
            return await self._rest()
        try:
            async with asyncio.timeout(self.frame_timeout):
                return await self._rest()
        except TimeoutError:
            raise FrameTimeout(f"frame not completed within {self.frame_timeout:g}s") from None

    async def _rest(self) -> Frame | None:
        """The frame whose start block has been read."""
        scanned = 0
        while True:
            end = self.buf.find(_FS, scanned)
            if end >= 0:
                data = bytes(self.buf[:end])
                del self.buf[: end + 1]
                nested = data.find(START)
                if nested >= 0:
                    # A new start block before the end block: the previous frame was cut off.
                    return Frame(
                        data,
                        RejectedInput("MLLP framing error: start block inside a frame (0x0B)"),
                    )
                return Frame(data)
            scanned = len(self.buf)
            if scanned > self.limit:
                return await self._discard_oversized()
            if not await self._fill():
                return None

    async def _discard_oversized(self) -> Frame | None:
        head = bytes(self.buf[:4096])
        total = len(self.buf)
        self.buf.clear()
        while True:
            chunk = await self.reader.read(_CHUNK)
            if not chunk:
                return None
            end = chunk.find(_FS)
            if end >= 0:
                total += end
                self.buf += chunk[end + 1 :]
                break
            total += len(chunk)
        partial = None
        with contextlib.suppress(RejectedInput):
            partial = parse(head.split(b"\r", 1)[0] + b"\r")
        return Frame(
            head,
            RejectedInput(
                f"frame too large: {total} bytes exceeds the limit of {self.limit}",
                hl7_error="207",
                partial=partial,
            ),
        )


# -- destination ----------------------------------------------------------------------------

AckAction = Literal["ack", "retry", "dead_letter"]
DEFAULT_ACK_CODES: dict[str, AckAction] = {
    "AA": "ack", "CA": "ack", "AE": "retry", "CE": "retry",
    "AR": "dead_letter", "CR": "dead_letter",
}


class MllpDestinationConfig(DestinationSettings):
    """Sends HL7 v2 messages over MLLP and waits for each ACK.

    Attributes:
        ack_codes: what each MSA-1 code means, over the defaults AA/CA success, AE/CE
            retry, AR/CR dead-letter (``{AE = "dead_letter"}`` changes AE alone).
        connections: at most this many connections (each carries one message at a time).
    """

    type: Literal["mllp"]
    host: str
    port: int = Field(ge=1, le=65535)
    connect_timeout: float = Field(default=5.0, gt=0)
    ack_timeout: float = Field(default=30.0, gt=0)
    max_frame_bytes: int = Field(default=1_048_576, ge=1024)
    connections: int = Field(default=1, ge=1, le=64)
    ack_codes: dict[str, AckAction] = Field(default_factory=lambda: dict(DEFAULT_ACK_CODES))

    @field_validator("ack_codes")
    @classmethod
    def _over_defaults(cls, value: dict[str, AckAction]) -> dict[str, AckAction]:
        # Merged, as HTTP outcomes are: a table naming only AE must not make AA unknown
        # (and every accepted message retried until it is dead-lettered).
        return {**DEFAULT_ACK_CODES, **value}

    def build(self, channel: str) -> MllpDestination:
        return MllpDestination(self)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int):
        self.writer = writer
        self.frames = FrameReader(reader, limit)

    def close(self) -> None:
        self.writer.close()


class MllpDestination:
    """Sends one message per connection at a time; reconnects after any failure."""

    def __init__(self, config: MllpDestinationConfig) -> None:
        self.config = config
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(config.connections)

    async def start(self) -> None:
        """Nothing to do: connections open on first use, so a peer that is down at start
        does not stop the engine."""

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.config.host, self.config.port, limit=_CHUNK),
                self.config.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise TransientError(
                f"cannot connect to {self.config.host}:{self.config.port}: "
                f"{exc.__class__.__name__} {exc}".strip()
            ) from None
        return _Connection(reader, writer, self.config.max_frame_bytes)

    async def send(self, envelope: Envelope) -> Result:
        async with self._slots:
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                result = await self._exchange(conn, envelope)
            except BaseException:
                conn.close()
                raise
            self._idle.append(conn)
            return result

    async def _exchange(self, conn: _Connection, envelope: Envelope) -> Result:
        sent_control_id = _control_id(envelope.body)
        started = time.monotonic()
        try:
            conn.writer.write(START + envelope.body + END)
            await conn.writer.drain()
            async with asyncio.timeout(self.config.ack_timeout):
                frame = await conn.frames.next()
        except TimeoutError:
            raise TransientError(f"no ACK within {self.config.ack_timeout:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise TransientError(f"connection lost: {exc.__class__.__name__}") from None
        if frame is None:
            raise TransientError("peer closed the connection before acknowledging")
        if frame.error is not None:
            raise TransientError(f"unreadable ACK: {frame.error}")
        try:
            ack = parse(frame.data)
        except RejectedInput as exc:
            raise TransientError(f"unreadable ACK: {exc}") from None
        code = ack.get("MSA", 1)
        acked = ack.get("MSA", 2)
        if sent_control_id and acked != sent_control_id:
            raise TransientError(
                f"ACK answers control id {acked!r}, expected {sent_control_id!r}"
            )
        text = ack.unescape(ack.get("MSA", 3) or ack.get("ERR", 8))
        action = self.config.ack_codes.get(code)
        detail = f"{code} in {1000 * (time.monotonic() - started):.0f} ms"
        if action == "ack":
            return Result(detail=detail, response=frame.data, content_type="hl7v2")
        if action == "retry":
            raise TransientError(f"peer answered {code}: {text}".rstrip(": "))
        if action == "dead_letter":
            raise PermanentError(f"peer answered {code}: {text}".rstrip(": "))
        raise TransientError(f"peer answered an unknown acknowledgement code {code!r}")


def _control_id(body: bytes) -> str:
    try:
        return parse(body).control_id
    except RejectedInput:
        return ""
