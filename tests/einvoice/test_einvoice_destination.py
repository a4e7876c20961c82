"""The e-invoice destination: built from config, driven by envelopes, and inside a running
engine (HTTP source → channel → destination queue → simulated platform)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.einvoice import OPERATION_HEADER, EinvoiceDestinationConfig
from adapters.einvoice.codec import encode_json
from adapters.exact_json import decode_json
from engine.config import parse_config
from engine.errors import ConfigError, InDoubtError, PermanentError
from engine.outcome import Action, decide
from engine.retry import RetryPolicy
from engine.runtime import Engine
from queues.contract import Envelope
from simulators.einvoice import EinvoiceSimulator
from tests.conftest import engine_config, wait_for

MakeIssue = Callable[..., dict[str, Any]]


def _config(simulator: EinvoiceSimulator, key_path: Path, **extra: Any) -> \
        EinvoiceDestinationConfig:
    return EinvoiceDestinationConfig.model_validate({
        "type": "einvoice", "name": "einvoice", "url": simulator.url, "appid": "HOSP0001",
        "key": f"file:{key_path}", "timeout": 0.5, **extra})


def _envelope(body: dict[str, Any] | bytes, **headers: str) -> Envelope:
    raw = body if isinstance(body, bytes) else encode_json(body)
    return Envelope("01TEST", raw, headers, "json")


async def test_destination_issues_writes_off_and_queries_by_header(
    simulator: EinvoiceSimulator, key_file: Any, make_issue: MakeIssue,
) -> None:
    dest = _config(simulator, key_file[1], operation="outpatient").build("settlements")
    await dest.start()
    try:
        issued = await dest.send(_envelope(make_issue("D-1")))
        assert issued.content_type == "json"
        answer = decode_json(issued.response or b"")
        assert issued.detail == f"busNo D-1 issued: {answer['billBatchCode']}/0000000001"
        again = await dest.send(_envelope(make_issue("D-1")))
        assert again.detail.startswith("busNo D-1 found already issued")

        write_off = {"busNo": "D-1", "reason": "退费", "operator": "op",
                     "busDateTime": "20260315103000000", "placeCode": "MZ01"}
        voided = await dest.send(_envelope(write_off, **{OPERATION_HEADER: "write_off"}))
        red = decode_json(voided.response or b"")
        assert voided.detail == (f"written off: red note {red['eScarletBillBatchCode']}/"
                                 f"{red['eScarletBillNo']}")
        repeat = await dest.send(_envelope(write_off, **{"EInvoice-Operation": "write_off"}))
        assert repeat.detail == voided.detail.replace("written off", "already written off")

        state = await dest.send(_envelope({"busNo": "D-1"}, **{OPERATION_HEADER: "state"}))
        assert decode_json(state.response or b"")["state"] == "2"
        picture = await dest.send(_envelope({"busNo": "D-1"}, **{OPERATION_HEADER: "picture"}))
        assert decode_json(picture.response or b"")["fileUrl"].endswith(".pdf")
        found = await dest.send(_envelope({"busNo": "D-1"}, **{OPERATION_HEADER: "by_bus_no"}))
        assert decode_json(found.response or b"")["billNo"] == "0000000001"
        none = await dest.send(_envelope({"busNo": "D-2"}, **{OPERATION_HEADER: "by_bus_no"}))
        assert (none.detail, none.response) == ("no invoice for busNo D-2", b"{}")
    finally:
        await dest.close()
    assert simulator.requests["invoiceEBillOutpatient"] == 1


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "e-invoice outpatient: the body is not JSON"),
        (b"[1]", {}, "the body is not a JSON object"),
        (b"{}", {OPERATION_HEADER: "refund"}, "unknown e-invoice operation 'refund'"),
        (b'{"busNo": "X"}', {}, "invalid outpatient e-invoice request: busType: Field required"),
    ],
)
async def test_destination_refuses_bad_envelopes_permanently(
    simulator: EinvoiceSimulator, key_file: Any, body: bytes, headers: dict[str, str],
    message: str,
) -> None:
    dest = _config(simulator, key_file[1], operation="outpatient").build("c")
    await dest.start()
    try:
        with pytest.raises(PermanentError, match=message):
            await dest.send(_envelope(body, **headers))
    finally:
        await dest.close()
    assert sum(simulator.requests.values()) == 0


async def test_destination_needs_an_operation(simulator: EinvoiceSimulator,
                                              key_file: Any) -> None:
    dest = _config(simulator, key_file[1]).build("c")
    await dest.start()
    try:
        with pytest.raises(PermanentError, match="no operation"):
            await dest.send(_envelope({}))
    finally:
        await dest.close()


def test_in_doubt_is_retried_and_amount_refusal_dead_lettered() -> None:
    policy = RetryPolicy(max_attempts=3, jitter=0)
    retry = decide(InDoubtError("lost"), failures_before=0, first_failed_at=None, now=100.0,
                   policy=policy)
    assert retry.action is Action.RETRY
    from adapters.einvoice import AmountsInconsistent

    dead = decide(AmountsInconsistent("B", ["x"]), failures_before=0, first_failed_at=None,
                  now=100.0, policy=policy)
    assert dead.action is Action.DEAD_LETTER


def test_config_file_accepts_the_destination_and_refuses_inline_keys() -> None:
    text = """
        [[channels]]
        name = "invoices"
        source = { type = "http", listen = "127.0.0.1:0", path = "/settled" }
        [[channels.destinations]]
        type = "einvoice"
        name = "einvoice"
        url = "http://127.0.0.1:8085"
        appid = "HOSP0001"
        key = "${HISBRIDGE_EINVOICE_KEY}"
        operation = "outpatient"
        results = { transient = ["E9999", "E9998"] }
    """
    config = parse_config(text)
    dest = config.channels[0].destinations[0]
    assert isinstance(dest, EinvoiceDestinationConfig)
    assert dest.results.transient == ("E9999", "E9998")
    assert dest.lookup_before_issue == "always"
    with pytest.raises(ConfigError, match=r"key: secrets are given by reference"):
        parse_config(text.replace('"${HISBRIDGE_EINVOICE_KEY}"', '"plain-secret"'))
    with pytest.raises(ConfigError, match="response_signature"):
        parse_config(text.replace('operation = "outpatient"',
                                  'operation = "outpatient"\nresponse_signature = "maybe"'))


async def test_engine_issues_once_despite_a_lost_answer_and_dead_letters_bad_amounts(
    tmp_path: Path, engines: list[Engine], simulator: EinvoiceSimulator, key_file: Any,
    make_issue: MakeIssue, control: Any,
) -> None:
    body = f"""
        [[channels]]
        name = "invoices"
        source = {{ type = "http", listen = "127.0.0.1:0", path = "/settled" }}
        [[channels.destinations]]
        type = "einvoice"
        name = "einvoice"
        url = "{simulator.url}"
        appid = "HOSP0001"
        key = "file:{key_file[1]}"
        operation = "outpatient"
        timeout = 0.5
    """
    engine = Engine(engine_config(tmp_path, body))
    await engine.start()
    engines.append(engine)
    url = f"http://127.0.0.1:{engine.source_port('invoices')}/settled"
    await control.faults({"kind": "commit_then_timeout", "operation": "invoiceEBillOutpatient",
                          "times": 1, "seconds": 5})
    bad = make_issue("E-BAD")
    bad["money"]["cashPay"] = "40.00"
    async with aiohttp.ClientSession() as http:
        for request, key in ((make_issue("E-1"), "settle-1"), (bad, "settle-2")):
            async with http.post(url, data=json.dumps(request, ensure_ascii=False),
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": key}) as resp:
                assert resp.status == 202
    await wait_for(lambda: engine.metrics.sent.total() == 1)
    await wait_for(lambda: engine.metrics.dead_lettered.total() == 1)
    assert engine.metrics.retried.total() == 1
    assert (await control.bills("E-1"))["count"] == 1
    stats = await control.stats()
    assert stats["requests"]["invoiceEBillOutpatient"] == 1
    assert stats["bills"] == 1
    dead = await engine.backend.dead_letters(engine.channels["invoices"].destinations[0].queue)
    assert len(dead) == 1
    assert "money.fundPay + money.otherfundPay + money.accountPay + money.cashPay = 190.00 " \
        "but totalAmt is 199.70" in dead[0].reason
    assert decode_json(dead[0].envelope.body)["busNo"] == "E-BAD"
