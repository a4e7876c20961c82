"""The merchant settings for the UnionPay online gateway 5.1.0, and the keys they reference."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field

from adapters.payments.signing import load_certificate, load_private_key
from adapters.unionpay.crypto import cert_id
from engine.settings import Model, Secret


class UnionPaySettings(Model):
    """One UnionPay merchant.

    Attributes:
        mer_id: the 15-digit merchant number (``merId``).
        merchant_private_key, merchant_certificate: the merchant signing key and its
            certificate (PEM; a ``.pfx`` is converted once with openssl), by reference. The
            certificate serial, in decimal, is sent as ``certId``.
        root_certificates: the UnionPay CA certificates that must have issued the gateway's
            ``signPubKeyCert`` (root and intermediate), by reference.
        signer_name: text the gateway signing certificate's common name must contain.
        gateway_url: the gateway root (``/gateway/api/backTransReq.do`` ... below it).
        file_url: the root for bill downloads (``/fileTransRequest.do``); defaults to
            ``gateway_url``.
        back_url: where UnionPay posts back-end notifications (our ``payment_notify`` source).
        pay_timeout_minutes: how long a QR code stays payable (``payTimeout``).
        timeout: seconds for one API call.
    """

    mer_id: str = Field(pattern=r"^[0-9A-Za-z]{15}$")
    merchant_private_key: Secret
    merchant_certificate: Secret
    root_certificates: list[Secret] = Field(min_length=1)
    signer_name: str = "中国银联股份有限公司"
    gateway_url: str = "https://gateway.95516.com"
    file_url: str | None = None
    back_url: str = ""
    pay_timeout_minutes: int = Field(default=30, ge=1, le=1440)
    timeout: float = Field(default=10.0, gt=0, le=120)

    def credentials(self) -> UnionPayCredentials:
        cert = load_certificate(self.merchant_certificate.get(),
                                what="unionpay merchant certificate")
        return UnionPayCredentials(
            key=load_private_key(self.merchant_private_key.get(),
                                 what="unionpay merchant private key"),
            cert_id=cert_id(cert),
            roots=[load_certificate(r.get(), what="unionpay root certificate")
                   for r in self.root_certificates],
        )


@dataclass(frozen=True, slots=True, repr=False)
class UnionPayCredentials:
    key: rsa.RSAPrivateKey
    cert_id: str
    roots: list[x509.Certificate]

    def __repr__(self) -> str:
        return "UnionPayCredentials(<hidden>)"
