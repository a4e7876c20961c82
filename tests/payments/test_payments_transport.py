"""The one HTTP call every gateway client makes: the whole answer is read however it arrives,
and an answer cut short or too large is *sent but unanswered* (in doubt for money)."""

from __future__ import annotations

import aiohttp
import pytest

from adapters.payments.transport import call
from engine.errors import InDoubtError, TransientError
from tests.broken_peer import BrokenPeer, Reply, always

BODY = bytes(range(256)) * 4096  # 1 MiB: many reads on loopback


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_large_answer_is_read_whole(http: aiohttp.ClientSession, chunked: bool) -> None:
    async with BrokenPeer(always(Reply(BODY, chunked=chunked))) as peer:
        answer = await call(http, "POST", peer.url + "/bill", what="download bill",
                            money=False, deadline=5.0, data=b"x", max_body=len(BODY))
    assert answer.status == 200
    assert answer.body == BODY


@pytest.mark.parametrize(("reply", "reason"), [
    (Reply(b'{"code": "SUCCESS", "amount": {"refund"', cut_short=True),
     r"refund: no answer \(ClientPayloadError\)"),
    (Reply(BODY), r"refund: answer larger than 1000 bytes"),
    (Reply(BODY, chunked=True), r"refund: answer larger than 1000 bytes"),
])
@pytest.mark.parametrize("money", [True, False])
async def test_an_answer_cut_short_or_too_large_is_in_doubt_for_money(
        http: aiohttp.ClientSession, reply: Reply, reason: str, money: bool) -> None:
    async with BrokenPeer(always(reply)) as peer:
        with pytest.raises(TransientError, match=reason) as caught:
            await call(http, "POST", peer.url + "/refund", what="refund", money=money,
                       deadline=5.0, data=b"x", max_body=1000)
    assert isinstance(caught.value, InDoubtError) is money
