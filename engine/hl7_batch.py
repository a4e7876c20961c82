"""HL7 v2 batches: several messages in one frame or body, split, stored and acknowledged.

A HIS or a laboratory sends a day's charges or results as a batch::

    [FHS] { [BHS] { MSH ... } [BTS] } [FTS]

(HL7 v2.5 section 2.10.3; every header and trailer is optional, so a frame holding several
MSH segments is a batch too). Accepting such a frame as one message would hide every
message after the first inside it: its control id never acknowledged, its content never
routed. So a batch is split on segment boundaries of the raw bytes (each message is stored
byte for byte, as a single message would be) and checked whole before anything is stored:

- the structure: no segment outside a message, BTS-1 and FTS-1 (the counts) agree with
  what arrived, so a truncated file is refused rather than half taken;
- every message, as a single message is checked at the door.

Then it is stored in order, in one transaction (``Ingest.many``); with a broker its
messages are then published together, and one whose publish fails stays in the outbox, to
be recognised as a duplicate when the batch is sent again. The answer is an
acknowledgement batch: the input's FHS and BHS mirrored (sender and receiver swapped,
FHS-12/BHS-12 naming the input's control ids), one ACK per message in order, and BTS/FTS
with the counts. A rejected message makes every message of its batch AR, so the sender
fixes and resends the whole; what an earlier attempt stored is then a recognised duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from engine.contracts import Ingest
from engine.errors import KeyReused, RejectedInput, TransientError
from engine.hl7 import Hl7Message, build_ack, parse, timestamp
from engine.logsetup import log_failure
from engine.message import Message, new_id

log = logging.getLogger(__name__)

YIELD_EVERY = 256  # messages parsed between turns of the event loop
_LINE = re.compile(rb"[^\r\n]+")
_HEADERS = (b"FHS", b"BHS")
_TRAILERS = (b"\rBTS", b"\nBTS", b"\rFTS", b"\nFTS")


def is_batch(raw: bytes) -> bool:
    """Whether ``raw`` is a batch: FHS/BHS first, or more than one MSH, or a BTS/FTS trailer.

    Byte scans in C, about a microsecond for a single message.
    """
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:3]
    if head in _HEADERS:
        return True
    if head != b"MSH":
        return False
    if b"\rMSH" in raw or b"\nMSH" in raw:
        return True
    return b"TS" in raw and any(t in raw for t in _TRAILERS)


@dataclass(slots=True)
class BatchGroup:
    """One BHS ... BTS batch (header and trailer may be absent)."""

    header: bytes | None = None
    messages: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Hl7Batch:
    """A split batch: the file header, if any, and its batches with their raw messages."""

    file_header: bytes | None
    groups: list[BatchGroup]

    @property
    def messages(self) -> list[bytes]:
        return [m for g in self.groups for m in g.messages]


def split_batch(raw: bytes) -> Hl7Batch:
    """Split a batch into its messages' raw bytes, checking its structure and counts.

    Raises:
        RejectedInput: naming the segment (1-based) and what is wrong with it.
    """
    raw = raw.lstrip(b"\xef\xbb\xbf \t\r\n")
    file_header: bytes | None = None
    groups: list[BatchGroup] = []
    group: BatchGroup | None = None
    start = end = -1  # the message being collected, as a slice of raw
    closed = False  # a BTS ended the current batch
    ended = False  # FTS ended the file

    def finish() -> None:
        nonlocal start
        if start >= 0:
            assert group is not None
            group.messages.append(raw[start:end])
            start = -1

    for n, line in enumerate(_LINE.finditer(raw), start=1):
        if not line.group().strip():
            continue
        name = _name(line.group())
        if ended:
            raise _problem(n, name, "follows the file trailer FTS")
        if name == b"MSH":
            finish()
            if group is None or closed:
                if closed:
                    raise _problem(n, name, "follows BTS: a new batch needs its own BHS")
                group = BatchGroup()
                groups.append(group)
            start, end = line.start(), line.end()
        elif name == b"FHS":
            if n != 1:
                raise _problem(n, name, "a file header must be the first segment")
            file_header = line.group()
        elif name == b"BHS":
            finish()
            group, closed = BatchGroup(header=line.group()), False
            groups.append(group)
        elif name == b"BTS":
            finish()
            if group is None or closed:
                raise _problem(n, name, "ends a batch that was not begun")
            _check_count(line.group(), len(group.messages), n, "messages in its batch")
            closed = True
        elif name == b"FTS":
            finish()
            _check_count(line.group(), len(groups), n, "batches in the file")
            ended = True
        elif start < 0:
            raise _problem(n, name, "is outside any message (each message begins with MSH)")
        else:
            end = line.end()
    finish()
    if not groups:
        raise RejectedInput("batch holds no BHS or MSH segment", hl7_error="100")
    return Hl7Batch(file_header, groups)


def _name(segment: bytes) -> bytes:
    """A segment's name: its first three bytes when a field separator (or nothing) follows;
    otherwise not a name this splitter acts on ("BHSX|..." is no BHS)."""
    sep = segment[3:4]
    if sep and (sep.isalnum() or sep.isspace()):
        return segment[:4]
    return segment[:3]


def _problem(n: int, name: bytes, what: str) -> RejectedInput:
    shown = name.decode("latin-1") if name.isalnum() else repr(name.decode("latin-1"))
    return RejectedInput(f"batch segment {n} ({shown}) {what}", hl7_error="100")


def _check_count(segment: bytes, actual: int, n: int, what: str) -> None:
    """BTS-1 / FTS-1, when given, must be the number that arrived (a truncated file is not)."""
    sep = segment[3:4] or b"|"
    parts = segment.split(sep)
    given = parts[1].strip() if len(parts) > 1 else b""
    if not given:
        return
    if not given.isdigit() or int(given) != actual:
        kind = segment[:3].decode("latin-1")
        raise RejectedInput(
            f"{kind}-1 says {given[:20].decode('latin-1')!r} but {actual} {what} arrived "
            f"(batch segment {n}): the batch is incomplete or miscounted", hl7_error="100",
        )


def answer_acks(answer: bytes) -> list[Hl7Message]:
    """The ACKs in an answer, for a sender: the one ACK, or each of an acknowledgement batch.

    Raises:
        RejectedInput: the answer is not HL7, or an ACK in it is not.
    """
    if not is_batch(answer):
        return [parse(answer)]
    return [parse(m) for m in split_batch(answer).messages]


# -- answering ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """The acknowledgement batch, and its code for the batch as a whole: AA every message
    accepted, AR refused as it is, AE not accepted now (send it again later)."""

    body: bytes
    code: str
    count: int  # messages in the batch
    message_ids: list[str]  # of the stored messages (earlier ones' for duplicates)
    reused: bool = False  # refused for a control id an earlier, different message holds


Check = Callable[[Hl7Message], Awaitable[None]]


async def answer_batch(
    raw: bytes, ingest: Ingest, channel: str, *, default_encoding: str = "utf-8",
    check: Check | None = None, headers: Mapping[str, str] | None = None,
) -> BatchAnswer:
    """Split, check, store and acknowledge a batch: all of its messages or none.

    Raises:
        RejectedInput: the batch's structure is broken, so there is nothing to answer per
            message (the source answers one negative ACK).
    """
    batch = split_batch(raw)
    parsed: list[Hl7Message | None] = []
    failed: tuple[int, RejectedInput] | None = None
    for n, body in enumerate(batch.messages, start=1):
        if n % YIELD_EVERY == 0:
            # A 10 MB batch holds tens of thousands of messages: let other peers' ACKs out.
            await asyncio.sleep(0)
        try:
            msg = parse(body, default_encoding=default_encoding)
            if check is not None:
                await check(msg)
        except RejectedInput as exc:
            partial = exc.partial if isinstance(exc.partial, Hl7Message) else None
            parsed.append(partial)
            failed = failed or (n, exc)
            continue
        parsed.append(msg)
    if failed is not None:
        bad, problem = failed
        acks = [
            build_ack(msg, problem.code, text=str(problem), error_code=problem.hl7_error)
            if n == bad
            else build_ack(msg, "AR", error_code="207", text=(
                f"not accepted: message {bad} of this batch was rejected; resend the batch"))
            for n, msg in enumerate(parsed, start=1)
        ]
        return BatchAnswer(_ack_batch(batch, parsed, acks), "AR", len(parsed), [])
    messages = [msg for msg in parsed if msg is not None]
    items = [(Message(channel=channel, content_type="hl7v2", body=body,
                      headers=dict(headers or {})), msg)
             for body, msg in zip(batch.messages, messages, strict=True)]
    try:
        results = await ingest.many(items)
    except KeyReused as exc:
        acks = [build_ack(msg, "AR", text=f"batch not accepted: {exc}", error_code="205")
                for msg in messages]
        return BatchAnswer(_ack_batch(batch, parsed, acks), "AR", len(parsed), [], reused=True)
    except TransientError as exc:
        acks = [build_ack(msg, "AE", text=f"batch not accepted: {exc}", error_code="206")
                for msg in messages]
        return BatchAnswer(_ack_batch(batch, parsed, acks), "AE", len(parsed), [])
    except Exception as exc:
        log_failure(log, exc, "channel %s: storing a batch of %d failed", channel, len(items))
        text = f"internal error: {type(exc).__name__}"
        acks = [build_ack(msg, "AE", text=text, error_code="207") for msg in messages]
        return BatchAnswer(_ack_batch(batch, parsed, acks), "AE", len(parsed), [])
    acks = [build_ack(msg, "AA") for msg in messages]
    return BatchAnswer(_ack_batch(batch, parsed, acks), "AA", len(parsed),
                       [r.message_id for r in results])


def _ack_batch(batch: Hl7Batch, parsed: list[Hl7Message | None], acks: list[str]) -> bytes:
    """FHS/BHS mirrored, the ACKs in order (each in its message's character set), BTS/FTS."""
    first = next((m for m in parsed if m is not None), None)
    codec = first.encoding if first is not None else "utf-8"
    out: list[bytes] = []
    if batch.file_header is not None:
        out.append(_mirror(batch.file_header, codec))
    fs = (first.field_sep if first is not None else "|").encode()
    k = 0
    for group in batch.groups:
        header = group.header or b"BHS" + fs + b"^~\\&"
        out.append(_mirror(header, codec))
        for _ in group.messages:
            msg = parsed[k]
            out.append(acks[k].encode(msg.encoding if msg else codec, errors="replace"))
            k += 1
        out.append(b"BTS" + header[3:4] + str(len(group.messages)).encode() + b"\r")
    if batch.file_header is not None:
        out.append(b"FTS" + batch.file_header[3:4] + str(len(batch.groups)).encode() + b"\r")
    return b"".join(out)


def _mirror(header: bytes, codec: str) -> bytes:
    """An answering FHS/BHS: sender and receiver swapped, -12 naming the input's -11."""
    text = header.decode(codec or "utf-8", errors="replace")
    fs = text[3:4] or "|"
    parts = text.split(fs)
    parts += [""] * (13 - len(parts))
    enc = parts[1] or "^~\\&"
    # Copied values come from one line split on its own separator: they hold neither.
    # FHS-n / BHS-n is parts[n - 1]: 3-6 sender and receiver, 11 the control id.
    app, fac, to_app, to_fac, reference = (
        v[:200] for v in (parts[4], parts[5], parts[2], parts[3], parts[10]))
    fields = [parts[0][:3], enc, app or "HISBRIDGE", fac, to_app, to_fac, timestamp(), "",
              "", "", new_id(), reference]
    return (fs.join(fields).rstrip(fs) + "\r").encode(codec or "utf-8", errors="replace")


__all__ = ["BatchAnswer", "Hl7Batch", "answer_acks", "answer_batch", "is_batch", "split_batch"]
