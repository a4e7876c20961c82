"""One HTTP call to a gateway, with a deadline and the one distinction money needs.

For a call that moves money, *not sent* and *sent but unanswered* are different failures:
the first is safe to retry, the second must be resolved by a query first (``InDoubtError``).
A refused or timed-out connection is *not sent*; a timeout, reset or disconnect after the
connection was made is *sent*, and so is an answer cut short or larger than the limit (the
gateway got the request). Read-only calls raise ``TransientError`` either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from adapters.http import AnswerTooLarge, read_capped
from engine.errors import InDoubtError, TransientError


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    money: bool,
    deadline: float,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    max_body: int = 16 * 1024 * 1024,
) -> HttpAnswer:
    """Send one request and read the whole answer.

    Args:
        what: names the call in error messages (``"create order"``), never the payload.
        money: the call moves money; an unanswered send raises ``InDoubtError``.
        deadline: seconds for the whole call (connect, send, read).

    Raises:
        TransientError: not sent (connection refused / connect timeout), or a read-only
            call failed.
        InDoubtError: a money call was sent and no complete answer came back.
    """
    client_timeout = aiohttp.ClientTimeout(total=deadline, sock_connect=min(deadline, 5.0))
    try:
        async with session.request(
            method, url, data=data, headers=dict(headers or {}), timeout=client_timeout,
            allow_redirects=False,
        ) as response:
            body = await read_capped(response, max_body)
            return HttpAnswer(response.status, CIMultiDict(response.headers), body)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise TransientError(f"{what}: cannot connect ({type(exc).__name__})") from None
    except (TimeoutError, aiohttp.ClientError, AnswerTooLarge) as exc:
        reason = f"{what}: no answer ({type(exc).__name__})"
        if isinstance(exc, AnswerTooLarge):
            reason = f"{what}: answer larger than {max_body} bytes"
        if money:
            raise InDoubtError(reason + "; outcome unknown, query before any retry") from None
        raise TransientError(reason) from None

