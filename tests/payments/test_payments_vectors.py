"""The gateways' published test vectors (shared/reference/vectors) and SM2/SM4 known answers."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization

from adapters.alipay import crypto as alipay
from adapters.mobilepay import crypto as sm
from adapters.payments.signing import (
    certificate_serial_hex,
    load_certificate,
    load_private_key,
    load_public_key,
    sign_sha256,
    verify_sha256,
)
from adapters.unionpay import crypto as unionpay
from adapters.wechatpay import crypto as wechat
from tests.conftest import SHARED

VECTORS = SHARED / "reference" / "vectors"


def _load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


WX = _load("wechatpay-v3-go-sdk.json")
ALI_NODE = _load("alipay-nodejs-sdk-notify.json")
ALI_PY = _load("alipay-python-sdk.json")


# -- WeChat Pay ---------------------------------------------------------------------------


def test_wechat_request_signature_matches_sdk() -> None:
    key = load_private_key(WX["keys"]["merchant_private_key_pkcs8_pem"])
    for case in WX["request_signature"]:
        assert sign_sha256(key, case["message"].encode()) == case["expected_signature"]


@pytest.mark.parametrize("case", WX["authorization_header_format"]["cases"])
def test_wechat_sign_message_and_header_layout(case: dict) -> None:
    fmt = WX["authorization_header_format"]
    message = wechat.request_message(
        case["method"], case["canonical_url"], fmt["timestamp"], fmt["nonce"], case["body"]
    )
    assert message == case["sign_message"]
    key = load_private_key(WX["keys"]["merchant_private_key_pkcs8_pem"])
    header = wechat.authorization(
        mchid=fmt["mchid"], serial_no=fmt["serial_no"], key=key, method=case["method"],
        canonical_url=case["canonical_url"], body=case["body"], timestamp=fmt["timestamp"],
        nonce=fmt["nonce"],
    )
    # Same layout as the SDK's (mock-signed) header, with a real signature in place.
    expected = case["expected_header_with_mock_signer"].replace("WECHATPAY2-Mock",
                                                                wechat.SCHEMA)
    prefix = expected.split('signature="')[0]
    assert header.startswith(prefix)
    params = wechat.parse_authorization(header)
    assert verify_sha256(load_public_key(WX["keys"]["platform_public_key_pem"]),
                         message.encode(), params["signature"])


def test_wechat_response_signature_verification() -> None:
    cert = load_certificate(WX["keys"]["platform_certificate_pem"])
    assert certificate_serial_hex(cert) == WX["keys"]["platform_certificate_serial"]
    pub = load_public_key(WX["keys"]["platform_public_key_pem"])
    for case in WX["response_signature_verification"]:
        for key in (cert.public_key(), pub):
            assert verify_sha256(key, case["message"].encode(), case["signature"]) is \
                case["expect_valid"]


def test_wechat_callback_verifies_and_decrypts() -> None:
    cb = WX["callback_notification"]
    cert = load_certificate(cb["platform_certificate_pem"])
    serial = certificate_serial_hex(cert)
    assert serial == cb["headers"]["Wechatpay-Serial"]
    keys = wechat.PlatformKeys({serial: cert.public_key()})
    signed = wechat.SignedHeaders.from_headers(cb["headers"])
    assert signed is not None
    body = cb["body"].encode()
    assert wechat.signed_message(signed.timestamp, signed.nonce, body) == \
        cb["signature_message"].encode()
    now = int(cb["headers"]["Wechatpay-Timestamp"])
    assert wechat.check_signature(keys, signed, body, now=now) is None
    resource = json.loads(body)["resource"]
    plain = wechat.decrypt_resource(cb["apiv3_key"].encode(), resource["nonce"],
                                    resource["associated_data"], resource["ciphertext"])
    assert plain.decode() == cb["expected_decrypted_resource"]
    event = json.loads(body)
    for k, v in cb["expected_fields"].items():
        assert event[k] == v


def test_wechat_callback_refusals() -> None:
    cb = WX["callback_notification"]
    cert = load_certificate(cb["platform_certificate_pem"])
    keys = wechat.PlatformKeys({certificate_serial_hex(cert): cert.public_key()})
    signed = wechat.SignedHeaders.from_headers(cb["headers"])
    assert signed is not None
    body = cb["body"].encode()
    now = int(signed.timestamp)
    # Five minutes away is refused; one second short of it is not.
    assert wechat.check_signature(keys, signed, body, now=now + 300) == "stale"
    assert wechat.check_signature(keys, signed, body, now=now - 300) == "stale"
    assert wechat.check_signature(keys, signed, body, now=now + 299) is None
    assert wechat.check_signature(keys, signed, body.replace(b"\xe7\xad\xbe", b"x"),
                                  now=now) == "bad_signature"
    other = wechat.PlatformKeys({"0123": cert.public_key()})
    assert wechat.check_signature(other, signed, body, now=now) == "unknown_serial"
    missing = dict(cb["headers"])
    del missing["Wechatpay-Signature"]
    assert wechat.SignedHeaders.from_headers(missing) is None


def test_wechat_aead_examples() -> None:
    for case in WX["aead_aes_256_gcm_decrypt"]:
        plain = wechat.decrypt_resource(case["apiv3_key"].encode(), case["nonce"],
                                        case["associated_data"], case["ciphertext_b64"])
        assert plain.decode() == case["expected_plaintext"]
        for neg in case["negative_cases"]:
            with pytest.raises(wechat.DecryptionError):
                wechat.decrypt_resource(neg.get("apiv3_key", case["apiv3_key"]).encode(),
                                        case["nonce"], case["associated_data"],
                                        neg.get("ciphertext_b64", case["ciphertext_b64"]))
    with pytest.raises(wechat.DecryptionError):
        wechat.decrypt_resource(b"k" * 32, "n" * 12, "", "not base64!!")


def test_wechat_encrypt_round_trip_with_32_byte_key() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    text = wechat.encrypt_resource(key, "abcdefghijkl", "transaction", b'{"a":1}')
    assert wechat.decrypt_resource(key, "abcdefghijkl", "transaction", text) == b'{"a":1}'
    with pytest.raises(wechat.DecryptionError):
        wechat.decrypt_resource(key, "abcdefghijkl", "refund", text)


# -- Alipay -------------------------------------------------------------------------------


def test_alipay_real_notify_verifies() -> None:
    key = load_public_key(ALI_NODE["alipay_public_key_spki_der_base64"])
    params = ALI_NODE["notify_params"]
    assert alipay.notify_content(params) == ALI_NODE["expected_signed_string"]
    assert alipay.verify_notify(key, params) is True


def test_alipay_notify_refused_when_tampered_or_sign_type_kept() -> None:
    key = load_public_key(ALI_NODE["alipay_public_key_spki_der_base64"])
    params = dict(ALI_NODE["notify_params"])
    params["total_amount"] = "1000.10"
    assert alipay.verify_notify(key, params) is False
    original = ALI_NODE["notify_params"]
    with_type = alipay.sign_content(original)  # keeps sign_type: must not verify
    assert not verify_sha256(key, with_type.encode(), original["sign"])
    assert alipay.verify_notify(key, {k: v for k, v in original.items() if k != "sign"}) is False


def test_alipay_python_sdk_sign_and_verify() -> None:
    keys = ALI_PY["keys"]
    for case in ALI_PY["sign"]:
        if case["sign_type"] != "RSA2":
            continue  # RSA (SHA-1) is the retired scheme; hisbridge signs RSA2 only
        for pem in (keys["app_private_key_pkcs1_pem"], keys["app_private_key_pkcs8_pem"]):
            key = load_private_key(pem)
            assert sign_sha256(key, case["message"].encode()) == case["expected_signature"]
    pub = load_public_key(keys["app_public_key_pem"])
    for case in ALI_PY["verify"]:
        assert verify_sha256(pub, case["message"].encode(), case["signature"]) is \
            case["expect_valid"]


def test_alipay_sync_response_extraction() -> None:
    for case in ALI_PY["sync_response_sign_content_extraction"]["cases"]:
        got = alipay.extract_signed_response(case["raw_response"], case["response_type"])
        if "expected_sign_content" in case:
            assert got == case["expected_sign_content"]
        else:
            assert got is None  # malformed: an answer, not an exception


def test_alipay_notify_unsigned_string() -> None:
    vec = ALI_PY["notify_unsigned_string"]
    params = dict(vec["params"], sign=vec["signature"])
    assert alipay.notify_content(params) == vec["string_to_verify"]
    key = load_public_key(ALI_PY["keys"]["ali_public_key_pem"])
    assert alipay.verify_notify(key, params) is vec["expect_valid"]


def test_alipay_response_sign_round_trip() -> None:
    priv = load_private_key(ALI_PY["keys"]["ali_private_key_pem"])
    pub = load_public_key(ALI_PY["keys"]["ali_public_key_pem"])
    node = '{"code":"10000","msg":"Success","out_trade_no":"A1","qr_code":"https://qr/x"}'
    raw = '{"alipay_trade_precreate_response":' + node + ',"sign":"' + \
        alipay.sign_response(priv, node) + '"}'
    got = alipay.extract_signed_response(raw, alipay.response_node_name("alipay.trade.precreate"))
    assert got == node
    assert alipay.verify_response(pub, got, json.loads(raw)["sign"])
    assert not alipay.verify_response(pub, got.replace("A1", "A2"), json.loads(raw)["sign"])


# -- UnionPay -----------------------------------------------------------------------------


def test_unionpay_signing_text_and_round_trip() -> None:
    key = load_private_key(ALI_PY["keys"]["app_private_key_pkcs8_pem"])
    fields = {"version": "5.1.0", "txnAmt": "100", "orderId": "A1", "signMethod": "01",
              "signature": "ignored"}
    assert unionpay.signing_text(fields) == "orderId=A1&signMethod=01&txnAmt=100&version=5.1.0"
    signed = dict(fields, signature=unionpay.sign_fields(key, fields))
    assert unionpay.verify_fields(key.public_key(), signed)
    assert not unionpay.verify_fields(key.public_key(), dict(signed, txnAmt="101"))
    # What is RSA-signed is the hex digest text, not the fields themselves.
    assert verify_sha256(key.public_key(), unionpay.digest_text(fields), signed["signature"])


# -- SM2 / SM4 (insurance mobile payment) ---------------------------------------------------


def test_sm4_known_answer() -> None:
    # GB/T 32907-2016 example 1: key = plaintext = 0123456789abcdeffedcba9876543210.
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    block = sm._sm4_ecb(key, key, encrypt=True)
    assert block.hex() == "681edf34d206965e86b3e94f536e4246"
    assert sm.sm4_decrypt(key, sm.sm4_encrypt(key, b"hello")) == b"hello"
    with pytest.raises(sm.EnvelopeError):
        sm.sm4_decrypt(b"x" * 16, sm.sm4_encrypt(key, b"hello"))
    with pytest.raises(sm.EnvelopeError):
        sm.sm4_decrypt(key, b"short")


def test_sm2_sign_verify_and_envelope() -> None:
    priv, pub = sm.new_keypair()
    sig = sm.sm2_sign(priv, pub, b"message")
    assert sm.sm2_verify(pub, b"message", sig)
    assert not sm.sm2_verify(pub, b"messagE", sig)
    assert not sm.sm2_verify(pub, b"message", "bm90IGEgc2lnbmF0dXJl")
    assert sm.normalize_public_key("04" + pub) == pub
    assert sm.normalize_public_key(base64.b64encode(bytes.fromhex("04" + pub)).decode()) == pub
    data = {"payOrdId": "P1", "feeSumamt": "12.30", "items": [{"b": 1, "a": "x"}], "name": "张三"}
    env = sm.seal(app_id="APPID0123456789ABCDEF", app_secret="SECRET0123456789", private_hex=priv,
                  public_hex=pub, data=data, timestamp=1700000000)
    assert "data" not in env
    assert "张" not in json.dumps(env)
    opened = sm.open_envelope(env, app_secret="SECRET0123456789", peer_public_hex=pub)
    assert opened["feeSumamt"] == "12.30"
    assert opened["name"] == "张三"
    tampered = dict(env, timestamp=1700000001)
    with pytest.raises(sm.EnvelopeError, match="bad signature"):
        sm.open_envelope(tampered, app_secret="SECRET0123456789", peer_public_hex=pub)
    with pytest.raises(sm.EnvelopeError):
        sm.open_envelope(env, app_secret="WRONGSECRET00000", peer_public_hex=pub)


def test_sm2_key_parsing_rejects_garbage() -> None:
    with pytest.raises(sm.EnvelopeError):
        sm.normalize_public_key("zz")
    with pytest.raises(sm.EnvelopeError):
        sm.normalize_private_key("00" * 32)
    priv, _ = sm.new_keypair()
    assert sm.normalize_private_key(priv) == priv


def test_private_key_loader_hides_material() -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        load_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
    assert "AAAA" not in str(err.value)
    pem = load_private_key(ALI_PY["keys"]["app_private_key_pkcs8_pem"]).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    assert load_private_key(base64.b64encode(pem).decode()).key_size == 2048
