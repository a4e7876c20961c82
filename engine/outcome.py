"""The one place that decides what happens to a delivery after an attempt.

Adapters raise ``TransientError`` or ``PermanentError`` (or return normally); workers call
``decide`` and settle the delivery with its answer. No adapter acks, sleeps-and-retries or
swallows on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from engine.errors import ConfigError, PermanentError, RejectedInput, TransientError
from engine.retry import RetryPolicy


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with a delivery: ack, retry at ``retry_at`` (epoch seconds), or dead-letter."""

    action: Action
    reason: str = ""
    retry_at: float = 0.0

    @classmethod
    def ack(cls) -> Outcome:
        return _ACK


_ACK = Outcome(Action.ACK)


def describe(error: BaseException) -> str:
    """A one-line reason for an error, safe to store and show (no stack, bounded length)."""
    text = str(error) or type(error).__name__
    if not isinstance(error, (TransientError, PermanentError, RejectedInput, ConfigError)):
        text = f"{type(error).__name__}: {text}"
    return text[:1000]


def decide(
    error: BaseException | None,
    *,
    failures_before: int,
    first_failed_at: float | None,
    now: float,
    policy: RetryPolicy,
) -> Outcome:
    """Turn the result of one attempt into an Outcome.

    Args:
        error: what the attempt raised, or None on success.
        failures_before: failed attempts before this one.
        first_failed_at: when the first failure happened (None if this is the first).
        now: current time, epoch seconds.
        policy: the destination's retry policy.

    Unknown exception types are treated as transient: a bug in our code or an unexpected
    library error should not destroy a message, and the retry limit still bounds the loop.
    """
    if error is None:
        return _ACK
    reason = describe(error)
    if isinstance(error, PermanentError):
        return Outcome(Action.DEAD_LETTER, reason)
    failures = failures_before + 1
    if failures >= policy.max_attempts:
        return Outcome(Action.DEAD_LETTER, f"gave up after {failures} attempts: {reason}")
    started = first_failed_at if first_failed_at is not None else now
    delay = policy.delay(failures)
    if isinstance(error, TransientError) and error.retry_after is not None:
        delay = max(delay, min(error.retry_after, policy.max_delay))
    if policy.max_age and now + delay - started > policy.max_age:
        return Outcome(
            Action.DEAD_LETTER, f"gave up after {policy.max_age:g}s of retries: {reason}"
        )
    return Outcome(Action.RETRY, reason, now + delay)
