"""Switchable faults of the simulated platform.

A fault rule says what goes wrong, for which operation (all when omitted), how many times
(forever when omitted) and how likely (every matching request when omitted)::

    {"kind": "commit_then_timeout", "operation": "invoiceEBillOutpatient", "times": 1}
    {"kind": "latency", "seconds": 0.3}
    {"kind": "server_error", "status": 503, "probability": 0.1}

Kinds:

- ``latency``: wait ``seconds`` before handling.
- ``server_error``: answer HTTP ``status`` (default 500) without handling.
- ``busy``: answer result ``E9999`` (system busy) without handling.
- ``commit_then_timeout``: handle and commit, then hold the answer for ``seconds``
  (default 30): the client times out not knowing the invoice exists.
- ``bad_signature``: sign the answer wrongly.
- ``broken_base64``: corrupt the answer's Base64 ``message`` (signed as corrupted, so only
  the decoding fails).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, get_args

FaultKind = Literal[
    "latency", "server_error", "busy", "commit_then_timeout", "bad_signature", "broken_base64"
]
KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(slots=True)
class Fault:
    kind: str
    operation: str | None = None
    times: int | None = None
    probability: float = 1.0
    seconds: float = 0.0
    status: int = 500

    @classmethod
    def parse(cls, spec: Any) -> Fault:
        """Build a rule from its JSON form; ``ValueError`` names what is wrong."""
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        unknown = set(spec) - {"kind", "operation", "times", "probability", "seconds", "status"}
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(sorted(unknown))}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}")
        operation = spec.get("operation")
        if operation is not None and not isinstance(operation, str):
            raise ValueError("operation must be a string")
        times = spec.get("times")
        if times is not None and (not isinstance(times, int) or times < 1):
            raise ValueError("times must be a positive integer")
        probability = spec.get("probability", 1.0)
        if not isinstance(probability, (int, float)) or not 0 < probability <= 1:
            raise ValueError("probability must be in (0, 1]")
        default_seconds = 30.0 if kind == "commit_then_timeout" else 0.0
        seconds = spec.get("seconds", default_seconds)
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 600:
            raise ValueError("seconds must be between 0 and 600")
        status = spec.get("status", 500)
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status")
        return cls(kind, operation, times, float(probability), float(seconds), status)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "operation": self.operation, "times": self.times,
                "probability": self.probability, "seconds": self.seconds,
                "status": self.status}


class Faults:
    """The active rules. ``take`` consumes one use of the first rule that fires."""

    def __init__(self) -> None:
        self.rules: list[Fault] = []
        self.fired: dict[str, int] = {}

    def replace(self, rules: list[Fault]) -> None:
        self.rules = rules

    def clear(self) -> None:
        self.rules = []

    def take(self, kind: str, operation: str) -> Fault | None:
        for rule in self.rules:
            if rule.kind != kind or rule.operation not in (None, operation):
                continue
            if rule.times is not None and rule.times <= 0:
                continue
            if rule.probability < 1 and random.random() >= rule.probability:
                continue
            if rule.times is not None:
                rule.times -= 1
            self.fired[kind] = self.fired.get(kind, 0) + 1
            return rule
        return None
