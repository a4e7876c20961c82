"""The JSON envelope around every call: building requests, reading answers.

Request: the envelope fields (``infno``, ``msgid``, institution, operator, ``sign_no``,
``inf_time`` ...) followed by ``input``. The input arrives as JSON bytes from a mapping and is
spliced into the envelope as is, so its decimals reach the platform digit for digit.

Answer: ``infcode`` ("0" success), ``err_msg``, ``warn_msg``, ``inf_refmsgid`` and ``output``.
It is decoded with decimals as ``Decimal`` (never float) and re-encoded the same way.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from adapters.exact_json import decode_json
from engine.errors import PermanentError


class MalformedAnswer(PermanentError):
    """An answer that cannot be read or does not add up."""


class MsgIdGenerator:
    """``msgid`` = institution code (12) + ``yyyyMMddHHmmss`` + a 4-digit sequence.

    The sequence restarts every second at a random point in the lower half of its range, so
    that a process restarted within the same second is unlikely to repeat an id (and the
    platform's "duplicate msgid" refusal is resent once with a fresh id, see ``classify``).
    When a second's sequence is used up the generator borrows the next second, so ids stay
    unique and increasing within a process. With several processes sending for one
    institution, give each a distinct ``node`` digit (0-9): it becomes the sequence's first
    digit, leaving 1000 ids per second per process.
    """

    def __init__(self, fixmedins_code: str, node: int | None = None) -> None:
        if len(fixmedins_code) != 12:
            raise ValueError("fixmedins_code must be 12 characters")
        self._prefix = fixmedins_code
        self._node = node
        self._limit = 10_000 if node is None else 1_000
        self._second = 0
        self._seq = 0
        self._lock = threading.Lock()

    def __call__(self, now: float | None = None) -> str:
        with self._lock:
            second = int(time.time() if now is None else now)
            if second > self._second:
                self._second, self._seq = second, secrets.randbelow(self._limit // 2)
            elif self._seq >= self._limit:
                self._second, self._seq = self._second + 1, 0
            seq = self._seq
            self._seq += 1
            stamp = datetime.fromtimestamp(self._second).strftime("%Y%m%d%H%M%S")
        if self._node is not None:
            seq += self._node * 1000
        return f"{self._prefix}{stamp}{seq:04d}"


def encode_request(fields: dict[str, str], input_json: bytes) -> bytes:
    """The envelope as bytes: ``fields`` then ``"input": <input_json>`` verbatim."""
    head = orjson.dumps(fields)
    return head[:-1] + b',"input":' + input_json + b"}"


def _decimal(value: Any) -> Any:
    if isinstance(value, Decimal) and value.is_finite():
        # Fixed-point digits: str() would write 1E+2, or NaN, which is no JSON.
        return orjson.Fragment(format(value, "f"))
    raise TypeError(f"cannot encode {type(value).__name__} {str(value)[:20]}")


def encode_json(value: Any) -> bytes:
    """JSON bytes with ``Decimal`` written as a JSON number with its exact digits."""
    return orjson.dumps(value, default=_decimal)


@dataclass(frozen=True, slots=True)
class Answer:
    """A decoded platform answer."""

    infcode: str
    err_msg: str
    warn_msg: str
    inf_refmsgid: str
    output: Any
    has_output: bool


def decode_answer(raw: bytes, infno: str) -> Answer:
    """Read an answer envelope.

    Raises:
        MalformedAnswer: not JSON, not an object, or without ``infcode``.
    """
    try:
        doc = decode_json(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = raw[:80].decode("utf-8", "replace")
        raise MalformedAnswer(f"{infno} answer is not JSON ({exc}): {snippet!r}") from None
    if not isinstance(doc, dict):
        raise MalformedAnswer(f"{infno} answer is not a JSON object")
    infcode = doc.get("infcode")
    if infcode is None or isinstance(infcode, (dict, list)):
        raise MalformedAnswer(f"{infno} answer has no infcode")
    return Answer(
        infcode=str(infcode),
        err_msg=str(doc.get("err_msg") or ""),
        warn_msg=str(doc.get("warn_msg") or ""),
        inf_refmsgid=str(doc.get("inf_refmsgid") or ""),
        output=doc.get("output"),
        has_output="output" in doc and doc["output"] is not None,
    )


def now_text(now: float | None = None) -> str:
    """``inf_time``: local time as ``yyyy-MM-dd HH:mm:ss``."""
    return datetime.fromtimestamp(time.time() if now is None else now).strftime(
        "%Y-%m-%d %H:%M:%S"
    )
