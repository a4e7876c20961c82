"""The SM2/SM4 envelope of the insurance mobile-payment interface (医保移动支付).

Every request, answer and notification is a JSON envelope
``{appId, encType:"SM4", signType:"SM2", timestamp, version, encData, signData}``:

- ``encData``: the business ``data`` as ASCII JSON (non-ASCII as ``\\uXXXX``), SM4-ECB with
  PKCS#7 padding, upper-case hex. The SM4 key is derived from the app id and secret:
  SM4-ECB(key = first 16 bytes of ``appId``, PKCS#7(``appSecret``)), upper-case hex, first 16
  characters taken as the ASCII key.
- ``signData``: SM3withSM2 (user id ``1234567812345678``) over the text
  ``k=v&...&key=<appSecret>`` of the envelope's fields sorted by key (``signData``,
  ``encData`` and ``extra`` left out, empty values dropped) where ``data`` is the plaintext
  business object as canonical JSON (keys sorted, numbers and booleans as strings, empty
  values dropped); Base64 of the 64-byte ``r || s``.

The rules follow a public web client of the national platform (star0904/SourceCode,
``国家医保服务平台--sm国密/fuwu.js``); the insurer's own specification was not available, so
they are (unconfirmed) and kept in this one module. SM2/SM3/SM4 come from ``gmssl``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from gmssl import sm2, sm4

from adapters.exact_json import decode_json

_CURVE = sm2.default_ecc_table
_N = int(_CURVE["n"], 16)
_EXCLUDED = ("signData", "encData", "extra")


class EnvelopeError(ValueError):
    """An envelope that cannot be opened: bad hex, bad padding, wrong key, not JSON."""


# -- SM4 ----------------------------------------------------------------------------------


def _sm4_ecb(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    if len(key) != 16:
        raise EnvelopeError("an SM4 key is 16 bytes")
    cipher = sm4.CryptSM4(sm4.SM4_ENCRYPT if encrypt else sm4.SM4_DECRYPT, padding_mode=None)
    cipher.set_key(key, sm4.SM4_ENCRYPT if encrypt else sm4.SM4_DECRYPT)
    # padding_mode=None: gmssl neither pads nor unpads; PKCS#7 is done (and checked) here.
    out: bytes = cipher.crypt_ecb(data)
    return out


def _pad(data: bytes) -> bytes:
    n = 16 - len(data) % 16
    return data + bytes([n]) * n


def _unpad(data: bytes) -> bytes:
    if not data or len(data) % 16:
        raise EnvelopeError("SM4 ciphertext is not a whole number of blocks")
    n = data[-1]
    if not 1 <= n <= 16 or data[-n:] != bytes([n]) * n:
        raise EnvelopeError("bad SM4 padding (wrong key or corrupted data)")
    return data[:-n]


def sm4_encrypt(key: bytes, plaintext: bytes) -> bytes:
    return _sm4_ecb(key, _pad(plaintext), encrypt=True)


def sm4_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    if not ciphertext or len(ciphertext) % 16:
        raise EnvelopeError("SM4 ciphertext is not a whole number of blocks")
    return _unpad(_sm4_ecb(key, ciphertext, encrypt=False))


def derive_sm4_key(app_id: str, app_secret: str) -> bytes:
    """The data key both sides derive from the app id and secret."""
    seed = app_id.encode("utf-8")[:16]
    if len(seed) != 16:
        raise EnvelopeError("the app id must be at least 16 bytes to derive the SM4 key")
    return sm4_encrypt(seed, app_secret.encode("utf-8")).hex().upper()[:16].encode("ascii")


def encrypt_data(key: bytes, data: Mapping[str, Any]) -> str:
    text = json.dumps(_jsonable(data), ensure_ascii=True, separators=(",", ":"))
    return sm4_encrypt(key, text.encode("ascii")).hex().upper()


def decrypt_data(key: bytes, enc_data: str) -> dict[str, Any]:
    try:
        raw = bytes.fromhex(enc_data)
    except ValueError:
        raise EnvelopeError("encData is not hex") from None
    plain = sm4_decrypt(key, raw)
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("encData does not decrypt to UTF-8 text") from None
    try:
        # NaN, Infinity and nesting too deep for the parser are refused here, not later
        # as a TypeError or RecursionError out of the signature check.
        data = decode_json(text)
    except ValueError as exc:
        raise EnvelopeError(f"encData does not decrypt to JSON ({str(exc)[:80]})") from None
    if not isinstance(data, dict):
        raise EnvelopeError("encData is not a JSON object")
    return data


# -- the text that is signed --------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        raise EnvelopeError("a signed field is a float (amounts and times never are)")
    if isinstance(value, Mapping):
        out = {}
        for k in sorted(value):
            v = _canonical(value[k])
            if v is None or v == "" or v == []:
                continue
            out[str(k)] = v
        return out
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def sign_text(envelope: Mapping[str, Any], data: Mapping[str, Any], app_secret: str) -> str:
    """The text SM2 signs: sorted ``k=v`` of the envelope (``data`` in plaintext) + key."""
    fields: dict[str, Any] = {
        k: v for k, v in envelope.items() if k not in _EXCLUDED and k != "data" and v is not None
    }
    fields["data"] = data
    parts = []
    try:
        for k in sorted(fields):
            v = fields[k]
            if k == "data":
                parts.append("data=" + json.dumps(_canonical(v), ensure_ascii=False,
                                                  separators=(",", ":")))
            elif v != "":
                parts.append(f"{k}={_canonical(v)}")
    except RecursionError:
        raise EnvelopeError("the signed fields are nested too deeply") from None
    parts.append(f"key={app_secret}")
    return "&".join(parts)


# -- SM2 ----------------------------------------------------------------------------------


def _crypt(private_hex: str = "", public_hex: str = "") -> sm2.CryptSM2:
    crypt = sm2.CryptSM2(private_key=private_hex, public_key="00")
    # Set the point directly: gmssl's constructor strips a "04" prefix with lstrip, which
    # also eats leading 0/4 digits of the x coordinate.
    crypt.public_key = public_hex
    return crypt


def normalize_public_key(text: str) -> str:
    """An SM2 public key as 128 hex digits (x || y), from hex (with or without ``04``)
    or Base64 of the 65-byte uncompressed point."""
    value = text.strip()
    if len(value) in (128, 130) and all(c in "0123456789abcdefABCDEF" for c in value):
        raw = bytes.fromhex(value)
    else:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise EnvelopeError("not an SM2 public key") from None
    if len(raw) == 65 and raw[0] == 4:
        raw = raw[1:]
    if len(raw) != 64:
        raise EnvelopeError("not an SM2 public key")
    return raw.hex()


def normalize_private_key(text: str) -> str:
    value = text.strip()
    try:
        raw = bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("not an SM2 private key") from None
    raw = raw[-32:] if len(raw) == 33 and raw[0] == 0 else raw
    if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < _N:
        raise EnvelopeError("not an SM2 private key")
    return raw.hex()


def public_key_of(private_hex: str) -> str:
    """The public key (x || y hex) of an SM2 private key."""
    public: str = _crypt(private_hex)._kg(int(private_hex, 16), _CURVE["g"])
    return public


def new_keypair() -> tuple[str, str]:
    """A fresh SM2 key pair as (private hex, public hex x || y)."""
    private = f"{secrets.randbelow(_N - 1) + 1:064x}"
    return private, public_key_of(private)


def sm2_sign(private_hex: str, public_hex: str, message: bytes) -> str:
    """SM3withSM2 with the default user id; Base64 of ``r || s``."""
    crypt = _crypt(private_hex, public_hex)
    while True:
        k = f"{secrets.randbelow(_N - 1) + 1:064x}"
        signature = crypt.sign_with_sm3(message, k)
        if signature:
            return base64.b64encode(bytes.fromhex(signature)).decode("ascii")


def sm2_verify(public_hex: str, message: bytes, signature_b64: str) -> bool:
    try:
        raw = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) != 64:
        return False
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return False
    try:
        return bool(_crypt(public_hex=public_hex).verify_with_sm3(raw.hex(), message))
    except (ValueError, TypeError, IndexError):
        return False


# -- whole envelopes ----------------------------------------------------------------------


def seal(
    *,
    app_id: str,
    app_secret: str,
    private_hex: str,
    public_hex: str,
    data: Mapping[str, Any],
    timestamp: int,
    version: str = "1.0.0",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sign and encrypt ``data`` into an envelope ready to send as JSON."""
    envelope: dict[str, Any] = {
        "appId": app_id,
        "encType": "SM4",
        "signType": "SM2",
        "timestamp": timestamp,
        "version": version,
    }
    if extra:
        envelope.update(extra)
    text = sign_text(envelope, data, app_secret)
    envelope["signData"] = sm2_sign(private_hex, public_hex, text.encode("utf-8"))
    envelope["encData"] = encrypt_data(derive_sm4_key(app_id, app_secret), data)
    return envelope


def open_envelope(
    envelope: Mapping[str, Any], *, app_secret: str, peer_public_hex: str
) -> dict[str, Any]:
    """Decrypt and verify an envelope; return its business ``data``.

    Raises:
        EnvelopeError: malformed, not decryptable, or the signature does not verify.
    """
    app_id = envelope.get("appId")
    enc = envelope.get("encData")
    sig = envelope.get("signData")
    if not isinstance(app_id, str) or not isinstance(enc, str) or not isinstance(sig, str):
        raise EnvelopeError("envelope lacks appId, encData or signData")
    if envelope.get("encType") != "SM4" or envelope.get("signType") != "SM2":
        raise EnvelopeError("envelope is not SM4/SM2")
    data = decrypt_data(derive_sm4_key(app_id, app_secret), enc)
    text = sign_text(envelope, data, app_secret)
    if not sm2_verify(peer_public_hex, text.encode("utf-8"), sig):
        raise EnvelopeError("bad signature")
    return data
