"""A gateway account's keys and a client's HTTP session, held the same way by every gateway.

The keys an account's settings reference (``WechatPaySettings.credentials()`` ...) are read
from files or the environment and parsed, which may fail with ``ConfigError``. Every
gateway's callback verifier resolves them once, on first use or at ``load()`` (so a bad
reference fails when the source starts); every client resolves them at ``start()`` together
with opening its ``aiohttp`` session, and refuses calls until then. What is signed, sent and
checked with the keys stays with each gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import aiohttp

from engine.errors import TransientError

Keys = TypeVar("Keys")


class AccountKeys(Generic[Keys]):
    """An account's keys, resolved from its settings on first use and then kept.

    Args:
        resolve: loads the keys (the settings' ``credentials``); raises ``ConfigError``.
        keys: already loaded keys (tests), used as they are.
    """

    def __init__(self, resolve: Callable[[], Keys], keys: Keys | None = None) -> None:
        self._resolve = resolve
        self._keys = keys

    def get(self) -> Keys:
        if self._keys is None:
            self._keys = self._resolve()
        return self._keys


class GatewaySession(Generic[Keys]):
    """A client's keys and HTTP session, from ``open()`` (at ``start()``) to ``close()``.

    Args:
        gateway: the gateway as error messages name it (``"WeChat Pay"``).
        resolve: loads the account's keys (the settings' ``credentials``).
    """

    def __init__(self, gateway: str, resolve: Callable[[], Keys]) -> None:
        self.gateway = gateway
        self._resolve = resolve
        self._keys: Keys | None = None
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> Keys:
        """Load the keys (``ConfigError`` when a reference is bad), then open the session."""
        self._keys = self._resolve()
        self._http = aiohttp.ClientSession()
        return self._keys

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def ready(self) -> tuple[aiohttp.ClientSession, Keys]:
        """The session and keys for a call; ``TransientError`` (retry later) before ``open``
        or after ``close``."""
        if self._http is None or self._keys is None:
            raise TransientError(f"{self.gateway} client is not started")
        return self._http, self._keys

    @property
    def keys(self) -> Keys:
        """The keys, for signing outside a call (the client must have been started)."""
        assert self._keys is not None, "start() first"
        return self._keys
