"""Envelopes as AMQP messages, and AMQP messages back as envelopes and dead letters.

An envelope travels as a persistent message: ``message_id`` and ``content_type`` are AMQP
properties, the envelope's own headers (if it has any) sit in one nested table
(``hb-headers``) so they can never collide with the broker's (``x-death``,
``x-delivery-count``) or ours. The attempt
history rides in ``x-hb-*`` headers: that is what lets a retry or a dead letter carry its
count, first-failure time and reason across processes and restarts. Times are integer
epoch milliseconds: AMQP tables carry Python floats as 32-bit floats, far too coarse for
epoch seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractMessage
from pamqp.commands import Basic

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

REASON_LIMIT = 1000
PERSISTENT = 2


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
    headers = headers or {}
    raw = headers.get(ENVELOPE_HEADERS)
    env_headers = {str(k): _text(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    envelope = Envelope(
        message_id=message_id or "",
        body=body,
        headers=env_headers,
        content_type=content_type or "text",
    )
    first = headers.get(FIRST_FAILED_AT)
    history = History(
        failures=_int(headers.get(FAILURES)),
        first_failed_at=_seconds(first) if isinstance(first, int) else None,
        last_error=_text(headers.get(LAST_ERROR, "")),
        not_before=_seconds(headers.get(NOT_BEFORE)),
        redeliveries=_int(headers.get(REDELIVERIES)),
        republished=bool(headers.get(REPUBLISHED)),
    )
    return envelope, history


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
        why = _text(death.get("reason", "unknown")) if death else "unknown"
        if why == "delivery_limit":
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
        id=_text(headers.get(DEAD_ID, "")) or envelope.message_id,
        envelope=envelope,
        reason=reason,
        failures=failures,
        first_failed_at=history.first_failed_at,
        dead_at=dead_at,
    )


def dead_letter_id(message: AbstractMessage) -> str:
    headers = message.headers or {}
    return _text(headers.get(DEAD_ID, "")) or (message.message_id or "")


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def to_ms(seconds: float) -> int:
    """Epoch seconds as the integer milliseconds our headers carry."""
    return round(seconds * 1000)


def _seconds(value: Any) -> float:
    return value / 1000.0 if isinstance(value, int) else 0.0
