"""WeChat Pay API v3 signatures and the AEAD-AES-256-GCM resource encryption.

Requests are signed over ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n`` with the
merchant key and carried in the ``Authorization`` header. Responses and callbacks are signed
by the platform over ``TIMESTAMP\\nNONCE\\nBODY\\n`` (headers ``Wechatpay-Timestamp``,
``-Nonce``, ``-Signature``, ``-Serial``); the serial names the platform certificate or the
platform public key (``PUB_KEY_ID_...``) to verify with. Callback resources are encrypted with
the 32-byte APIv3 key, the tag appended to the ciphertext.

Source: wechatpay-apiv3/wechatpay-go (``core/auth``, ``core/notify``, ``utils/aes.go``); the
public test vectors in ``shared/reference/vectors/wechatpay-v3-go-sdk.json`` pass.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.payments.signing import sign_sha256, verify_sha256

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
MAX_SKEW_SECONDS = 300
"""WeChat Pay refuses (and so do we) a signed timestamp 5 minutes or more from now."""


class DecryptionError(ValueError):
    """The resource could not be decrypted (wrong key, tampered data, malformed Base64)."""


def request_message(method: str, canonical_url: str, timestamp: int, nonce: str, body: str) -> str:
    """The text a request signature covers; ``canonical_url`` is the path with its query."""
    return f"{method.upper()}\n{canonical_url}\n{timestamp}\n{nonce}\n{body}\n"


def authorization(
    *,
    mchid: str,
    serial_no: str,
    key: rsa.RSAPrivateKey,
    method: str,
    canonical_url: str,
    body: str,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one request."""
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = nonce or secrets.token_hex(16).upper()
    signature = sign_sha256(
        key, request_message(method, canonical_url, ts, nonce, body).encode("utf-8")
    )
    return (
        f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",timestamp="{ts}",'
        f'serial_no="{serial_no}",signature="{signature}"'
    )


_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_authorization(header: str) -> dict[str, str]:
    """The parameters of an ``Authorization`` header (for the simulator's side).

    Raises:
        ValueError: not a WECHATPAY2-SHA256-RSA2048 header or a parameter is missing.
    """
    schema, _, params = header.partition(" ")
    if schema != SCHEMA:
        raise ValueError("unknown authorization schema")
    values = dict(_AUTH_PARAM.findall(params))
    for name in ("mchid", "nonce_str", "timestamp", "serial_no", "signature"):
        if name not in values:
            raise ValueError(f"authorization lacks {name}")
    return values


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes a platform signature (response or callback) covers."""
    return timestamp.encode("ascii") + b"\n" + nonce.encode("ascii") + b"\n" + body + b"\n"


def sign_response(key: rsa.RSAPrivateKey, timestamp: str, nonce: str, body: bytes) -> str:
    return sign_sha256(key, signed_message(timestamp, nonce, body))


SIGNED_HEADERS = ("Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature",
                  "Wechatpay-Serial")
_HEADER_VALUE = re.compile(r"[\x21-\x7e]{1,1024}")


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    timestamp: str
    nonce: str
    signature: str
    serial: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedHeaders | None:
        """The four Wechatpay-* headers, or None when any is missing."""
        values = [headers.get(name) for name in SIGNED_HEADERS]
        if any(v is None or v == "" for v in values):
            return None
        ts, nonce, sig, serial = (str(v) for v in values)
        return cls(ts, nonce, sig, serial)

    def unprintable(self) -> str | None:
        """The first header whose value is not printable ASCII (1-1024 characters), or None.

        The signed text is built from them as ASCII, and a timestamp in other digits would
        still parse as one.
        """
        values = (self.timestamp, self.nonce, self.signature, self.serial)
        for name, value in zip(SIGNED_HEADERS, values, strict=True):
            if not _HEADER_VALUE.fullmatch(value):
                return name
        return None


class PlatformKeys:
    """The platform's verification keys by serial: certificates and/or a public key id."""

    def __init__(self, keys: Mapping[str, rsa.RSAPublicKey]) -> None:
        self._keys = dict(keys)

    def get(self, serial: str) -> rsa.RSAPublicKey | None:
        return self._keys.get(serial)

    def serials(self) -> list[str]:
        return sorted(self._keys)


def check_signature(
    keys: PlatformKeys, signed: SignedHeaders, body: bytes, *, now: float | None = None
) -> str | None:
    """Why a signed response or callback must be refused, or None when it verifies.

    Returns one of ``stale`` (timestamp 5 minutes or more away, or not a number),
    ``unknown_serial`` or ``bad_signature``.
    """
    try:
        ts = int(signed.timestamp)
    except ValueError:
        return "stale"
    current = time.time() if now is None else now
    if abs(current - ts) >= MAX_SKEW_SECONDS:
        return "stale"
    key = keys.get(signed.serial)
    if key is None:
        return "unknown_serial"
    if not verify_sha256(key, signed_message(signed.timestamp, signed.nonce, body),
                         signed.signature):
        return "bad_signature"
    return None


def decrypt_resource(key: bytes, nonce: str, associated_data: str, ciphertext_b64: str) -> bytes:
    """Decrypt a callback ``resource`` (AEAD_AES_256_GCM, tag appended to the ciphertext).

    Real APIv3 keys are 32 bytes; the SDK's published examples also use 16-byte keys, which
    AES-GCM accepts as AES-128, so the key length is left to the caller's configuration check.
    """
    try:
        data = base64.b64decode(ciphertext_b64, validate=True)
        return AESGCM(key).decrypt(
            nonce.encode("utf-8"), data, associated_data.encode("utf-8") or None
        )
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise DecryptionError(f"cannot decrypt resource ({type(exc).__name__})") from None


def encrypt_resource(key: bytes, nonce: str, associated_data: str, plaintext: bytes) -> str:
    """The inverse of ``decrypt_resource`` (the simulator encrypts its callbacks with it)."""
    data = AESGCM(key).encrypt(
        nonce.encode("utf-8"), plaintext, associated_data.encode("utf-8") or None
    )
    return base64.b64encode(data).decode("ascii")
