"""RSA keys, certificates and SHA256withRSA, as WeChat Pay, Alipay and UnionPay use them.

All three gateways sign with RSASSA-PKCS1-v1_5 over SHA-256 and exchange Base64 signatures;
they differ in what they sign (see each adapter). Keys arrive as PEM (PKCS#1 or PKCS#8),
as bare Base64 DER (Alipay's console hands out the public key that way) or as X.509
certificates. Loading errors become ``ConfigError`` without echoing the key material.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from engine.errors import ConfigError


def load_private_key(text: str, *, what: str = "private key") -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 or PKCS#8) or bare Base64 PKCS#8 DER."""
    data = text.strip()
    try:
        if data.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(data.encode("ascii"), password=None)
        else:
            key = serialization.load_der_private_key(_b64(data), password=None)
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError(f"{what}: not a readable RSA private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{what}: not an RSA key")
    return key


def load_public_key(text: str, *, what: str = "public key") -> rsa.RSAPublicKey:
    """An RSA public key from a PEM public key, a PEM certificate or bare Base64 SPKI DER."""
    data = text.strip()
    key: object
    try:
        if data.startswith("-----BEGIN CERTIFICATE"):
            key = x509.load_pem_x509_certificate(data.encode("ascii")).public_key()
        elif data.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(data.encode("ascii"))
        else:
            key = serialization.load_der_public_key(_b64(data))
    except (ValueError, TypeError, binascii.Error):
        raise ConfigError(f"{what}: not a readable RSA public key or certificate") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{what}: not an RSA key")
    return key


def load_certificate(text: str, *, what: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(text.strip().encode("ascii"))
    except (ValueError, TypeError):
        raise ConfigError(f"{what}: not a readable PEM certificate") from None


def certificate_serial_hex(cert: x509.Certificate) -> str:
    """The serial as WeChat Pay writes it: upper-case hex without leading zeros."""
    return format(cert.serial_number, "X")


def sign_sha256(key: rsa.RSAPrivateKey, message: bytes) -> str:
    """SHA256withRSA (PKCS#1 v1.5), Base64: what every gateway here calls RSA2 / RSA-SHA256."""
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify_sha256(key: rsa.RSAPublicKey, message: bytes, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid SHA256withRSA signature of ``message``.

    Malformed Base64 is simply invalid: a callback's signature is attacker-controlled input.
    """
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def new_private_key() -> rsa.RSAPrivateKey:
    """A fresh RSA 2048 key (simulators and tests generate theirs at start)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def issue_certificate(
    subject_key: rsa.RSAPrivateKey,
    common_name: str,
    *,
    issuer_key: rsa.RSAPrivateKey | None = None,
    issuer: x509.Certificate | None = None,
    serial: int | None = None,
    ca: bool = False,
    days: int = 365,
) -> x509.Certificate:
    """A certificate for ``subject_key``: self-signed, or issued by ``issuer``/``issuer_key``.

    Used by the simulators (platform certificates, UnionPay's root and signing certificates)
    and by tests; production certificates come from the gateways.
    """
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(subject_key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(issuer_key or subject_key, hashes.SHA256())


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _b64(text: str) -> bytes:
    return base64.b64decode("".join(text.split()), validate=True)
