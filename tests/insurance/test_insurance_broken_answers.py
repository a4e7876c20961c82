"""Whatever the national platform answers, the nhsa destination says what was wrong: a clear
permanent error for an answer it cannot read, a transient one when the answer is lost, an
in-doubt one for a settlement nobody can vouch for; never a crash, never a success. The
platform is a small scripted peer on a real socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from adapters.nhsa import NhsaDestination, NhsaDestinationConfig
from adapters.nhsa.client import MalformedAnswer, Refused, Unanswered
from engine.errors import InDoubtError, PermanentError, TransientError
from queues.contract import Envelope
from tests.broken_peer import BrokenPeer, Reply, always

PERSON = {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "D44039900001"}}
MSGID = r"msgid=H44030500001\d{18}"
GOOD_PERSON = {
    "baseinfo": {"psn_no": "44039900000001"},
    "insuinfo": [{"balc": 12.30, "insutype": "310", "insuplc_admdvs": "440300"}],
}


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _ok(output: Any) -> bytes:
    return _json({"infcode": 0, "err_msg": "", "output": output})


@pytest.fixture
async def destination(nhsa_config: Callable[..., NhsaDestinationConfig], token: str,
                      ) -> AsyncIterator[Callable[..., Any]]:
    """``await destination(script, **config)``: a started destination whose platform is a
    ``BrokenPeer`` running ``script``; both are closed after the test."""
    opened: list[tuple[BrokenPeer, NhsaDestination]] = []

    async def make(script: Any, **overrides: Any) -> NhsaDestination:
        peer = BrokenPeer(script)
        await peer.start()
        settings = {"sign_in": {"enabled": False}, "timeout": 2.0, **overrides}
        dest = nhsa_config(peer.url, **settings).build("insurance")
        await dest.start()
        opened.append((peer, dest))
        return dest

    yield make
    for peer, dest in opened:
        await dest.close()
        await peer.stop()


def _person(key: str = "m-1") -> Envelope:
    return Envelope(key, _json(PERSON), {"infno": "1101"}, "json")


@pytest.mark.parametrize(("reply", "error", "match"), [
    (Reply(b"upstream says hello"), MalformedAnswer, r"1101 answer is not JSON .*'upstream"),
    (Reply(b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html"),
     MalformedAnswer, r"1101 answer is not JSON .*502 Bad Gateway"),
    (Reply(b""), MalformedAnswer, r"1101 answer is not JSON"),
    (Reply(b'{"infcode": 0, "err_msg": "\xff\xfe\xfa"}'), MalformedAnswer,
     r"1101 answer is not JSON \(.*utf-8"),
    (Reply('{"infcode": 0, "err_msg": "成功"}'.encode("gbk")), MalformedAnswer,
     r"1101 answer is not JSON"),
    (Reply(b"[" * 100_000 + b"]" * 100_000), MalformedAnswer,
     r"1101 answer is not JSON \(JSON nested too deeply\)"),
    (Reply(b'["infcode", 0]'), MalformedAnswer, r"1101 answer is not a JSON object"),
    (Reply(b'"infcode=0"'), MalformedAnswer, r"1101 answer is not a JSON object"),
    (Reply(b"null"), MalformedAnswer, r"1101 answer is not a JSON object"),
    (Reply(b"{}"), MalformedAnswer, r"1101 answer has no infcode"),
    (Reply(b'{"infcode": null, "output": {}}'), MalformedAnswer, r"1101 answer has no infcode"),
    (Reply(b'{"infcode": {"code": 0}}'), MalformedAnswer, r"1101 answer has no infcode"),
    (Reply(b'{"infcode": 0}'), MalformedAnswer,
     rf"1101 {MSGID}: infcode 0 but the answer has no output"),
    (Reply(b'{"infcode": 0, "output": null}'), MalformedAnswer,
     rf"1101 {MSGID}: infcode 0 but the answer has no output"),
    (Reply(_ok([GOOD_PERSON])), MalformedAnswer, rf"1101 {MSGID}: invalid output: output: "),
    (Reply(_ok("baseinfo")), MalformedAnswer, rf"1101 {MSGID}: invalid output: output: "),
    (Reply(_ok({**GOOD_PERSON, "baseinfo": None})), MalformedAnswer,
     r"invalid output: output\.baseinfo: "),
    (Reply(_ok({"insuinfo": GOOD_PERSON["insuinfo"]})), MalformedAnswer,
     r"invalid output: output\.baseinfo: Field required"),
    (Reply(_ok({**GOOD_PERSON, "baseinfo": {"psn_no": 44039900000001}})), MalformedAnswer,
     r"invalid output: output\.baseinfo\.psn_no: Input should be a valid string"),
    (Reply(_ok({**GOOD_PERSON, "insuinfo": {"balc": "1"}})), MalformedAnswer,
     r"invalid output: output\.insuinfo: Input should be a valid list"),
    (Reply(b'{"infcode": 0, "output": {"baseinfo": {"psn_no": "4403"}, "insuinfo": [{"balc":'
           b' NaN, "insutype": "310", "insuplc_admdvs": "440300"}]}}'), MalformedAnswer,
     r"1101 answer is not JSON \(NaN is not valid JSON\)"),
    (Reply(b'{"infcode": 0, "output": {"baseinfo": {"psn_no": "4403"}, "insuinfo": [{"balc":'
           b' 1e999999999, "insutype": "310", "insuplc_admdvs": "440300"}]}}'), MalformedAnswer,
     r"1101 answer is not JSON \(number out of range: 1e999999999\)"),
    (Reply(_ok({**GOOD_PERSON, "insuinfo": [{**GOOD_PERSON["insuinfo"][0], "balc": "1,00"}]})),
     MalformedAnswer, r"output\.insuinfo\.0\.balc: .*got '1,00'"),
    (Reply(b'{"infcode": -1, "err_msg": null}'), Refused,
     r"1101 refused \(infcode -1\): no err_msg"),
    (Reply(b'{"infcode": "-1", "err_msg": ["busy"]}'), Refused, r"1101 refused \(infcode -1\)"),
    (Reply(b'{"infcode": 0, "output": {"baseinfo":', cut_short=True), Unanswered,
     rf"1101 {MSGID}: connection failed: ClientPayloadError"),
    (Reply(b'{"infcode": 0, "output": ' + b" " * 500_000 + b"{}}"), MalformedAnswer,
     r"1101 answer larger than 400000 bytes"),
])
async def test_broken_answers_are_clear_errors_naming_the_transaction(
        destination: Callable[..., Any], reply: Reply, error: type[Exception], match: str,
) -> None:
    dest = await destination(always(reply), max_answer_bytes=400_000)
    with pytest.raises(error, match=match) as caught:
        await dest.send(_person())
    assert isinstance(caught.value, PermanentError | TransientError)


async def test_an_oversized_chunked_answer_is_refused_while_it_is_read(
        destination: Callable[..., Any]) -> None:
    """No Content-Length to judge by: the limit applies to what has arrived."""
    dest = await destination(always(Reply(b" " * 4096 + b"{}", chunked=True)),
                             max_answer_bytes=1024)
    with pytest.raises(MalformedAnswer, match=r"1101 answer larger than 1024 bytes"):
        await dest.send(_person())


async def test_a_broken_sign_in_answer_names_9001(destination: Callable[..., Any]) -> None:
    dest = await destination(always(Reply(_ok({"signinoutb": {"sign_no": None}}))),
                             sign_in={"enabled": True})
    with pytest.raises(MalformedAnswer, match=rf"9001 {MSGID}: invalid output: .*"
                                              r"output\.signinoutb\.sign_no"):
        await dest.send(_person())


SETTLE = {"data": {
    "psn_no": "44039900000001", "mdtrt_cert_type": "03", "mdtrt_cert_no": "D44039900001",
    "med_type": "11", "medfee_sumamt": "146.20", "psn_setlway": "01", "mdtrt_id": "M1",
    "chrg_bchno": "B1", "insutype": "310", "acct_used_flag": "1", "invono": "",
    "fulamt_ownpay_amt": "0", "overlmt_selfpay": "0", "preselfpay_amt": "0",
    "inscp_scp_amt": "146.20"}}


def _settle(key: str) -> Envelope:
    return Envelope(key, _json(SETTLE), {"infno": "2207", "insuplc_admdvs": "440300"}, "json")


def _by_infno(answers: dict[str, Reply]) -> Any:
    def script(_request: web.Request, body: bytes) -> Reply:
        return answers[json.loads(body)["infno"]]
    return script


@pytest.mark.parametrize("broken", [
    Reply(b"<html>gateway timeout</html>", content_type="text/html"),
    Reply(_ok({"setlinfo": "settled"})),
    Reply(b'{"infcode": 0, "output": {"setlinfo": {', cut_short=True),
])
async def test_a_settlement_whose_answer_and_query_are_both_broken_stays_in_doubt(
        destination: Callable[..., Any], broken: Reply) -> None:
    """Money may have moved: the settlement is neither a success nor dead-lettered, and its
    next attempt queries before sending anything."""
    answers = {"2207": broken, "5203": Reply(_ok({"setlinfo": []}))}
    peer_script = _by_infno(answers)
    dest = await destination(peer_script)
    with pytest.raises(InDoubtError, match=rf"2207 {MSGID}: .*outcome unknown \(5203 failed: "
                                           rf"5203 {MSGID}: invalid output: output\.setlinfo"):
        await dest.send(_settle("s-1"))
    assert await dest.ledger.get("s-1") is not None
    # The retry resolves the earlier call before sending: it is still in doubt.
    with pytest.raises(InDoubtError, match=r"earlier attempt .* is still in doubt"):
        await dest.send(_settle("s-1"))


async def test_a_broken_settlement_answer_that_the_query_finds_absent_is_safe_to_retry(
        destination: Callable[..., Any]) -> None:
    answers = {
        "2207": Reply(b"[]"),
        "5203": Reply(_json({"infcode": -1, "err_msg": "未查询到结算信息"})),
        "2601": Reply(_ok(None)),
    }
    dest = await destination(_by_infno(answers))
    with pytest.raises(TransientError, match=r"2207 .*answer is not a JSON object; did not take"
                                             r" effect .*reversed by 2601") as caught:
        await dest.send(_settle("s-2"))
    assert not isinstance(caught.value, InDoubtError)
    assert await dest.ledger.get("s-2") is None
