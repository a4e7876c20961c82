"""Transaction Bundles sent at the same time, merged into one transaction request.

Under load a FHIR destination has many deliveries in flight, each a small transaction (the
ADT mapping makes Patient + Encounter). Every request costs both sides far more than its two
entries do: HTTP parsing, headers, a server-side transaction. The grouper collects the
Bundles waiting and posts them as one transaction, then gives each message its own part of
the answer.

Requests start at most once per ``interval``, unless ``max_messages`` Bundles wait. A Bundle
arriving after a quiet spell goes at once, alone. Under load, when a mapped message arrives
every half millisecond or so, each request carries what came since the last one. Without the
interval most requests carried two or three Bundles and the HTTP cost per message stayed
high (docs/performance.md); with it a delivery waits at most that much longer, which no
receiving system notices.

A merged transaction is all or nothing, which keeps each message's outcome honest:

- accepted: every message in it was stored;
- refused for a reason worth retrying (5xx, 429, timeout, connection): every message
  retries;
- refused for good (other 4xx): the server does not say which message caused it, so each
  is sent again alone and gets its own answer.

Two Bundles that name the same resource (the same conditional URL, a repeated fullUrl)
never share a transaction: FHIR servers refuse a transaction that touches one resource
twice, and an update must not overtake the one before it. The later Bundle waits for the
next request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from engine.contracts import Result
from queues.contract import Envelope

Post = Callable[[bytes, list[str]], Awaitable[tuple[int, bytes | None, dict[str, str]]]]
SendOne = Callable[[Envelope, dict[str, Any]], Awaitable[Result]]


@dataclass(slots=True)
class _Waiting:
    envelope: Envelope
    bundle: dict[str, Any]
    entries: list[Any]
    names: frozenset[str]
    future: asyncio.Future[Result]


def resource_names(entries: list[Any]) -> frozenset[str]:
    """What a transaction's entries name: fullUrls and the resources they write or read."""
    names: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str) and full_url:
            names.add(full_url)
        request = entry.get("request")
        if not isinstance(request, dict):
            continue
        url, method = request.get("url"), request.get("method")
        if isinstance(url, str) and method != "POST":
            names.add(url)
        if_none_exist = request.get("ifNoneExist")
        if isinstance(url, str) and isinstance(if_none_exist, str):
            names.add(f"{url}?{if_none_exist}")
    return frozenset(names)


