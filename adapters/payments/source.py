"""The ``payment_notify`` source config: one gateway's callback endpoint on one channel.

::

    [channels.source]
    type = "payment_notify"
    gateway = "wechatpay"
    listen = "0.0.0.0:8443"
    path = "/notify/wechatpay"

    [channels.source.wechatpay]
    mchid = "1900000001"
    appid = "wxd678efh567hg6787"
    merchant_serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
    merchant_private_key = "file:/etc/hisbridge/wechatpay_merchant.pem"
    apiv3_key = "${WECHATPAY_APIV3_KEY}"
    platform_certificates = ["file:/etc/hisbridge/wechatpay_platform.pem"]

The gateway's own table (``wechatpay``, ``alipay``, ``unionpay`` or ``mobilepay``) holds the
same account settings its client uses; only the one named by ``gateway`` may be given.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from adapters.alipay.notify import AlipayNotifyVerifier
from adapters.alipay.settings import AlipaySettings
from adapters.mobilepay.notify import MobilePayNotifyVerifier
from adapters.mobilepay.settings import MobilePaySettings
from adapters.payments.notify import NotifyVerifier, PaymentNotifySource
from adapters.unionpay.notify import UnionPayNotifyVerifier
from adapters.unionpay.settings import UnionPaySettings
from adapters.wechatpay.notify import WechatPayNotifyVerifier
from adapters.wechatpay.settings import WechatPaySettings
from engine.settings import HostPort, Model

Gateway = Literal["wechatpay", "alipay", "unionpay", "mobilepay"]


class PaymentNotifyConfig(Model):
    """A payment gateway's callback endpoint (an HTTP source).

    Attributes:
        gateway: which gateway calls us here.
        listen: ``host:port`` to listen on.
        path: the URL path the gateway posts to (part of the ``notify_url`` we give it).
        max_body: largest callback accepted, in bytes.

    Payment state lives in the engine's store (``store.path``): the runtime hands the
    source its open database. A ``database`` key is refused rather than ignored.
    """

    type: Literal["payment_notify"]
    gateway: Gateway
    listen: HostPort = "127.0.0.1:8443"
    path: str = Field(default="/notify", pattern=r"^/[A-Za-z0-9_./-]*$")
    max_body: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    wechatpay: WechatPaySettings | None = None
    alipay: AlipaySettings | None = None
    unionpay: UnionPaySettings | None = None
    mobilepay: MobilePaySettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_database(cls, data: Any) -> Any:
        if isinstance(data, dict) and "database" in data:
            raise ValueError("database: payment state is kept in the engine's store "
                             "(store.path); remove this key")
        return data

    @model_validator(mode="after")
    def _account_of_gateway(self) -> PaymentNotifyConfig:
        given = [g for g in ("wechatpay", "alipay", "unionpay", "mobilepay")
                 if getattr(self, g) is not None]
        if given != [self.gateway]:
            raise ValueError(f"give the [{self.gateway}] account table (and only that one)")
        return self

    def verifier(self) -> NotifyVerifier:
        if self.wechatpay is not None:
            return WechatPayNotifyVerifier(self.wechatpay)
        if self.alipay is not None:
            return AlipayNotifyVerifier(self.alipay)
        if self.unionpay is not None:
            return UnionPayNotifyVerifier(self.unionpay)
        assert self.mobilepay is not None
        return MobilePayNotifyVerifier(self.mobilepay)

    def build(self, channel: str) -> PaymentNotifySource:
        return PaymentNotifySource(channel=channel, verifier=self.verifier(), listen=self.listen,
                                   path=self.path, max_body=self.max_body)
