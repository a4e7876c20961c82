"""Envelopes as AMQP messages, and AMQP messages back as envelopes and dead letters.

An envelope travels as a persistent message: ``message_id`` and ``content_type`` are AMQP
properties, the envelope's own headers (if it has any) sit in one nested table
(``hb-headers``) so they can never collide with the broker's (``x-death``,
``x-delivery-count``) or ours. The attempt
history rides in ``x-hb-*`` headers: that is what lets a retry or a dead letter carry its
count, first-failure time and reason across processes and restarts. Times are integer
epoch milliseconds: AMQP tables carry Python floats as 32-bit floats, far too coarse for
epoch seconds.

Anything can be published into a queue, not only what ``encode`` wrote. What a message *is*
(its id, its format, its envelope headers) is never guessed: ``refusal`` says why a message
cannot be handed out as an envelope, and the consumer dead-letters it with that reason
(``refused``), keeping what arrived. Attempt bookkeeping (``x-hb-*``) only steers retries,
so a value of the wrong type there is read as its default (no failures, no wait) and
named by ``odd_history``: at worst the message gets a bounded round of attempts more. The
queue never reads bodies; whether a body is what its content type says is the mapping's
and the destination's question.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractMessage
from pamqp import encode as amqp_encode
from pamqp.commands import Basic

from engine.message import CONTENT_TYPES, new_id
from queues.contract import DeadLetter, Envelope

ENVELOPE_HEADERS = "hb-headers"
FAILURES = "x-hb-failures"
FIRST_FAILED_AT = "x-hb-first-failed-ms"
LAST_ERROR = "x-hb-last-error"
NOT_BEFORE = "x-hb-not-before-ms"
REDELIVERIES = "x-hb-redeliveries"
REPUBLISHED = "x-hb-republished"
DEAD_REASON = "x-hb-reason"
DEAD_AT = "x-hb-dead-at-ms"
DEAD_ID = "x-hb-dead-id"
REFUSED = "x-hb-refused"  # on a dead letter ``refused`` wrote: not an envelope

REASON_LIMIT = 1000
PERSISTENT = 2

# Envelope headers are a handful of short strings (trace ids, idempotency keys, a reply
# address); far more than that was not written by us, and would reach a destination.
HEADER_ENTRIES_LIMIT = 1024
HEADER_BYTES_LIMIT = 64 * 1024
# What a refused message's dead-lettered copy keeps of its header table: the copy must fit
# in the frame the broker accepts (128 KiB by default) together with our reason.
KEPT_HEADERS_LIMIT = 32 * 1024
# A retry time further ahead than this is not one we wrote; waiting for it would stall an
# ordered queue (its worker waits for the head) or send a message round the delay queues
# for ever.
NOT_BEFORE_LIMIT = 366 * 86_400.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message ready for ``basic.publish``: the body and its AMQP properties."""

    body: bytes
    properties: Basic.Properties


