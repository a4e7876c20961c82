"""The merchant account settings for WeChat Pay v3, and the keys they reference."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import Field, model_validator

from adapters.payments.signing import (
    certificate_serial_hex,
    load_certificate,
    load_private_key,
    load_public_key,
)
from adapters.wechatpay.crypto import PlatformKeys
from engine.errors import ConfigError
from engine.settings import Model, Secret


class WechatPaySettings(Model):
    """One merchant account.

    Attributes:
        mchid: the merchant id (商户号).
        appid: the app (公众号 / 小程序) id orders are made for.
        merchant_serial: the serial of the merchant API certificate (signs our requests).
        merchant_private_key: the merchant API private key (PEM), by reference.
        apiv3_key: the 32-byte APIv3 key that decrypts callbacks, by reference.
        platform_certificates: WeChat Pay platform certificates (PEM), by reference; their
            serials name them in ``Wechatpay-Serial``.
        platform_public_key, platform_public_key_id: the newer "platform public key" mode
            (``PUB_KEY_ID_...``), instead of or beside the certificates.
        base_url: the API root (the simulator's URL in tests and demos).
        notify_url: where WeChat Pay sends callbacks (our ``payment_notify`` source).
        timeout: seconds for one API call.
    """

    mchid: str = Field(min_length=1)
    appid: str = Field(min_length=1)
    merchant_serial: str = Field(min_length=1)
    merchant_private_key: Secret
    apiv3_key: Secret
    platform_certificates: list[Secret] = Field(default_factory=list)
    platform_public_key: Secret | None = None
    platform_public_key_id: str | None = None
    base_url: str = "https://api.mch.weixin.qq.com"
    notify_url: str = ""
    timeout: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _some_platform_key(self) -> WechatPaySettings:
        if not self.platform_certificates and self.platform_public_key is None:
            raise ValueError("give platform_certificates or platform_public_key")
        if (self.platform_public_key is None) != (self.platform_public_key_id is None):
            raise ValueError("platform_public_key and platform_public_key_id go together")
        return self

    def credentials(self) -> WechatPayCredentials:
        """Resolve and load every referenced key (raises ``ConfigError``, never echoes keys)."""
        apiv3 = self.apiv3_key.get().encode("utf-8")
        if len(apiv3) != 32:
            raise ConfigError("wechatpay.apiv3_key must be 32 bytes")
        keys: dict[str, rsa.RSAPublicKey] = {}
        for ref in self.platform_certificates:
            cert = load_certificate(ref.get(), what="wechatpay platform certificate")
            key = cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise ConfigError("wechatpay platform certificate: not an RSA key")
            keys[certificate_serial_hex(cert)] = key
        if self.platform_public_key is not None and self.platform_public_key_id is not None:
            keys[self.platform_public_key_id] = load_public_key(
                self.platform_public_key.get(), what="wechatpay platform public key")
        return WechatPayCredentials(
            merchant_key=load_private_key(self.merchant_private_key.get(),
                                          what="wechatpay merchant private key"),
            apiv3_key=apiv3,
            platform=PlatformKeys(keys),
        )


@dataclass(frozen=True, slots=True, repr=False)
class WechatPayCredentials:
    merchant_key: rsa.RSAPrivateKey
    apiv3_key: bytes
    platform: PlatformKeys

    def __repr__(self) -> str:
        return "WechatPayCredentials(<hidden>)"