class TransactionGrouper:
    """Posts waiting transaction Bundles together, at most ``max_requests`` at a time."""

    def __init__(
        self, post: Post, send_one: SendOne, outcome_for: Callable[[int], str],
        raise_for: Callable[[int, bytes | None, dict[str, str]], None], *,
        max_messages: int, max_requests: int, interval: float = 0.0,
    ) -> None:
        self._post = post
        self._send_one = send_one
        self._outcome_for = outcome_for
        self._raise_for = raise_for
        self.max_messages = max_messages
        self.max_requests = max(1, max_requests)
        self.interval = interval
        self._last_start = float("-inf")
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._running: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()  # names of the groups being sent
        self._freed = asyncio.Event()  # set when a group's request is over

    async def send(self, envelope: Envelope, bundle: dict[str, Any]) -> Result:
        entries = bundle.get("entry")
        if not isinstance(entries, list) or not entries or self.max_messages < 2:
            return await self._send_one(envelope, bundle)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(envelope, bundle, entries, resource_names(entries),
                                      future))
        if len(self._running) < self.max_requests:
            task = asyncio.create_task(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await future

    async def close(self) -> None:
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiting in self._waiting:
            waiting.future.cancel()
        self._waiting.clear()

    async def _drain(self) -> None:
        # One turn of the loop first, so the deliveries that started together go together.
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        while self._waiting:
            wait = self._last_start + self.interval - loop.time()
            if wait > 0 and len(self._waiting) < self.max_messages:
                await asyncio.sleep(wait)
            self._last_start = loop.time()
            self._freed.clear()
            group, names = self._take()
            if not group:
                if self._waiting:  # all wait for a resource another request is writing
                    await self._freed.wait()
                continue
            self._in_flight |= names
            try:
                await self._send_group(group)
            except BaseException as exc:
                for waiting in group:
                    if not waiting.future.done():
                        waiting.future.set_exception(exc)
                raise
            finally:
                self._in_flight -= names
                self._freed.set()

    def _take(self) -> tuple[list[_Waiting], set[str]]:
        """The oldest waiting Bundles that can share a transaction, and what they name.

        A Bundle naming a resource of the group, of a request in flight or of a Bundle left
        waiting before it stays waiting: nothing overtakes an earlier write to its resource.
        """
        group: list[_Waiting] = []
        names: set[str] = set()
        blocked = set(self._in_flight)
        kept: list[_Waiting] = []
        while self._waiting and len(group) < self.max_messages:
            waiting = self._waiting.popleft()
            if waiting.future.done():  # its delivery was cancelled while it waited
                continue
            if names.isdisjoint(waiting.names) and blocked.isdisjoint(waiting.names):
                group.append(waiting)
                names |= waiting.names
            else:
                kept.append(waiting)
                blocked |= waiting.names
        self._waiting.extendleft(reversed(kept))
        return group, names

    async def _send_group(self, group: list[_Waiting]) -> None:
        if len(group) == 1:
            await self._settle_alone(group[0])
            return
        merged = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [entry for waiting in group for entry in waiting.entries]}
        try:
            status, body, headers = await self._post(
                orjson.dumps(merged), [w.envelope.message_id for w in group])
            outcome = self._outcome_for(status)
            if outcome == "dead_letter":
                # Which message the server refused is not said: each goes again alone.
                await asyncio.gather(*(self._settle_alone(w) for w in group))
                return
            self._raise_for(status, body, headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for waiting in group:
                _fail(waiting.future, exc)
            return
        for waiting, result in zip(group, split_answer(status, body, group), strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)

    async def _settle_alone(self, waiting: _Waiting) -> None:
        if waiting.future.done():
            return
        try:
            result = await self._send_one(waiting.envelope, waiting.bundle)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _fail(waiting.future, exc)
            return
        if not waiting.future.done():
            waiting.future.set_result(result)


def split_answer(status: int, body: bytes | None, group: list[_Waiting]) -> list[Result]:
    """Each message's part of a transaction-response, in the order of its entries.

    An answer that cannot be split (too large to read, not a Bundle, the wrong number of
    entries) still means the server took the whole transaction: every message is sent,
    with the reason its own answer is missing in the detail.
    """
    detail = f"HTTP {status} (transaction of {len(group)} messages)"
    entries = answer_entries(body)
    total = sum(len(w.entries) for w in group)
    if entries is None or len(entries) != total:
        why = ("answer over the size limit" if body is None else
               "answer not a transaction-response" if entries is None else
               f"answer has {len(entries)} entries for {total}")
        return [Result(detail=f"{detail}; {why}", content_type="fhir+json") for _ in group]
    results, start = [], 0
    for waiting in group:
        part = entries[start:start + len(waiting.entries)]
        start += len(waiting.entries)
        answer = {"resourceType": "Bundle", "type": "transaction-response", "entry": part}
        results.append(Result(detail=with_locations(detail, part), response=orjson.dumps(answer),
                              content_type="fhir+json"))
    return results


def answer_entries(body: bytes | None) -> list[Any] | None:
    """The entries of a Bundle answer, or None when the body is not one."""
    if body is None:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return None
    entries = doc.get("entry")
    return entries if isinstance(entries, list) else None


def with_locations(detail: str, entries: list[Any]) -> str:
    """The detail with the location each entry was written to, as an operator looks for."""
    found = [str(e["response"].get("location", ""))[:120] for e in entries
             if isinstance(e, dict) and isinstance(e.get("response"), dict)]
    located = [f for f in found if f]
    return f"{detail} {' '.join(located)}" if located else detail


def _fail(future: asyncio.Future[Result], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