@dataclass(frozen=True, slots=True)
class History:
    """What the queue remembers about earlier attempts of one envelope."""

    failures: int = 0
    first_failed_at: float | None = None
    last_error: str = ""
    not_before: float = 0.0
    redeliveries: int = 0
    republished: bool = False  # this copy may repeat one published (and handled) before

    def headers(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.failures:
            out[FAILURES] = self.failures
        if self.first_failed_at is not None:
            out[FIRST_FAILED_AT] = to_ms(self.first_failed_at)
        if self.last_error:
            out[LAST_ERROR] = self.last_error[:REASON_LIMIT]
        if self.not_before:
            out[NOT_BEFORE] = to_ms(self.not_before)
        if self.redeliveries:
            out[REDELIVERIES] = self.redeliveries
        if self.republished:
            out[REPUBLISHED] = 1
        return out


def encode(
    envelope: Envelope,
    history: History | None = None,
    *,
    priority: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Outgoing:
    """A persistent AMQP message carrying ``envelope`` and its attempt history.

    A message with no envelope headers and no history (most first publishes) carries no
    header table at all: encoding and decoding AMQP tables is a good part of what a
    publish costs, on both sides of the socket.
    """
    headers: dict[str, Any] | None = (
        {ENVELOPE_HEADERS: dict(envelope.headers)} if envelope.headers else None
    )
    if history is not None or extra:
        headers = headers or {}
        if history is not None:
            headers.update(history.headers())
        if extra:
            headers.update(extra)
    return Outgoing(envelope.body, Basic.Properties(
        content_type=envelope.content_type,
        headers=headers or None,
        delivery_mode=PERSISTENT,
        priority=priority,
        message_id=envelope.message_id,
    ))


def decode(message: AbstractMessage) -> tuple[Envelope, History]:
    """An aio-pika message (from ``basic.get``) as envelope and history."""
    return decode_parts(message.body, message.headers, message.message_id,
                        message.content_type)


def decode_parts(
    body: bytes, headers: Mapping[str, Any] | None, message_id: str | None,
    content_type: str | None,
) -> tuple[Envelope, History]:
    """Envelope and history, never raising: malformed values become defaults.

    Call ``refusal`` first where a message is to be handed out; this is also what reads
    dead letters, which must list whatever they hold.
    """
    headers = headers or {}
    raw = headers.get(ENVELOPE_HEADERS)
    env_headers = {str(k): _text(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    envelope = Envelope(
        message_id=_text(message_id),
        body=body,
        headers=env_headers,
        content_type=_text(content_type) or "text",
    )
    not_before = _seconds(headers.get(NOT_BEFORE))
    if not_before > time.time() + NOT_BEFORE_LIMIT:
        not_before = 0.0
    history = History(
        failures=_int(headers.get(FAILURES)),
        first_failed_at=_seconds(headers.get(FIRST_FAILED_AT)) or None,
        last_error=_text(headers.get(LAST_ERROR, "")),
        not_before=not_before,
        redeliveries=_int(headers.get(REDELIVERIES)),
        republished=bool(headers.get(REPUBLISHED)),
    )
    return envelope, history


def refusal(headers: Mapping[str, Any] | None, message_id: str | None,
            content_type: str | None) -> str | None:
    """Why a message cannot be handed out as an envelope, or None when it can.

    Every envelope ``encode`` writes has an id (the store, dedup and the admin API find a
    message by it), a content type hisbridge knows (filters and mappings read the body by
    it), and envelope headers that are a small table of strings (they reach mappings and
    destinations as they are). A message lacking one was published by something else;
    repairing it would deliver a guess.
    """
    if not message_id or not isinstance(message_id, str):
        return "no message_id"
    if not content_type:
        return "no content_type"
    if content_type not in CONTENT_TYPES:
        return (f"content_type {_quoted(content_type)} is not one of "
                f"{', '.join(CONTENT_TYPES)}")
    if not headers or ENVELOPE_HEADERS not in headers:
        return None
    table = headers[ENVELOPE_HEADERS]
    if not isinstance(table, dict):
        return f"{ENVELOPE_HEADERS} is a {type(table).__name__}, not a table"
    size = 0
    for key, value in table.items():
        if isinstance(value, bytes | bytearray):
            return f"{ENVELOPE_HEADERS}[{_quoted(key)}] is not UTF-8"
        if not isinstance(value, str):
            return (f"{ENVELOPE_HEADERS}[{_quoted(key)}] is a {type(value).__name__}, "
                    "not a string")
        size += len(key) + len(value)
    if len(table) > HEADER_ENTRIES_LIMIT or size > HEADER_BYTES_LIMIT:
        return (f"{ENVELOPE_HEADERS} too large: {len(table)} entries, {size} characters "
                f"(at most {HEADER_ENTRIES_LIMIT} and {HEADER_BYTES_LIMIT})")
    return None


def odd_history(headers: Mapping[str, Any] | None) -> list[str]:
    """Names of attempt headers present with a value ``encode`` never writes (read as unset)."""
    if not headers:
        return []
    odd = [name for name in (FAILURES, REDELIVERIES) if name in headers
           and not _is_count(headers[name])]
    odd.extend(name for name in (FIRST_FAILED_AT, NOT_BEFORE) if name in headers
               and not _is_ms(headers[name]))
    if NOT_BEFORE not in odd and _seconds(headers.get(NOT_BEFORE)) > time.time() + NOT_BEFORE_LIMIT:
        odd.append(NOT_BEFORE)
    return odd


def refused(body: bytes, properties: Basic.Properties, reason: str) -> Outgoing:
    """The dead-lettered copy of a message ``refusal`` turned away, with ``reason``.

    It keeps what an operator needs to tell where it came from: the body, id, content type
    and the other identifying properties, and the header table when it can be sent again
    (not too large, only values AMQP can encode). Not the expiration (the copy must stay
    until someone looks), nor user_id (the broker refuses one naming another user). aiormq
    gives every publish a message id: one without gets its dead-letter id.
    """
    now = time.time()
    dead_id = new_id()
    headers: dict[str, Any] = {}
    note = ""
    original = properties.headers
    if original:
        try:
            size = len(amqp_encode.field_table(dict(original)))
        except (TypeError, ValueError):
            note = "; its header table was not kept (values AMQP cannot carry again)"
        else:
            if size <= KEPT_HEADERS_LIMIT:
                headers.update(original)
            else:
                note = f"; its header table ({size} bytes) was not kept"
    reason = f"{reason}: not delivered, not published by hisbridge?{note}"
    headers.update({DEAD_REASON: reason[:REASON_LIMIT], DEAD_AT: to_ms(now),
                    DEAD_ID: dead_id, REFUSED: 1})
    return Outgoing(body, Basic.Properties(
        content_type=properties.content_type,
        content_encoding=properties.content_encoding,
        headers=headers,
        delivery_mode=PERSISTENT,
        correlation_id=properties.correlation_id,
        reply_to=properties.reply_to,
        message_id=properties.message_id or dead_id,
        timestamp=properties.timestamp,
        message_type=properties.message_type,
        app_id=properties.app_id,
    ))


def dead_letter(message: AbstractMessage, queue: str) -> DeadLetter:
    """A message from a dead-letter queue as the contract's ``DeadLetter``.

    Messages we dead-lettered carry our reason and id. The broker dead-letters too (a quorum
    queue's delivery limit): those carry only ``x-death``, from which the reason is told.
    """
    envelope, history = decode(message)
    headers = message.headers or {}
    reason = _text(headers.get(DEAD_REASON, ""))
    dead_at = _seconds(headers.get(DEAD_AT))
    failures = history.failures
    if not reason:
        death = _first_death(headers)
        why = _text(death.get("reason", "unknown")) if death else ""
        if not why:
            reason = ("no reason recorded: dead-lettered neither by hisbridge nor by the "
                      "broker (published into the dead-letter queue directly?)")
        elif why == "delivery_limit":
            count = _int(headers.get("x-delivery-count"))
            reason = (
                "delivery limit reached: handed out"
                + (f" {count} times" if count else " too many times")
                + " without being settled (a consumer crashed or lost its connection)"
            )
        else:
            reason = f"dead-lettered by the broker ({why})"
        when = death.get("time") if death else None
        if isinstance(when, dt.datetime):
            dead_at = when.timestamp()
    return DeadLetter(
        queue=queue,
        id=dead_letter_id(message),
        envelope=envelope,
        reason=reason,
        failures=failures,
        first_failed_at=history.first_failed_at,
        dead_at=dead_at,
    )


def requeueable(message: AbstractMessage) -> bool:
    """Whether a dead letter can go back to its work queue: not one the consumer refused
    (or would refuse), which would only come straight back, or be handed out with the id
    aiormq makes up for a message that has none."""
    headers = message.headers or {}
    return REFUSED not in headers and refusal(headers, message.message_id,
                                              message.content_type) is None


def dead_letter_id(message: AbstractMessage) -> str:
    """Our dead-letter id, else the message id, else a digest of the message: something a
    requeue can name, the same at every listing, even for a message published by hand."""
    headers = message.headers or {}
    return (_text(headers.get(DEAD_ID, "")) or _text(message.message_id)
            or _digest(message.body, headers))


def _digest(body: bytes, headers: Mapping[str, Any]) -> str:
    # Not x-delivery-count: a quorum queue adds and raises it each time a listing gives the
    # message back.
    text = repr(sorted((str(k), repr(v)) for k, v in headers.items()
                       if k != "x-delivery-count"))
    return "sha256:" + hashlib.sha256(body + text.encode()).hexdigest()[:24]


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _quoted(value: Any) -> str:
    return repr(_text(value)[:100])


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _is_count(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value >= 0 and value.is_integer()
    return isinstance(value, int) and value >= 0


def _int(value: Any) -> int:
    return int(value) if _is_count(value) else 0


def _is_ms(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def to_ms(seconds: float) -> int:
    """Epoch seconds as the integer milliseconds our headers carry."""
    return round(seconds * 1000)


def _seconds(value: Any) -> float:
    return value / 1000.0 if _is_ms(value) else 0.0
