"""The app settings for the Alipay OpenAPI, and the keys they reference."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field

from adapters.payments.signing import load_private_key, load_public_key
from engine.settings import Model, Secret


class AlipaySettings(Model):
    """One Alipay app.

    Attributes:
        app_id: the app id (APPID).
        app_private_key: the app's RSA2 private key (PEM or Base64 PKCS#8), by reference.
        alipay_public_key: Alipay's public key (PEM or the console's Base64), by reference.
        seller_id: when set, notifications for another seller (PID) are refused.
        gateway_url: the OpenAPI gateway (the simulator's ``/gateway.do`` in tests).
        notify_url: where Alipay sends notifies (our ``payment_notify`` source).
        timeout: seconds for one API call.
    """

    app_id: str = Field(min_length=1)
    app_private_key: Secret
    alipay_public_key: Secret
    seller_id: str | None = None
    gateway_url: str = "https://openapi.alipay.com/gateway.do"
    notify_url: str = ""
    timeout: float = Field(default=10.0, gt=0, le=120)

    def credentials(self) -> AlipayCredentials:
        return AlipayCredentials(
            app_key=load_private_key(self.app_private_key.get(), what="alipay app private key"),
            alipay_key=load_public_key(self.alipay_public_key.get(),
                                       what="alipay public key"),
        )


@dataclass(frozen=True, slots=True, repr=False)
class AlipayCredentials:
    app_key: rsa.RSAPrivateKey
    alipay_key: rsa.RSAPublicKey

    def __repr__(self) -> str:
        return "AlipayCredentials(<hidden>)"
