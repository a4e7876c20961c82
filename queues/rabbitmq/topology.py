"""Names and arguments of the RabbitMQ objects behind one logical queue.

For a logical queue ``Q`` (``channel:adt`` or ``dest:adt/cdr``) under the prefix ``P``::

    P.Q                 work queue: durable; quorum (or classic), explicit delivery limit,
                        dead-lettering to P.dead with routing key Q
    P.Q.delay.<tier>    one per delay tier: no consumers, a fixed message TTL, expired
                        messages dead-letter back into P.Q through the default exchange
    P.dead              direct exchange for every dead letter of this prefix
    P.Q.dead            the dead-letter queue of Q, bound to P.dead with routing key Q

Ordered queues are classic queues with single active consumer and two priorities: a retried
message is republished at priority 1 so that it is the next one handed out, which is how the
head of an ordered queue "stays put" in a broker that cannot reinsert at the head. They need
no delay queues (an ordered retry waits in the consumer, see ``Delivery.not_before``).

Queue arguments cannot change once a queue exists; the broker answers PRECONDITION_FAILED,
which the backend turns into a message naming the queue, the argument that differs, and
what to do (``parse_mismatch``, ``describe_mismatch``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

QueueType = Literal["quorum", "classic"]


def tier_label(seconds: float) -> str:
    """``5`` → ``5s``, ``300`` → ``300s``, ``0.5`` → ``500ms``."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


@dataclass(frozen=True, slots=True)
class QueueTopology:
    """Everything the backend declares and addresses for one logical queue."""

    logical: str
    prefix: str
    queue_type: QueueType
    ordered: bool
    delivery_limit: int
    max_length: int | None
    tiers: tuple[float, ...]
    dead_letter_strategy: str = "at-least-once"

    @property
    def work(self) -> str:
        return f"{self.prefix}.{self.logical}"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.{self.logical}.dead"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_routing_key(self) -> str:
        return self.logical

    @property
    def effective_type(self) -> QueueType:
        """Ordered queues are classic: they need message priorities (see module doc)."""
        return "classic" if self.ordered else self.queue_type

    @property
    def counts_redeliveries(self) -> bool:
        """Classic queues have no broker-side delivery limit; the consumer keeps count."""
        return self.effective_type == "classic"

    def delay_queue(self, tier: float) -> str:
        return f"{self.prefix}.{self.logical}.delay.{tier_label(tier)}"

    @property
    def delay_queues(self) -> list[tuple[float, str]]:
        if self.ordered:
            return []
        return [(t, self.delay_queue(t)) for t in self.tiers]

    def work_arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": self.effective_type,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": self.dead_routing_key,
        }
        if self.max_length is not None:
            args["x-max-length"] = self.max_length
            args["x-overflow"] = "reject-publish"
        if self.effective_type == "quorum":
            args["x-delivery-limit"] = self.delivery_limit
            self._dead_letter_arguments(args)
        if self.ordered:
            args["x-single-active-consumer"] = True
            args["x-max-priority"] = 1
        return args

    def delay_arguments(self, tier: float) -> dict[str, Any]:
        args: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-message-ttl": max(1, round(tier * 1000)),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.work,
        }
        if self.queue_type == "quorum":
            self._dead_letter_arguments(args)
        return args

    def _dead_letter_arguments(self, args: dict[str, Any]) -> None:
        # At-least-once: the broker keeps a dead-lettered message until the target queue
        # confirmed it (it needs reject-publish overflow); at-most-once may drop it.
        args["x-dead-letter-strategy"] = self.dead_letter_strategy
        if self.dead_letter_strategy == "at-least-once":
            args["x-overflow"] = "reject-publish"

    def dead_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": self.queue_type}

    def type_of(self, name: str) -> QueueType | None:
        """The queue type declared for ``name``, one of this topology's queues, else None."""
        if name == self.work:
            return self.effective_type
        if name == self.dead or any(name == n for _, n in self.delay_queues):
            return self.queue_type
        return None

    def all_queues(self) -> list[str]:
        return [self.work, self.dead, *(name for _, name in self.delay_queues)]

    def route_delay(self, remaining: float) -> str | None:
        """The delay queue for a wait of ``remaining`` seconds, or None to wait in the consumer.

        The largest tier not longer than the wait: the message comes back early, and the
        consumer sends it round again (or holds it for the last fraction of a tier), so a
        retry never happens before its time and a long wait is a few hops.
        """
        best = None
        for tier, name in self.delay_queues:
            if tier <= remaining:
                best = name
        return best

    @property
    def hold_limit(self) -> float:
        """Longest wait a consumer holds a message itself instead of re-delaying it."""
        return min(self.tiers) if self.tiers else float("inf")


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One argument of an existing queue or exchange that differs from what is declared."""

    kind: str  # "queue" or "exchange"
    name: str
    argument: str
    declared: str
    existing: str


# PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'p.q' in vhost '/':
#     received 'quorum' but current is 'classic'
# ... received the value 'p.dead' of type 'longstr' but current is none
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']*)' for (?P<kind>queue|exchange) '(?P<name>.*)' "
    r"in vhost '.*': received (?P<declared>.*) but current is "
    r"(?P<existing>none|the value '.*?' of type '[^']*'|'[^']*')"
)
_VALUE = re.compile(r"^the value '(?P<value>.*)' of type '[^']*'$")


def parse_mismatch(broker_text: str) -> Mismatch | None:
    """The broker's PRECONDITION_FAILED text as a ``Mismatch``, None if it says otherwise."""
    found = _INEQUIVALENT.search(broker_text)
    if found is None:
        return None
    return Mismatch(found["kind"], found["name"], found["arg"],
                    _value(found["declared"]), _value(found["existing"]))


def _value(text: str) -> str:
    text = text.strip()
    plain = _VALUE.match(text)
    if plain is not None:
        return f"'{plain['value']}'"
    return text  # already quoted ('classic'), or none


def describe_mismatch(logical: str, mismatch: Mismatch | None, broker_text: str) -> str:
    """Why start-up stops: which object, which argument, both values, and what to do."""
    if mismatch is None:
        what = f"a RabbitMQ object behind {logical} exists with other settings ({broker_text})"
    else:
        what = (
            f"RabbitMQ {mismatch.kind} '{mismatch.name}' (behind {logical}) exists with other "
            f"settings: {mismatch.argument}: this configuration declares {mismatch.declared}, "
            f"the {mismatch.kind} has {mismatch.existing}"
        )
    if mismatch is not None and mismatch.kind == "exchange":
        return (f"{what}. An exchange cannot change in place: delete it (it is declared "
                "again at start), or restore the previous settings")
    return (
        f"{what}. Queue arguments cannot change in place: drain the queue and delete it (it "
        "is declared again at start), or restore the previous queue settings"
    )
