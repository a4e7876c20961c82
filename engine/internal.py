"""The ``internal`` source: a channel fed by the engine itself, not by a listener.

Answers routed from a destination (``response_to``) and replays arrive on such channels, so
a chain such as pre-settle → settle → result to the HIS is a sequence of channels, each with
its own mapping, destinations, retries and history.
"""

from __future__ import annotations

from typing import Literal

from engine.contracts import Ingest
from engine.settings import Model


class InternalSourceConfig(Model):
    type: Literal["internal"]

    def build(self, channel: str) -> InternalSource:
        return InternalSource(channel)


class InternalSource:
    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.ingest: Ingest | None = None

    async def start(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def stop(self) -> None:
        self.ingest = None
