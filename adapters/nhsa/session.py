"""The operator's 9001 sign-in, kept and renewed.

Every business call carries the ``sign_no`` from a 9001 sign-in. One sign-in serves every call
of a destination until it expires: after ``ttl`` seconds, at local midnight (platforms sign
operators in per day), or when the platform refuses a call because of it (the caller then
``invalidate``s that ``sign_no`` and asks again). Concurrent callers wait for one sign-in
rather than each signing in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import date


class SignInSession:
    def __init__(
        self,
        sign_in: Callable[[], Awaitable[str]],
        *,
        ttl: float = 12 * 3600.0,
        renew_daily: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sign_in = sign_in
        self._ttl = ttl
        self._renew_daily = renew_daily
        self._clock = clock
        self._sign_no: str | None = None
        self._expires = 0.0
        self._day: date | None = None
        self._lock = asyncio.Lock()
        self.sign_ins = 0

    @property
    def current(self) -> str | None:
        return self._sign_no if self._valid() else None

    def _valid(self) -> bool:
        if self._sign_no is None:
            return False
        now = self._clock()
        if now >= self._expires:
            return False
        return not (self._renew_daily and date.fromtimestamp(now) != self._day)

    async def sign_no(self) -> str:
        """The current ``sign_no``, signing in first when there is none or it expired."""
        if self._valid():
            assert self._sign_no is not None
            return self._sign_no
        async with self._lock:
            if not self._valid():
                sign_no = await self._sign_in()
                now = self._clock()
                self._sign_no, self._expires = sign_no, now + self._ttl
                self._day = date.fromtimestamp(now)
                self.sign_ins += 1
            assert self._sign_no is not None
            return self._sign_no

    def invalidate(self, sign_no: str) -> None:
        """Forget ``sign_no`` (the platform refused it); a newer one is kept."""
        if self._sign_no == sign_no:
            self._sign_no = None

    def forget(self) -> str | None:
        """Drop the sign-in (at close) and return it, for a 9002 sign-out."""
        sign_no, self._sign_no = self.current, None
        return sign_no
