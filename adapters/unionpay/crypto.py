"""UnionPay online gateway 5.1.0 signatures (``signMethod=01``) and certificate checks.

Signing: every field but ``signature``, sorted, joined as ``k=v&...`` (not URL-encoded);
take the lower-case hex SHA-256 of that text, sign *the hex text* with SHA256withRSA, Base64.
``certId`` is the decimal serial of the signing certificate. The gateway's answers and
notifications carry their signing certificate in ``signPubKeyCert``; it is believed only when
it was issued by a configured UnionPay CA certificate and is within its validity dates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.payments.signing import sign_sha256, verify_sha256


def signing_text(fields: Mapping[str, str]) -> str:
    return "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "signature")


def digest_text(fields: Mapping[str, str]) -> bytes:
    """The bytes that are actually RSA-signed: the hex SHA-256 of the signing text."""
    return hashlib.sha256(signing_text(fields).encode("utf-8")).hexdigest().encode("ascii")


def sign_fields(key: rsa.RSAPrivateKey, fields: Mapping[str, str]) -> str:
    return sign_sha256(key, digest_text(fields))


def verify_fields(key: rsa.RSAPublicKey, fields: Mapping[str, str]) -> bool:
    signature = fields.get("signature", "")
    return bool(signature) and verify_sha256(key, digest_text(fields), signature)


def trusted_signer(
    cert_pem: str, roots: Sequence[x509.Certificate], *, now: dt.datetime | None = None
) -> rsa.RSAPublicKey | None:
    """The key of ``signPubKeyCert`` when a configured CA issued it and it is current."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    moment = now or dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        return None
    for root in roots:
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        key = cert.public_key()
        return key if isinstance(key, rsa.RSAPublicKey) else None
    return None


def check_fields(
    fields: Mapping[str, str], roots: Sequence[x509.Certificate], signer_name: str
) -> str | None:
    """Why a gateway message must be refused, or None when it verifies.

    Returns ``missing_signature``, ``untrusted_certificate`` (not issued by a configured CA,
    expired, or not the gateway's name) or ``bad_signature``.
    """
    if not fields.get("signature") or not fields.get("signPubKeyCert"):
        return "missing_signature"
    if fields.get("signMethod", "01") != "01":
        return "bad_signature"
    key = trusted_signer(fields["signPubKeyCert"], roots)
    if key is None or signer_name not in _common_name(fields["signPubKeyCert"]):
        return "untrusted_certificate"
    return None if verify_fields(key, fields) else "bad_signature"


def _common_name(cert_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.strip().encode("ascii"))
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def cert_id(cert: x509.Certificate) -> str:
    """``certId``: the certificate serial in decimal."""
    return str(cert.serial_number)
