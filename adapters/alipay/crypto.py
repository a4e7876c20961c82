"""Alipay OpenAPI (gateway v2) RSA2 signatures.

- Requests: every parameter but ``sign``, empty values dropped, sorted by key, joined as
  ``k=v`` with ``&`` (values not URL-encoded), SHA256withRSA with the app key, Base64.
- Synchronous responses: the signature covers the raw JSON text of the
  ``<method>_response`` node exactly as received (re-serialising would change it).
- Asynchronous notifies: drop ``sign`` **and** ``sign_type``, then as for requests.

Sources: alipay/alipay-sdk-nodejs-all (``src/util.ts``), fzlee/alipay; the vectors in
``shared/reference/vectors/alipay-*.json`` pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.signing import sign_sha256, verify_sha256


def sign_content(params: Mapping[str, str], *, exclude: tuple[str, ...] = ("sign",)) -> str:
    """The string a request signature covers."""
    return "&".join(
        f"{k}={params[k]}" for k in sorted(params) if k not in exclude and params[k] != ""
    )


def notify_content(params: Mapping[str, str]) -> str:
    """The string an asynchronous notify's signature covers (no ``sign``, no ``sign_type``)."""
    return sign_content(params, exclude=("sign", "sign_type"))


def sign_params(key: rsa.RSAPrivateKey, params: Mapping[str, str]) -> str:
    return sign_sha256(key, sign_content(params).encode("utf-8"))


def verify_notify(key: rsa.RSAPublicKey, params: Mapping[str, str]) -> bool:
    sign = params.get("sign", "")
    return bool(sign) and verify_sha256(key, notify_content(params).encode("utf-8"), sign)


def response_node_name(method: str) -> str:
    """``alipay.trade.precreate`` → ``alipay_trade_precreate_response``."""
    return method.replace(".", "_") + "_response"


def extract_signed_response(raw: str, node: str) -> str | None:
    """The raw text of ``node``'s value in a response, exactly as received.

    Returns None when the node is missing, is not a JSON object, or the text is not
    well-formed JSON from there on (malformed input is an answer, not a crash).
    """
    decoder = json.JSONDecoder()
    key = json.dumps(node)
    start = raw.find(key)
    while start != -1:
        i = start + len(key)
        while i < len(raw) and raw[i] in " \t\r\n":
            i += 1
        if i < len(raw) and raw[i] == ":":
            i += 1
            while i < len(raw) and raw[i] in " \t\r\n":
                i += 1
            try:
                value, end = decoder.raw_decode(raw, i)
            except ValueError:
                return None
            return raw[i:end] if isinstance(value, dict) else None
        start = raw.find(key, start + 1)
    return None


def sign_response(key: rsa.RSAPrivateKey, node_text: str) -> str:
    """What the gateway (the simulator) signs for a synchronous response."""
    return sign_sha256(key, node_text.encode("utf-8"))


def verify_response(key: rsa.RSAPublicKey, node_text: str, sign: str) -> bool:
    return verify_sha256(key, node_text.encode("utf-8"), sign)
