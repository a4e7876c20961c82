"""The HTTP source against malformed requests, over a plain socket to a running engine.

Every case must be answered with a specific 4xx naming what is wrong, store nothing, and
leave the listener serving; every message accepted between the cases reaches the
destination. One engine serves the whole module (the cases are independent requests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from engine.runtime import Engine
from tests.conftest import engine_config, wait_for
from tests.raw_http import Answer, assert_no_errors, chunked, exchange, request

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert_no_errors(caplog)

LIMIT = 4096
JSON = {"Content-Type": "application/json"}
HL7_MEDIA = {"Content-Type": "x-application/hl7-v2+er7"}
HL7 = b"MSH|^~\\&|HIS|F|||20260101||ADT^A04|HTTP-M1|P|2.5\rPID|1\r"


@dataclass
class Rig:
    engine: Engine
    received: list[bytes]
    accepted: list[str]

    def port(self, channel: str) -> int:
        return self.engine.source_port(channel)

    async def stored(self) -> int:
        return len(await self.engine.store.search(limit=1000))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("http-malformed")
    received: list[bytes] = []

    async def take(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/in", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    token = tmp / "source.token"
    token.write_text("s3cret")

    def channel(name: str, path: str, extra: str = "", mapping: str = "") -> str:
        return f"""
            [[channels]]
            name = "{name}"
            source = {{ type = "http", listen = "127.0.0.1:0", path = "{path}"{extra} }}
            {f"mapping = {mapping}" if mapping else ""}
            [[channels.destinations]]
            name = "peer"
            type = "http"
            url = "http://127.0.0.1:{runner.addresses[0][1]}/in"
        """

    engine = Engine(engine_config(tmp, "".join([
        channel("api", "/in", f', max_body_bytes = {LIMIT}, pass_headers = ["X-Visit"]'),
        channel("big", "/big", ", max_body_bytes = 262144"),
        channel("text", "/text", f', content_type = "text", max_body_bytes = {LIMIT}'),
        channel("secure", "/secure", f', token = "file:{token}"'),
        channel("mapped", "/mapped", "", mapping='"einvoice_outpatient"'),
    ])))
    await engine.start()
    yield Rig(engine, received, [])
    await engine.stop(grace=1.0)
    await runner.cleanup()


def post(path: str, body: bytes, headers: dict[str, str] | None = None,
         raw_headers: bytes = b"") -> bytes:
    return request("POST", path, body, headers=JSON if headers is None else headers,
                   raw_headers=raw_headers)


DEEP = b"[" * 100_000 + b"]" * 100_000
CASES: dict[str, tuple[str, bytes, int, str]] = {
    # name: (channel, request bytes, status, what the error must say)
    "no content type": ("api", post("/in", b'{"a": 1}', {}), 415,
                        "Content-Type header is missing"),
    "unknown content type": ("api", post("/in", b"\x00\x01", {"Content-Type": "image/png"}),
                             415, "unsupported Content-Type 'image/png'"),
    "garbled content type": ("api", post("/in", b"{}", {"Content-Type": ";;;"}), 415,
                             "unsupported Content-Type ';;;'"),
    "empty json": ("api", post("/in", b""), 400, "empty body"),
    "invalid json": ("api", post("/in", b'{"a": '), 400, "body is not valid JSON"),
    "json not utf-8": ("api", post("/in", '{"姓名": "张三"}'.encode("gbk")), 400,
                       "not valid UTF-8"),
    "json 100k levels deep": ("big", post("/big", DEEP), 400, "body is not valid JSON"),
    "fhir 100k levels deep": ("big", post("/big", DEEP, {"Content-Type":
                                                         "application/fhir+json"}),
                              400, "body is not valid JSON"),
    "fhir list": ("api", post("/in", b'[{"resourceType": "Patient"}]',
                              {"Content-Type": "application/fhir+json"}),
                  400, "must be a JSON object with resourceType, not an array"),
    "fhir without resourceType": ("api", post("/in", b'{"id": "p1"}', {
        "Content-Type": "application/fhir+json"}), 400, "resourceType must be a resource name, "
        "got nothing"),
    "fhir resourceType null": ("api", post("/in", b'{"resourceType": null}', {
        "Content-Type": "application/fhir+json"}), 400, "got null"),
    "fhir resourceType number": ("api", post("/in", b'{"resourceType": 7}', {
        "Content-Type": "application/fhir+json"}), 400, "got a number '7'"),
    "fhir resourceType not a name": ("api", post("/in", b'{"resourceType": "../x"}', {
        "Content-Type": "application/fhir+json"}), 400, "got a string '../x'"),
    "xml not well formed": ("api", post("/in", b"<a><b></a>", {"Content-Type":
                                                               "application/xml"}),
                            400, "not well-formed XML"),
    "xml bytes not utf-8": ("api", post("/in", b"<a>\xff</a>", {"Content-Type":
                                                                "application/xml"}),
                            400, "not well-formed XML"),
    "text not utf-8": ("text", post("/text", b"caf\xe9", {"Content-Type": "text/plain"}), 400,
                       "body is not valid utf-8 text: undecodable byte at offset 3"),
    "text in an unknown charset": ("text", post("/text", b"abc", {
        "Content-Type": "text/plain; charset=klingon"}), 400, "unknown charset 'klingon'"),
    "empty text": ("text", post("/text", b"", {"Content-Type": "text/plain"}), 400,
                   "empty body"),
    "declared length over the limit": (
        "api", request("POST", "/in", b"{", headers={**JSON, "Content-Length": "52428800"},
                       length=False), 413, "body of 52428800 bytes exceeds 4096"),
    "chunked body over the limit, still streaming": (
        "api", request("POST", "/in", chunked(b" " * 3000, b" " * 3000, end=False),
                       headers={**JSON, "Transfer-Encoding": "chunked"}, length=False),
        413, "body exceeds 4096 bytes"),
    "empty chunked body": ("api", request("POST", "/in", chunked(), headers={
        **JSON, "Transfer-Encoding": "chunked"}, length=False), 400, "empty body"),
    "chunked invalid json": ("api", request("POST", "/in", chunked(b'{"a":', b" tru"),
                                            headers={**JSON, "Transfer-Encoding": "chunked"},
                                            length=False), 400, "body is not valid JSON"),
    "hl7 not starting with MSH": ("api", post("/in", b"PID|1\r", HL7_MEDIA), 400,
                                  "it must start with an MSH segment"),
    "hl7 not utf-8": ("api", post("/in", HL7 + b"NTE|1||caf\xe9\r", HL7_MEDIA), 400,
                      "message is not valid utf-8"),
    "idempotency key too long": ("api", post("/in", b"{}", {**JSON, "Idempotency-Key":
                                                            "k" * 201}),
                                 400, "Idempotency-Key is 201 characters, at most 200"),
    "idempotency key not utf-8": ("api", post("/in", b"{}", raw_headers=b"Idempotency-Key: "
                                              b"k\xff\r\n"),
                                  400, "header Idempotency-Key is not valid UTF-8"),
    "correlation id not utf-8": ("api", post("/in", b"{}", raw_headers=b"X-Correlation-Id: "
                                             b"\xfe\xff\r\n"),
                                 400, "header X-Correlation-Id is not valid UTF-8"),
    "passed header not utf-8": ("api", post("/in", b"{}", raw_headers=b"X-Visit: \xc3\r\n"),
                                400, "header X-Visit is not valid UTF-8"),
    "wrong method": ("api", request("GET", "/in"), 405, "use POST or PUT"),
    "no source at the path": ("api", post("/nowhere", b"{}"), 404, "no source at /nowhere"),
    "no token": ("secure", post("/secure", b"{}"), 401, "missing or wrong bearer token"),
    "wrong token": ("secure", post("/secure", b"{}", {**JSON, "Authorization": "Bearer nope"}),
                    401, "missing or wrong bearer token"),
    "token not utf-8": ("secure", post("/secure", b"{}", raw_headers=b"Authorization: Bearer "
                                       b"s3cr\xe9t\r\n"),
                        401, "missing or wrong bearer token"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_malformed_request_is_refused_and_the_listener_keeps_serving(
        rig: Rig, case: str) -> None:
    channel, data, status, error = CASES[case]
    before = await rig.stored()
    answer = await exchange(rig.port(channel), data)
    assert answer.status == status, answer.body
    if answer.headers.get("content-type", "").startswith("application/json"):
        assert error in answer.error
    else:  # HL7 is refused with an HL7 NAK
        assert b"MSA|AR|" in answer.body and error.encode() in answer.body
    if status == 413:
        assert answer.headers.get("connection") == "close"
    assert await rig.stored() == before
    await _accepted(rig, channel, case)


async def test_large_declared_body_is_refused_before_it_is_sent(rig: Rig) -> None:
    """The answer comes while the peer has sent only the headers."""
    answer = await exchange(rig.port("api"), request(
        "POST", "/in", headers={**JSON, "Content-Length": "1073741824"}, length=False),
        timeout=2.0)
    assert answer.status == 413


async def test_bodies_at_the_limit_and_chunked_bodies_are_taken(rig: Rig) -> None:
    at_limit = b'{"pad": "' + b"x" * (LIMIT - 12) + b'"}'
    assert len(at_limit) == LIMIT - 1
    answer = await exchange(rig.port("api"), post("/in", at_limit))
    assert answer.status == 202
    rig.accepted.append(answer.json()["message_id"])  # type: ignore[index]
    answer = await exchange(rig.port("api"), request(
        "POST", "/in", chunked(b'{"chun', b'ked": true}'),
        headers={**JSON, "Transfer-Encoding": "chunked"}, length=False))
    assert answer.status == 202
    rig.accepted.append(answer.json()["message_id"])  # type: ignore[index]
    text = "体温 36.8".encode("gbk")
    answer = await exchange(rig.port("text"), post("/text", text, {
        "Content-Type": "text/plain; charset=gbk"}))
    assert answer.status == 202
    rig.accepted.append(answer.json()["message_id"])  # type: ignore[index]


@pytest.mark.parametrize("body", [b"[1, 2]", b"null", b"5", b'"settlement"',
                                  b'{"settlement_id": ["S1"]}', b'{"settlement_id": null}'])
async def test_json_of_the_wrong_shape_for_the_mapping_is_dead_lettered_with_its_reason(
        rig: Rig, body: bytes) -> None:
    """Any JSON document is a JSON message; the channel's mapping is what needs an object,
    and a body it cannot map ends as a dead letter naming the rule, never as sent."""
    received = len(rig.received)
    answer = await exchange(rig.port("mapped"), post("/mapped", body))
    assert answer.status == 202
    mid = answer.json()["message_id"]  # type: ignore[index]

    async def dead() -> bool:
        stored = await rig.engine.store.get(mid)
        return stored is not None and stored.status == "dead_lettered"

    for _ in range(250):
        if await dead():
            break
        await asyncio.sleep(0.02)
    events = await rig.engine.store.events(mid)
    assert events[-1].status == "dead_lettered"
    assert "einvoice_outpatient.toml: rule[" in (events[-1].detail or "")
    assert "required value is missing" in (events[-1].detail or "")
    assert len(rig.received) == received


async def test_nothing_accepted_is_lost(rig: Rig) -> None:
    """Runs last: every message answered 202 between the refusals reached the peer once."""
    assert len(rig.accepted) >= len(CASES)
    await wait_for(lambda: len(rig.received) == len(rig.accepted))
    for mid in rig.accepted:
        stored = await rig.engine.store.get(mid)
        assert stored is not None and stored.status == "sent", mid


async def _accepted(rig: Rig, channel: str, case: str) -> None:
    """A good message right after the refusal is accepted on the same listener."""
    headers = {**JSON, "Authorization": "Bearer s3cret"} if channel == "secure" else JSON
    path = {"api": "/in", "big": "/big", "text": "/text", "secure": "/secure"}[channel]
    body = orjson.dumps({"after": case})
    if channel == "text":
        headers = {"Content-Type": "text/plain"}
    answer: Answer = await exchange(rig.port(channel), post(path, body, headers))
    assert answer.status == 202, answer.body
    rig.accepted.append(answer.json()["message_id"])  # type: ignore[index]
