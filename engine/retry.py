"""Retry policies: how long to wait before the next attempt, and when to give up."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    """Exponential backoff with jitter, bounded by attempts and by age.

    The queue stores the computed next-attempt time, so a retry survives a restart.

    Attributes:
        max_attempts: total delivery attempts including the first; then dead-letter.
        initial_delay: seconds before the second attempt.
        max_delay: cap on any single delay.
        multiplier: growth factor between consecutive delays.
        jitter: fraction (0..1) of each delay randomised, so that peers recovering from an
            outage are not hit by every queued message at the same instant.
        max_age: seconds after the first failure when the message is dead-lettered even if
            attempts remain (0 = no limit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=10, ge=1)
    initial_delay: float = Field(default=1.0, ge=0)
    max_delay: float = Field(default=300.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    max_age: float = Field(default=86_400.0, ge=0)

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be >= initial_delay")
        return self

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, failures - 1))
        if self.jitter and base:
            spread = base * self.jitter
            base += (rng or random).uniform(-spread, spread)
        return max(0.0, min(base, self.max_delay))

    def merged(self, **overrides: object) -> RetryPolicy:
        """This policy with some fields replaced (a destination overriding the defaults)."""
        data = self.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        return RetryPolicy.model_validate(data)
