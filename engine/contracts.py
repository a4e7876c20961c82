"""The small protocols that sources, destinations and mappings satisfy.

Adapters need no base class: a class with these methods is a source or a destination, and
mypy checks it where the engine builds it from config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engine.message import Message
from queues.contract import Envelope

if TYPE_CHECKING:
    from engine.hl7 import Hl7Message


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingest did with a message: stored it (new) or recognised a duplicate."""

    message_id: str
    duplicate: bool


class Ingest(Protocol):
    """How a source hands what it received to the engine.

    Both calls return only after the messages are durably stored and enqueued, and raise
    ``TransientError`` when the engine cannot take them now (the source answers AE / 503);
    they never return early.
    """

    async def __call__(
        self, message: Message, *, hl7: Hl7Message | None = None
    ) -> IngestResult: ...

    async def many(
        self, items: Sequence[tuple[Message, Hl7Message | None]]
    ) -> list[IngestResult]:
        """A batch, in order, stored in one transaction. On TransientError it may be
        stored and not yet published: sent again, its messages are recognised duplicates."""
        ...


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
