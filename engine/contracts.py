"""The small protocols that sources, destinations and mappings satisfy.

Adapters need no base class: a class with these methods is a source or a destination, and
mypy checks it where the engine builds it from config.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from engine.message import Message
from queues.contract import Envelope


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingest did with a message: stored it (new) or recognised a duplicate."""

    message_id: str
    duplicate: bool


Ingest = Callable[..., Awaitable[IngestResult]]
"""``await ingest(message, hl7=parsed_or_None) -> IngestResult``.

Returns only after the message is durably stored and enqueued; raises ``TransientError``
when the engine cannot take it now (the source answers AE / 503), never returns early.
"""


class Source(Protocol):
    """Receives messages from peers for one channel and answers them from ingest's result."""

    async def start(self, ingest: Ingest) -> None:
        """Begin accepting; returns once listening."""
        ...

    async def stop(self) -> None:
        """Stop accepting new messages and finish (or abandon unanswered) the in-flight ones."""
        ...


@dataclass(frozen=True, slots=True)
class Result:
    """A successful send: the peer's answer, kept for the message history and routing."""

    detail: str = ""
    response: bytes | None = None
    content_type: str | None = None


class Destination(Protocol):
    """Sends envelopes to one peer; raises TransientError or PermanentError on failure."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, envelope: Envelope) -> Result: ...


@dataclass(frozen=True, slots=True)
class Payload:
    """A body with its content type, as mappings take and produce them."""

    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


class Mapper(Protocol):
    """A loaded mapping. ``apply`` returns the outputs ([] means nothing to send).

    Raises ``MappingError`` naming the mapping, the rule and the path when it cannot map.
    """

    name: str

    def apply(self, payload: Payload) -> list[Payload]: ...


class Passthrough:
    """The identity mapping: a channel without a mapping forwards what it received."""

    name = "passthrough"

    def apply(self, payload: Payload) -> list[Payload]:
        return [payload]


def message_payload(message: Message) -> Payload:
    return Payload(message.body, message.content_type, message.headers)
