"""The e-invoice platform's envelope: sealing requests and opening (verifying) answers.

Request (every operation is ``POST <base>/<operation>`` with this JSON body)::

    {"appid": "...", "data": Base64(UTF-8 JSON), "noise": "<uuid>", "version": "1.0",
     "sign": UPPER(hex(MD5("appid=..&data=..&noise=..&key=<secret>&version=..")))}

The order of the signed string is the platform's (``key`` sits between ``noise`` and
``version``; it is not alphabetical).

Answer: ``{"result": "S0000", "message": Base64(UTF-8 JSON)}`` on success, otherwise
``result`` is an error code and ``message`` the error text.

Answer signature (our design; real platforms differ, hence ``SignatureCheck``): the platform
echoes the request's ``noise`` and adds ``sign = UPPER(hex(MD5("result=..&message=..&noise=..
&key=<secret>")))``. Echoing the noise binds an answer to its request, so a stale or replayed
answer is refused as well as a forged one.

- ``required``: an answer without a valid ``sign`` and echoed ``noise`` is refused.
- ``if_present``: verified when the platform sends ``sign``; accepted unsigned otherwise.
- ``off``: never verified (platforms that do not sign their answers).

Anything that cannot be trusted or decoded raises ``ResponseInvalid``; the client turns it
into an in-doubt or transient error, never into a success.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.einvoice.codec import encode_json
from adapters.exact_json import decode_json

SUCCESS = "S0000"
"""The ``result`` of a successful call."""

VERSION = "1.0"

SignatureCheck = Literal["required", "if_present", "off"]


class ResponseInvalid(Exception):
    """The platform's answer is not one we can trust or read (bad signature, Base64, JSON).

    Attributes:
        reason: what is wrong, safe to log.
        claim: for an untrusted refusal, the result and text it claims (shown in the error,
            not logged: platform texts may quote request values).
    """

    def __init__(self, reason: str, claim: str = "") -> None:
        self.reason = reason
        self.claim = claim
        super().__init__(f"{reason} (it claims {claim})" if claim else reason)


def _md5_upper(text: str) -> str:
    # MD5 is fixed by the platform's protocol; it is not our choice of hash.
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()  # noqa: S324


def request_signature(*, appid: str, data: str, noise: str, version: str, key: str) -> str:
    """The ``sign`` of a request, as the platform computes it."""
    return _md5_upper(f"appid={appid}&data={data}&noise={noise}&key={key}&version={version}")


def response_signature(*, result: str, message: str, noise: str, key: str) -> str:
    """The ``sign`` of an answer (see the module docstring for why this shape)."""
    return _md5_upper(f"result={result}&message={message}&noise={noise}&key={key}")


def encode_data(payload: Mapping[str, Any]) -> str:
    """Base64 of the payload's UTF-8 JSON: the ``data`` of a request, ``message`` of an answer."""
    return base64.b64encode(encode_json(payload)).decode("ascii")


@dataclass(frozen=True, slots=True)
class SealedRequest:
    """A request body ready to post, and the noise that its answer must echo."""

    body: bytes
    noise: str


def seal(
    payload: Mapping[str, Any],
    *,
    appid: str,
    key: str,
    version: str = VERSION,
    noise: str | None = None,
) -> SealedRequest:
    """Wrap ``payload`` in the signed envelope. A fresh UUID noise is drawn unless given."""
    data = encode_data(payload)
    noise = noise or str(uuid.uuid4())
    sign = request_signature(appid=appid, data=data, noise=noise, version=version, key=key)
    body = encode_json(
        {"appid": appid, "data": data, "noise": noise, "version": version, "sign": sign}
    )
    return SealedRequest(body, noise)


@dataclass(frozen=True, slots=True)
class Answer:
    """A verified answer: its result code, raw message and (on success) decoded data."""

    result: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result == SUCCESS


def open_answer(
    raw: bytes, *, key: str, noise: str, check: SignatureCheck = "required"
) -> Answer:
    """Parse, verify and decode one answer.

    Args:
        raw: the HTTP body as received.
        key: the shared secret.
        noise: the noise of the request this answers.
        check: how strictly to verify the answer's signature.

    Raises:
        ResponseInvalid: naming what is wrong (never the decoded content, which may hold
            patient data).
    """
    try:
        envelope = decode_json(raw)
    except ValueError:
        raise ResponseInvalid("the answer is not JSON") from None
    if not isinstance(envelope, dict):
        raise ResponseInvalid("the answer is not a JSON object")
    result = envelope.get("result")
    message = envelope.get("message", "")
    if not isinstance(result, str) or not result:
        raise ResponseInvalid("the answer has no result code")
    if not isinstance(message, str):
        raise ResponseInvalid("the answer's message is not a string")
    try:
        _verify(envelope, result=result, message=message, key=key, noise=noise, check=check)
    except ResponseInvalid as exc:
        if result == SUCCESS:
            raise
        # Not trusted, but worth showing: "it claims E0001 signature mismatch" is how a
        # wrong key shows up when the platform signs its refusals with the right one.
        raise ResponseInvalid(exc.reason, f"{result}: {message[:200]}") from None
    if result != SUCCESS:
        return Answer(result, message)
    try:
        text = base64.b64decode(message.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ResponseInvalid("the answer's message is not valid Base64") from None
    try:
        data = decode_json(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ResponseInvalid("the answer's message is not Base64 of UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise ResponseInvalid("the answer's message is not a JSON object")
    return Answer(result, message, data)


def _verify(
    envelope: dict[str, Any],
    *,
    result: str,
    message: str,
    key: str,
    noise: str,
    check: SignatureCheck,
) -> None:
    if check == "off":
        return
    sign = envelope.get("sign")
    if sign is None and check == "if_present":
        return
    if not isinstance(sign, str) or not sign:
        raise ResponseInvalid("the answer is not signed")
    echoed = envelope.get("noise")
    if not isinstance(echoed, str) or not _same(echoed, noise):
        raise ResponseInvalid("the answer does not echo the request's noise (stale or foreign)")
    expected = response_signature(result=result, message=message, noise=noise, key=key)
    if not _same(sign.upper(), expected):
        raise ResponseInvalid("the answer's signature does not match")


def _same(a: str, b: str) -> bool:
    # compare_digest refuses non-ASCII str; bytes keep it constant-time for any input.
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
