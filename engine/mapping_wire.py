"""The frames the engine and its mapping workers exchange over a worker's stdin and stdout.

A frame is a 4-byte big-endian length and that many bytes: a 4-byte header length, the
header (JSON) and the body (raw bytes, never re-encoded). A request's header names the
mapping, the content type and the headers; an answer's header lists each output's content
type, headers and body length (the bodies follow, concatenated) or carries the error text.
No pickling: the bytes a mapping reads and writes cross unchanged, and the engine's side is
one buffered write and one read per message, with no thread of its own.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

import orjson

_LENGTH = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


def frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return b"".join((_LENGTH.pack(_LENGTH.size + len(head) + len(body)),
                     _LENGTH.pack(len(head)), head, body))


def split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A frame's payload (without its length) as header and body."""
    (size,) = _LENGTH.unpack_from(payload)
    header = orjson.loads(payload[_LENGTH.size:_LENGTH.size + size])
    if not isinstance(header, dict):
        raise ValueError("frame header is not an object")
    return header, payload[_LENGTH.size + size:]


def frame_length(prefix: bytes) -> int:
    (size,) = _LENGTH.unpack(prefix)
    if size < _LENGTH.size or size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    return int(size)


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame from a blocking stream, or None at its end."""
    prefix = stream.read(_LENGTH.size)
    if len(prefix) < _LENGTH.size:
        return None
    size = frame_length(prefix)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return split(payload)


PREFIX = _LENGTH.size
