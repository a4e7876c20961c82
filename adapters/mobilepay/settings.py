"""The hospital's settings for the insurance mobile-payment platform, and its keys."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from adapters.mobilepay import crypto
from engine.errors import ConfigError
from engine.settings import Model, Secret

DEFAULT_PATHS = {
    # (unconfirmed) paths seen in hospital integrations; configurable per province.
    "6201": "/org/local/api/hos/uldFeeInfo",
    "6202": "/org/local/api/hos/pay_order",
    "6203": "/org/local/api/hos/refundOrder",
    "6301": "/org/local/api/hos/query_order_info",
}


class MobilePaySettings(Model):
    """One hospital app on the mobile-payment platform.

    Attributes:
        app_id: the platform-issued app id (at least 16 characters: it seeds the SM4 key).
        app_secret: the app secret (derives the SM4 data key, ends the signed text).
        private_key: the hospital's SM2 private key (hex or Base64), by reference.
        platform_public_key: the platform's SM2 public key (hex or Base64), by reference.
        org_code: the institution code (``fixmedins_code``, 12 characters).
        base_url: the platform root; ``paths`` maps transaction codes to paths below it.
        notify_url: where the platform posts results (our ``payment_notify`` source).
        timeout: seconds for one call.
    """

    app_id: str = Field(min_length=16)
    app_secret: Secret
    private_key: Secret
    platform_public_key: Secret
    org_code: str = Field(min_length=1, max_length=30)
    base_url: str = "https://fuwu.nhsa.gov.cn"
    paths: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PATHS))
    notify_url: str = ""
    version: str = "1.0.0"
    timeout: float = Field(default=15.0, gt=0, le=120)

    def credentials(self) -> MobilePayCredentials:
        try:
            private = crypto.normalize_private_key(self.private_key.get())
            platform = crypto.normalize_public_key(self.platform_public_key.get())
        except crypto.EnvelopeError as exc:
            raise ConfigError(f"mobilepay: {exc}") from None
        return MobilePayCredentials(self.app_secret.get(), private,
                                    crypto.public_key_of(private), platform)


@dataclass(frozen=True, slots=True, repr=False)
class MobilePayCredentials:
    app_secret: str
    private_hex: str
    public_hex: str
    platform_public_hex: str

    def __repr__(self) -> str:
        return "MobilePayCredentials(<hidden>)"
