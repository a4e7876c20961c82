"""The signed envelope and the exact JSON codec: pure logic, no sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from decimal import Decimal

import pytest

from adapters.einvoice.codec import encode_json
from adapters.einvoice.envelope import (
    ResponseInvalid,
    open_answer,
    request_signature,
    response_signature,
    seal,
)
from adapters.exact_json import decode_json

KEY = "test-key-0123456789"


def test_request_signature_puts_key_between_noise_and_version() -> None:
    # The platform's documented order; computed here from the literal string on purpose.
    text = "appid=HOSP0001&data=eyJhIjoxfQ==&noise=n-1&key=test-key-0123456789&version=1.0"
    expected = hashlib.md5(text.encode()).hexdigest().upper()  # noqa: S324
    got = request_signature(appid="HOSP0001", data="eyJhIjoxfQ==", noise="n-1",
                            version="1.0", key=KEY)
    assert got == expected
    assert got == got.upper()
    assert len(got) == 32


def test_seal_builds_the_five_field_envelope_with_exact_amounts() -> None:
    sealed = seal({"busNo": "B1", "totalAmt": Decimal("180.50"), "payer": "张三"},
                  appid="HOSP0001", key=KEY)
    envelope = json.loads(sealed.body)
    assert sorted(envelope) == ["appid", "data", "noise", "sign", "version"]
    assert envelope["version"] == "1.0"
    assert str(uuid.UUID(envelope["noise"])) == envelope["noise"] == sealed.noise
    data_text = base64.b64decode(envelope["data"]).decode("utf-8")
    assert data_text == '{"busNo":"B1","totalAmt":180.50,"payer":"张三"}'
    assert envelope["sign"] == request_signature(
        appid="HOSP0001", data=envelope["data"], noise=envelope["noise"], version="1.0",
        key=KEY)


def _answer(result: str, message: str, noise: str, *, key: str = KEY, **extra: str) -> bytes:
    body = {"result": result, "message": message, "noise": noise,
            "sign": response_signature(result=result, message=message, noise=noise, key=key)}
    body.update(extra)
    return json.dumps(body).encode()


def _b64(obj: object) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode()).decode()


def test_open_answer_decodes_a_signed_success_with_decimal_amounts() -> None:
    raw = _answer("S0000", base64.b64encode(b'{"billNo":"0000000001","amt":12.30}').decode(),
                  "n-1")
    answer = open_answer(raw, key=KEY, noise="n-1")
    assert answer.ok
    assert answer.data == {"billNo": "0000000001", "amt": Decimal("12.30")}


def test_open_answer_returns_a_refusal_without_decoding_it() -> None:
    answer = open_answer(_answer("E1002", "金额不符", "n-1"), key=KEY, noise="n-1")
    assert not answer.ok
    assert (answer.result, answer.message, answer.data) == ("E1002", "金额不符", {})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"message": "x"}', "no result code"),
        (b'{"result": "S0000", "message": 5}', "message is not a string"),
    ],
)
def test_open_answer_refuses_malformed_envelopes(raw: bytes, reason: str) -> None:
    with pytest.raises(ResponseInvalid, match=reason):
        open_answer(raw, key=KEY, noise="n-1", check="off")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("eyJiaWxsTm8iOiIxIn0=*", "not valid Base64"),
        ("全角字符", "not valid Base64"),
        (base64.b64encode(b"\xff\xfe not utf-8").decode(), "UTF-8 JSON"),
        (base64.b64encode(b"{billNo: 1}").decode(), "UTF-8 JSON"),
        (base64.b64encode(b'{"amt": NaN}').decode(), "UTF-8 JSON"),
        (_b64(["a", "list"]), "not a JSON object"),
    ],
)
def test_open_answer_refuses_a_success_whose_message_cannot_be_decoded(
    message: str, reason: str
) -> None:
    with pytest.raises(ResponseInvalid, match=reason):
        open_answer(_answer("S0000", message, "n-1"), key=KEY, noise="n-1")


def test_open_answer_refuses_a_wrong_signature() -> None:
    raw = _answer("S0000", _b64({"billNo": "1"}), "n-1", key="another-key")
    with pytest.raises(ResponseInvalid, match="signature does not match"):
        open_answer(raw, key=KEY, noise="n-1")


def test_open_answer_refuses_an_answer_to_another_request() -> None:
    raw = _answer("S0000", _b64({"billNo": "1"}), "n-OLD")
    with pytest.raises(ResponseInvalid, match="does not echo the request's noise"):
        open_answer(raw, key=KEY, noise="n-1")


def test_signature_modes() -> None:
    unsigned = json.dumps({"result": "S0000", "message": _b64({"billNo": "1"})}).encode()
    with pytest.raises(ResponseInvalid, match="not signed"):
        open_answer(unsigned, key=KEY, noise="n-1", check="required")
    assert open_answer(unsigned, key=KEY, noise="n-1", check="if_present").data == {
        "billNo": "1"}
    forged = _answer("S0000", _b64({"billNo": "1"}), "n-1", key="wrong")
    with pytest.raises(ResponseInvalid):
        open_answer(forged, key=KEY, noise="n-1", check="if_present")
    assert open_answer(forged, key=KEY, noise="n-1", check="off").ok


def test_non_ascii_signature_is_refused_not_crashed() -> None:
    body = json.dumps({"result": "S0000", "message": _b64({}), "noise": "n-1",
                       "sign": "签名"}).encode()
    with pytest.raises(ResponseInvalid, match="signature does not match"):
        open_answer(body, key=KEY, noise="n-1")


def test_unverified_refusal_still_shows_what_it_claims() -> None:
    raw = _answer("E0001", "request signature mismatch", "n-1", key="platform-side-key")
    with pytest.raises(ResponseInvalid, match="it claims E0001: request signature mismatch"):
        open_answer(raw, key=KEY, noise="n-1")


def test_encode_json_keeps_decimal_digits_and_refuses_floats() -> None:
    value = {"a": Decimal("0.10"), "b": Decimal("1E+2"), "c": [1, True, None, "引号\""]}
    assert encode_json(value) == '{"a":0.10,"b":100,"c":[1,true,null,"引号\\""]}'.encode()
    assert decode_json(encode_json(value))["a"] == Decimal("0.10")
    with pytest.raises(TypeError, match="floats are not encoded"):
        encode_json({"totalAmt": 0.1})
    with pytest.raises(TypeError, match="non-finite"):
        encode_json(Decimal("NaN"))
