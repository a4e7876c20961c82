"""The FHIR destination against odd answers and resources that would misdirect its URL.

A real FHIR peer over a socket answers each case as the case says; the delivery must end
as it should (sent, or dead-lettered with a reason naming what was wrong) on its first
attempt, never by retrying an exception until it gives up. One engine serves the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from engine.runtime import Engine
from tests.conftest import engine_config
from tests.raw_http import assert_no_errors, exchange, request

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert_no_errors(caplog)


class Chunked(bytes):
    """An answer body the peer sends in chunks, without a Content-Length."""


@dataclass
class Rig:
    engine: Engine
    answers: dict[str, tuple[int, bytes]]
    requests: list[tuple[str, str]] = field(default_factory=list)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("fhir-answers")
    answers: dict[str, tuple[int, bytes]] = {}
    requests: list[tuple[str, str]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        doc = orjson.loads(await request.read())
        requests.append((request.method, request.path))
        status, body = answers.get(doc.get("language", ""), (201, b"{}"))
        if not isinstance(body, Chunked):
            return web.Response(status=status, body=body, content_type="application/fhir+json")
        streamed = web.StreamResponse(status=status)  # no Content-Length: read until the end
        streamed.content_type = "application/fhir+json"
        streamed.enable_chunked_encoding()
        await streamed.prepare(request)
        for at in range(0, len(body), 1000):
            await streamed.write(body[at:at + 1000])
        await streamed.write_eof()
        return streamed

    app = web.Application()
    app.router.add_route("*", "/fhir{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    engine = Engine(engine_config(tmp, f"""
        [[channels]]
        name = "api"
        source = {{ type = "http", listen = "127.0.0.1:0", path = "/in" }}
        [[channels.destinations]]
        name = "fhir"
        type = "fhir"
        base_url = "http://127.0.0.1:{runner.addresses[0][1]}/fhir"
        max_answer_bytes = 4096
    """))
    await engine.start()
    yield Rig(engine, answers, requests)
    await engine.stop(grace=1.0)
    await runner.cleanup()


def batch(case: str) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "language": case,
            "entry": [{"resource": {"resourceType": "Patient"},
                       "request": {"method": "POST", "url": "Patient"}}]}


def outcome(issue: object) -> bytes:
    return orjson.dumps({"resourceType": "OperationOutcome", "issue": issue})


CASES: dict[str, tuple[dict[str, Any], int, bytes, str, str]] = {
    # name: (resource, peer status, peer body, final status, what the last event says)
    "batch answer with entries that are not objects": (
        batch("a"), 200, b'{"resourceType": "Bundle", "entry": ["x", 1, null]}', "sent",
        "HTTP 200"),
    "batch answer with a response that is text": (
        batch("b"), 200, b'{"resourceType": "Bundle", "entry": [{"response": "201"}]}',
        "sent", "HTTP 200"),
    "batch answer whose entry is a number": (
        batch("c"), 200, b'{"resourceType": "Bundle", "entry": 5}', "sent", "HTTP 200"),
    "batch answer that is a list": (batch("d"), 200, b"[]", "sent", "HTTP 200"),
    "batch answer with a failed entry": (
        batch("e"), 200, b'{"entry": [{"response": {"status": "422 Unprocessable"}}]}',
        "dead_lettered", "batch entries failed: entry 0: 422 Unprocessable"),
    "OperationOutcome whose issue is an object": (
        {"resourceType": "Patient", "language": "f"}, 422,
        outcome({"severity": "error"}), "dead_lettered", "answered 422: OperationOutcome"),
    "OperationOutcome whose details are text": (
        {"resourceType": "Patient", "language": "g"}, 422,
        outcome([{"severity": "error", "code": "invalid", "details": "bad"}]),
        "dead_lettered", "answered 422: OperationOutcome: error invalid"),
    "OperationOutcome whose issues are numbers": (
        {"resourceType": "Patient", "language": "h"}, 400, outcome([1, 2]), "dead_lettered",
        "answered 400: OperationOutcome"),
    "id climbing out of its type": (
        {"resourceType": "Patient", "id": "../Organization/x", "language": "i"}, 201, b"{}",
        "dead_lettered", "Patient.id '../Organization/x' is not a FHIR id"),
    "id of dots": ({"resourceType": "Patient", "id": "..", "language": "j"}, 201, b"{}",
                   "dead_lettered", "Patient.id '..' is not a FHIR id"),
    "id a number": ({"resourceType": "Patient", "id": 7, "language": "k"}, 201, b"{}",
                    "dead_lettered", "Patient.id '7' is not a FHIR id"),
    "id with a query": ({"resourceType": "Patient", "id": "p1?_format=xml", "language": "l"},
                        201, b"{}", "dead_lettered", "is not a FHIR id"),
    "resourceType a path": ({"resourceType": "Patient/../../admin", "language": "m"}, 201,
                            b"{}", "dead_lettered", "is not a FHIR resource name"),
    # max_answer_bytes = 4096: a longer answer is not read; the status still decides.
    "created, answer too long to keep": (
        {"resourceType": "Patient", "language": "n"}, 201, b" " * 10_000, "sent",
        "HTTP 201 (answer over 4096 bytes, not kept)"),
    "refused, answer too long to read": (
        {"resourceType": "Patient", "language": "o"}, 422, b"x" * 10_000, "dead_lettered",
        "answered 422: (answer over 4096 bytes, not read)"),
    "created, chunked answer too long to keep": (
        {"resourceType": "Patient", "language": "q"}, 201, Chunked(b" " * 10_000), "sent",
        "HTTP 201 (answer over 4096 bytes, not kept)"),
    "created, chunked answer within the limit": (
        {"resourceType": "Patient", "language": "r"}, 201, Chunked(b" " * 3000), "sent",
        "HTTP 201"),
    "batch answer too long to check": (
        batch("p"), 200, b" " * 10_000, "dead_lettered",
        "batch answer over 4096 bytes; its entries cannot be checked"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_fhir_delivery_ends_on_its_first_attempt(rig: Rig, case: str) -> None:
    resource, status, body, final, detail = CASES[case]
    rig.answers[resource["language"]] = (status, body)
    sent = len(rig.requests)
    answer = await exchange(rig.engine.source_port("api"), request(
        "POST", "/in", orjson.dumps(resource), headers={"Content-Type": "application/json"}))
    assert answer.status == 202
    mid = answer.json()["message_id"]  # type: ignore[index]

    stored = None
    for _ in range(250):  # up to 5 s
        stored = await rig.engine.store.get(mid)
        if stored is not None and stored.status in ("sent", "dead_lettered"):
            break
        await asyncio.sleep(0.02)
    assert stored is not None and stored.status == final
    events = [e for e in await rig.engine.store.events(mid) if e.destination]
    assert [e.attempt for e in events] == [1], [(e.status, e.detail) for e in events]
    assert detail in (events[-1].detail or "")
    if "over 4096" not in detail:
        assert "over 4096" not in (events[-1].detail or "")
    if final == "dead_lettered" and "FHIR" in detail:  # refused before any request left
        assert len(rig.requests) == sent
