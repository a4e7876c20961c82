"""The unit of work that flows through hisbridge, and its identifiers."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

ContentType = Literal["hl7v2", "fhir+json", "json", "xml", "text"]
CONTENT_TYPES: tuple[str, ...] = ("hl7v2", "fhir+json", "json", "xml", "text")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class _MonotonicUlid:
    """ULID generator whose ids sort by creation time even within one millisecond.

    Ids are 26 Crockford base-32 characters: 48 bits of Unix milliseconds and 80 bits that are
    random at the start of each millisecond and incremented within it, so that ids generated
    by one process are strictly increasing (message search and replay sort by id).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._rand = 0
        self._time_chars = ""

    def __call__(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                self._rand += 1
            else:
                self._last_ms = ms
                self._time_chars = _encode(ms, 10)
                # Leave headroom so increments within one millisecond cannot overflow.
                self._rand = int.from_bytes(os.urandom(10), "big") >> 1
            rand = self._rand & ((1 << 80) - 1)
            prefix = self._time_chars
        # 80 random bits are exactly 10 bytes, so base32 encodes them in 16 characters with
        # no padding; translating the RFC 4648 alphabet position by position keeps the order.
        return prefix + base64.b32encode(rand.to_bytes(10, "big")).decode().translate(_TO_CROCKFORD)


new_id = _MonotonicUlid()


@dataclass(frozen=True, slots=True)
class Message:
    """A message as received from a peer, or as produced by a mapping.

    ``body`` is kept exactly as received (the source layer); decoding happens in adapters
    and mappings, never in place.
    """

    channel: str
    content_type: str
    body: bytes = field(repr=False)  # patient data: never in a log line or a traceback
    id: str = field(default_factory=new_id)
    headers: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    dedup_key: str | None = None
    attempt: int = 0
    received_at: float = field(default_factory=time.time)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


def id_time(message_id: str) -> float:
    """The creation time (epoch seconds) encoded in a message id."""
    value = 0
    for ch in message_id[:10]:
        value = value * 32 + _CROCKFORD.index(ch)
    return value / 1000.0
