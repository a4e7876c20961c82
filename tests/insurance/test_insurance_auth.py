"""Gateway signatures (x-tif SHA-256 and HMAC-SHA1), the 9001 sign-in kept and renewed, and
msgid generation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime

import aiohttp
import pytest

from adapters.nhsa.auth import HmacSha1Auth, StaticHeadersAuth, XTifAuth
from adapters.nhsa.client import Refused
from adapters.nhsa.envelope import MsgIdGenerator
from adapters.nhsa.session import SignInSession
from simulators.insurance import GatewayCheck, serve

PERSON = {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": "D44039900001"}}


def test_x_tif_signature(monkeypatch):
    monkeypatch.setenv("XTIF_TOKEN", "t0ken")
    auth = XTifAuth.model_validate({"scheme": "x-tif", "paasid": "p1",
                                    "token": "${XTIF_TOKEN}"})
    headers = auth.headers("1101", now=1_773_536_400.9)
    assert headers["x-tif-paasid"] == "p1"
    assert headers["x-tif-timestamp"] == "1773536400"
    nonce = headers["x-tif-nonce"]
    assert len(nonce) == 32
    expected = hashlib.sha256(f"1773536400t0ken{nonce}1773536400".encode()).hexdigest()
    assert headers["x-tif-signature"] == expected
    assert auth.headers("1101")["x-tif-nonce"] != nonce


def test_hmac_sha1_signature(monkeypatch):
    monkeypatch.setenv("HMAC_SECRET", "s3cret")
    auth = HmacSha1Auth.model_validate({"scheme": "hmac-sha1", "access_key": "ak",
                                        "secret_key": "${HMAC_SECRET}"})
    headers = auth.headers("2207", now=1_773_536_400.25)
    text = ("_api_access_key=ak&_api_name=2207&_api_timestamp=1773536400250"
            "&_api_version=1.0.0")
    expected = base64.b64encode(hmac.new(b"s3cret", text.encode(), hashlib.sha1).digest())
    assert headers == {"_api_access_key": "ak", "_api_name": "2207",
                       "_api_timestamp": "1773536400250", "_api_version": "1.0.0",
                       "_api_signature": expected.decode()}


def test_secrets_are_never_inline():
    with pytest.raises(ValueError, match="by reference"):
        XTifAuth.model_validate({"scheme": "x-tif", "paasid": "p", "token": "plain"})
    with pytest.raises(ValueError, match="by reference"):
        StaticHeadersAuth.model_validate({"scheme": "headers", "values": {"apikey": "k"}})


async def test_wrong_token_is_refused_by_the_gateway(nhsa, kit, monkeypatch):
    monkeypatch.setenv("NHSA_WRONG_TOKEN", "not-the-token")
    dest = await nhsa(auth={"token": "${NHSA_WRONG_TOKEN}"})
    with pytest.raises(Refused, match=r"gateway refused the call \(HTTP 401\).*does not verify"):
        await dest.send(kit.envelope("1101", PERSON, insuplc=None))
    assert (await kit.state())["messages"] == 0


async def test_replayed_nonce_is_refused(sim, nhsa):
    dest = await nhsa()
    headers = {"Content-Type": "application/json", **dest.client.auth.headers("9001")}
    async with aiohttp.ClientSession() as http:
        for expected in (200, 401):
            async with http.post(dest.client.url, data=b"{}", headers=headers) as r:
                assert r.status == expected
                if expected == 401:
                    assert "replay" in (await r.json())["err_msg"]


async def test_hmac_sha1_end_to_end(tmp_path, monkeypatch):
    secret = secrets.token_hex(12)
    monkeypatch.setenv("HMAC_TEST_SECRET", secret)
    sim = await serve(db_path=tmp_path / "s.db",
                      gateway=GatewayCheck("hmac-sha1", {"ak-1": secret}))
    from adapters.nhsa import NhsaDestinationConfig
    from queues.contract import Envelope

    config = NhsaDestinationConfig.model_validate({
        "type": "nhsa", "name": "n", "url": sim.url, "fixmedins_code": "H44030500001",
        "fixmedins_name": "示例", "mdtrtarea_admvs": "440300",
        "auth": {"scheme": "hmac-sha1", "access_key": "ak-1",
                 "secret_key": "${HMAC_TEST_SECRET}"}})
    dest = config.build("c")
    await dest.start()
    try:
        result = await dest.send(Envelope("m", b'{"data": {"mdtrt_cert_type": "02",'
                                               b' "mdtrt_cert_no": "440399198503150016"}}',
                                          {"infno": "1101"}, "json"))
        assert b'"psn_no":"44039900000001"' in (result.response or b"")
    finally:
        await dest.close()
        await sim.close()


async def test_sign_no_is_kept_and_renewed_when_refused(nhsa, kit, sim):
    dest = await nhsa()
    for _ in range(3):
        await kit.call(dest, "1101", PERSON, insuplc=None)
    assert (await kit.state())["sign_ins"] == 1
    first = dest.client.session.current

    async with aiohttp.ClientSession() as http, http.post(
            f"{sim.url}/control/expire-sign-ins") as r:
        assert (await r.json())["expired"] == 1
    # The platform refuses the old sign_no; the adapter signs in again and resends once.
    out = await kit.call(dest, "1101", PERSON, insuplc=None)
    assert out["baseinfo"]["psn_no"] == "44039900000001"
    assert (await kit.state())["sign_ins"] == 2
    assert dest.client.session.current not in (None, first)


async def test_sign_out_on_close(nhsa, kit, sim):
    dest = await nhsa(sign_in={"sign_out_on_close": True})
    await kit.call(dest, "1101", PERSON, insuplc=None)
    await dest.close()
    valid = sim.store.one("SELECT COUNT(*) AS n FROM signin WHERE valid = 1")
    assert valid is not None and valid["n"] == 0


async def test_sign_in_session_renews_on_ttl_and_day_change():
    now = [datetime(2026, 3, 15, 23, 0).timestamp()]
    calls = []

    async def sign_in() -> str:
        calls.append(now[0])
        return f"S{len(calls)}"

    session = SignInSession(sign_in, ttl=1800, clock=lambda: now[0])
    assert await session.sign_no() == "S1"
    now[0] += 600
    assert await session.sign_no() == "S1"
    now[0] += 1500  # past the TTL
    assert await session.sign_no() == "S2"
    now[0] = datetime(2026, 3, 16, 0, 0, 5).timestamp()  # a new day
    assert await session.sign_no() == "S3"
    session.invalidate("S2")  # an older one: ignored
    assert session.current == "S3"
    session.invalidate("S3")
    assert await session.sign_no() == "S4"


def test_msgid_format_and_uniqueness():
    generate = MsgIdGenerator("H44030500001")
    t = datetime(2026, 3, 15, 9, 30, 1).timestamp()
    ids = [generate(t) for _ in range(12_000)]
    assert len(set(ids)) == 12_000
    assert all(len(i) == 30 and i.startswith("H44030500001") for i in ids)
    assert ids[0][12:26] == "20260315093001"
    assert ids == sorted(ids)  # a full second borrows the next one, staying ordered
    assert ids[-1][12:26] == "20260315093002"
    node = MsgIdGenerator("H44030500001", node=7)
    assert node(t)[26] == "7"
    with pytest.raises(ValueError, match="12 characters"):
        MsgIdGenerator("H4403")
