"""The admin API against malformed requests, over a plain socket to a running engine.

Every case is answered with a specific 4xx (or 503 when the engine cannot take a replay
now) naming what is wrong, changes nothing (no message, no audit row), and the API keeps
answering. One engine serves the whole module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from engine.runtime import Engine
from tests.conftest import engine_config
from tests.raw_http import assert_no_errors, chunked, exchange, request

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(autouse=True)
def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    yield
    assert_no_errors(caplog)

TOKEN = "admin-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Rig:
    engine: Engine
    message_id: str

    @property
    def port(self) -> int:
        return self.engine.admin.port

    async def counts(self) -> tuple[int, int]:
        messages = len(await self.engine.store.search(limit=1000))
        audits = await self.engine.db.read(
            lambda c: c.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
        return messages, int(audits)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    tmp: Path = tmp_path_factory.mktemp("admin-malformed")
    (tmp / "admin.token").write_text(TOKEN)
    engine = Engine(engine_config(tmp, """
        [[channels]]
        name = "api"
        source = { type = "http", listen = "127.0.0.1:0", path = "/in" }
        [[channels.destinations]]
        name = "nowhere"
        type = "http"
        url = "http://127.0.0.1:9/unreachable"
        retry = { max_attempts = 1 }
    """, admin=True, admin_token=f"file:{tmp / 'admin.token'}"))
    await engine.start()
    answer = await exchange(engine.source_port("api"), request(
        "POST", "/in", b'{"visit": 1}', headers={"Content-Type": "application/json"}))
    assert answer.status == 202
    yield Rig(engine, answer.json()["message_id"])  # type: ignore[index]
    await engine.stop(grace=1.0)


BAD_AUTH: dict[str, bytes] = {
    "missing": b"",
    "wrong": b"Authorization: Bearer nope\r\n",
    "empty bearer": b"Authorization: Bearer \r\n",
    "basic scheme": b"Authorization: Basic YWRtaW46YWRtaW4=\r\n",
    "token without scheme": f"Authorization: {TOKEN}\r\n".encode(),
    "not utf-8": b"Authorization: Bearer admin-s3cr\xe9t\r\n",
}
ENDPOINTS = [("GET", "/health/ready"), ("GET", "/metrics"), ("GET", "/api/messages"),
             ("GET", "/api/messages/X"), ("POST", "/api/messages/X/replay"),
             ("GET", "/api/dead-letters"), ("POST", "/api/dead-letters/requeue"),
             ("GET", "/api/audit"), ("GET", "/api/nowhere")]


@pytest.mark.parametrize("auth", list(BAD_AUTH))
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_missing_or_wrong_token_is_refused_before_the_body_is_read(
        rig: Rig, auth: str, method: str, path: str) -> None:
    before = await rig.counts()
    # 50 MB announced, none sent: the answer must not wait for the body.
    data = request(method, path, headers={"Content-Type": "application/json",
                                          "Content-Length": "52428800"},
                   raw_headers=BAD_AUTH[auth], length=False)
    answer = await exchange(rig.port, data, timeout=2.0)
    assert answer.status == 401
    assert answer.error == "missing or wrong admin token"
    assert answer.headers["www-authenticate"] == "Bearer"
    assert await rig.counts() == before
    await _still_serving(rig)


SEARCHES: dict[str, tuple[str, str]] = {
    "limit negative": ("limit=-5", "limit must be a whole number from 1 to 1000, got '-5'"),
    "limit zero": ("limit=0", "got '0'"),
    "limit huge": ("limit=" + "9" * 40, "limit must be a whole number from 1 to 1000"),
    "limit over the page size": ("limit=1001", "got '1001'"),
    "limit not a number": ("limit=ten", "got 'ten'"),
    "limit a decimal": ("limit=2.5", "got '2.5'"),
    "limit in exponent form": ("limit=1e3", "got '1e3'"),
    "since not a date": ("since=yesterday",
                         "since must be epoch seconds or an ISO 8601 date or time, "
                         "got 'yesterday'"),
    "since an impossible date": ("since=2024-13-45", "got '2024-13-45'"),
    "since not a number": ("since=nan", "got 'nan'"),
    "since infinite": ("since=inf", "got 'inf'"),
    "since overflowing": ("since=1e400", "got '1e400'"),
    "until not a date": ("until=2024-02-30T25:00", "until must be epoch seconds"),
    "until empty": ("until=", "until must be epoch seconds"),
}


@pytest.mark.parametrize("case", list(SEARCHES))
async def test_bad_search_parameters_are_refused_by_name(rig: Rig, case: str) -> None:
    query, error = SEARCHES[case]
    answer = await exchange(rig.port, request("GET", f"/api/messages?{query}", headers=AUTH))
    assert answer.status == 400
    assert error in answer.error
    await _still_serving(rig)


@pytest.mark.parametrize("query", ["limit=1", "limit=1000", "limit=%207%20", "since=0",
                                   "since=2024-01-01", "until=2099-01-01T08:00:00%2B08:00",
                                   "since=1700000000.5&until=4102444800"])
async def test_good_search_parameters_are_taken(rig: Rig, query: str) -> None:
    answer = await exchange(rig.port, request("GET", f"/api/messages?{query}", headers=AUTH))
    assert answer.status == 200
    assert [m["id"] for m in answer.json()["messages"]] == [rig.message_id]  # type: ignore[index]


REQUESTS: dict[str, tuple[bytes, int, str]] = {
    "replay of an unknown id": (request("POST", "/api/messages/01UNKNOWN/replay", headers=AUTH),
                                404, "cannot replay: 01UNKNOWN"),
    "view of an unknown id": (request("GET", "/api/messages/01UNKNOWN", headers=AUTH), 404,
                              "no message 01UNKNOWN"),
    "dead letters of an unknown queue": (request("GET", "/api/dead-letters?queue=dest:x/y",
                                                 headers=AUTH), 404, "unknown queue 'dest:x/y'"),
    "requeue, not JSON": (request("POST", "/api/dead-letters/requeue", b"queue=x",
                                  headers=AUTH), 400, "body must be JSON"),
    "requeue, empty body": (request("POST", "/api/dead-letters/requeue", headers=AUTH), 400,
                            "body must be JSON"),
    "requeue, not UTF-8": (request("POST", "/api/dead-letters/requeue", b'{"queue": "\xff"}',
                                   headers=AUTH), 400, "body must be JSON"),
    "requeue, 100k levels deep": (request("POST", "/api/dead-letters/requeue",
                                          b"[" * 100_000 + b"]" * 100_000, headers=AUTH),
                                  400, "body must be JSON"),
    "requeue, a list": (request("POST", "/api/dead-letters/requeue", b'["channel:api"]',
                                headers=AUTH), 400, "body must be a JSON object"),
    "requeue, null": (request("POST", "/api/dead-letters/requeue", b"null", headers=AUTH),
                      400, "body must be a JSON object"),
    "requeue, queue missing": (request("POST", "/api/dead-letters/requeue", b"{}",
                                       headers=AUTH), 400, "queue is required"),
    "requeue, queue a number": (request("POST", "/api/dead-letters/requeue", b'{"queue": 5}',
                                        headers=AUTH), 400, "queue must be a string"),
    "requeue, unknown queue": (request("POST", "/api/dead-letters/requeue",
                                       b'{"queue": "dest:x/y"}', headers=AUTH),
                               404, "unknown queue dest:x/y"),
    "requeue, ids not a list": (request("POST", "/api/dead-letters/requeue",
                                        b'{"queue": "channel:api", "ids": "1"}', headers=AUTH),
                                400, "ids must be a list of strings"),
    "requeue, ids numbers": (request("POST", "/api/dead-letters/requeue",
                                     b'{"queue": "channel:api", "ids": [1, null]}',
                                     headers=AUTH), 400, "ids must be a list of strings"),
    "requeue, chunked body over 1 MiB": (
        request("POST", "/api/dead-letters/requeue",
                chunked(*[b" " * 65536] * 17),
                headers={**AUTH, "Transfer-Encoding": "chunked"}, length=False),
        413, "body exceeds 1048576 bytes"),
}


@pytest.mark.parametrize("case", list(REQUESTS))
async def test_malformed_request_changes_nothing(rig: Rig, case: str) -> None:
    data, status, error = REQUESTS[case]
    before = await rig.counts()
    answer = await exchange(rig.port, data)
    assert answer.status == status, answer.body
    assert error in answer.error
    assert await rig.counts() == before
    await _still_serving(rig)


async def test_replay_the_engine_cannot_take_now_is_503_and_stores_nothing(rig: Rig) -> None:
    before = await rig.counts()
    backend = rig.engine.backend
    depth = backend.max_depth  # type: ignore[attr-defined]
    backend.max_depth = 0  # type: ignore[attr-defined]
    try:
        answer = await exchange(rig.port, request(
            "POST", f"/api/messages/{rig.message_id}/replay", headers=AUTH))
    finally:
        backend.max_depth = depth  # type: ignore[attr-defined]
    assert answer.status == 503
    assert answer.headers["retry-after"] == "5"
    assert f"cannot replay {rig.message_id} now" in answer.error
    assert await rig.counts() == before
    answer = await exchange(rig.port, request(
        "POST", f"/api/messages/{rig.message_id}/replay", headers=AUTH))
    assert answer.status == 202
    assert await rig.counts() == (before[0] + 1, before[1] + 1)


async def _still_serving(rig: Rig) -> None:
    answer = await exchange(rig.port, request("GET", "/api/messages?limit=1", headers=AUTH))
    assert answer.status == 200
