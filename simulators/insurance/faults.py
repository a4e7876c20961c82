"""Switchable faults, set over HTTP by tests and demos.

``POST /control/faults`` with a JSON object sets any of these (each takes ``times``: how many
matching requests it applies to, -1 for all; and ``infnos`` / ``operations``: which requests
match, all when absent):

- ``latency``: ``{"seconds": 0.2}`` before handling.
- ``error``: ``{"status": 503}`` answered instead of handling (nothing is processed).
- ``drop``: the connection is closed before handling (nothing is processed).
- ``commit_then``: ``{"mode": "hang" | "drop", "seconds": 30}``: the request is processed
  and committed, then the answer is withheld (hang) or the connection closed (drop).
- ``malformed``: ``{"kind": "missing_output" | "non_numeric_amount" | "not_json"}``: the
  request is processed, the answer is damaged.
- ``xml``: ``{"kind": "xxe" | "billion_laughs" | "xxe_in_result" | "billion_laughs_in_result",
  "url": "http://..."}``: the SOAP answer carries a hostile DTD, in the envelope or inside the
  XML string result.

``DELETE /control/faults`` clears them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

NAMES = ("latency", "error", "drop", "commit_then", "malformed", "xml")


@dataclass
class Fault:
    name: str
    params: dict[str, Any]
    times: int = -1
    match: frozenset[str] | None = None

    def matches(self, key: str) -> bool:
        return self.times != 0 and (self.match is None or key in self.match)


@dataclass
class Faults:
    active: dict[str, Fault] = field(default_factory=dict)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def configure(self, spec: dict[str, Any]) -> None:
        for name, value in spec.items():
            if name not in NAMES:
                raise ValueError(f"unknown fault {name!r} (known: {', '.join(NAMES)})")
            if value is None:
                self.active.pop(name, None)
                continue
            if not isinstance(value, dict):
                raise ValueError(f"fault {name} takes an object")
            params = dict(value)
            times = int(params.pop("times", -1))
            keys = params.pop("infnos", None) or params.pop("operations", None)
            match = frozenset(str(k) for k in keys) if keys else None
            self.active[name] = Fault(name, params, times, match)

    def clear(self) -> None:
        self.active.clear()

    def take(self, name: str, key: str) -> Fault | None:
        """The fault ``name`` if it applies to request ``key`` (consuming one use)."""
        fault = self.active.get(name)
        if fault is None or not fault.matches(key):
            return None
        if fault.times > 0:
            fault.times -= 1
        return fault

    def describe(self) -> dict[str, Any]:
        return {
            n: {**f.params, "times": f.times, "match": sorted(f.match) if f.match else None}
            for n, f in self.active.items()
        }

    async def hang(self, seconds: float) -> None:
        """Withhold an answer for ``seconds`` or until the simulator stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), seconds)
