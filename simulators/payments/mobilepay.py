"""An insurance mobile-payment platform simulator (6201 / 6202 / 6203 / 6301, SM2/SM4).

At start it generates the platform's SM2 key pair (the hospital is configured with its
public key). Every request envelope is opened with the app secret and verified with the
hospital's SM2 public key; every answer and notification is sealed and signed the same way
(``adapters.mobilepay.crypto``). A settled order splits into fund, personal account and cash
(60 / 20 / 20 percent, modelled). Notifications are resent until the hospital answers
``{"code": 0}``, 15 s, 30 s, 1 min, 5 min, 15 min, 30 min and 1 h apart (unconfirmed) times
``time_factor``.

Run alone: ``python -m simulators.payments.mobilepay --port 8704`` (``main(argv)``).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from adapters.mobilepay import crypto
from adapters.mobilepay.client import BUSY, NOT_FOUND, fen_of
from adapters.mobilepay.settings import DEFAULT_PATHS
from adapters.payments.money import format_yuan
from engine.errors import PermanentError
from simulators.payments.core import (
    Served,
    SimError,
    SimServer,
    china_now,
    command_line,
    drop_connection,
    run_until_interrupted,
    serve_until_cancelled,
    write_key_files,
)

RETRY_SCHEDULE = [15, 30, 60, 300, 900, 1800, 3600]
STATE_ERROR, EXCEEDS, REFUSED = 1002, 1003, 1401


@dataclass
class MobileOrder:
    med_org_ord: str
    pay_ord_id: str
    pay_token: str
    amount: int
    notify_url: str
    pay_auth_no: str = ""
    status: str = "0"
    setl_time: str = ""
    refunds: dict[str, MobileRefund] = field(default_factory=dict)

    def split(self) -> dict[str, str]:
        fund = self.amount * 60 // 100
        acct = self.amount * 20 // 100
        return {"fundPay": format_yuan(fund), "psnAcctPay": format_yuan(acct),
                "ownPayAmt": format_yuan(self.amount - fund - acct)}


@dataclass
class MobileRefund:
    app_refd_sn: str
    amount: int
    status: str = "PROC"
    refd_time: str = ""


def _now() -> str:
    return china_now().strftime("%Y-%m-%d %H:%M:%S")


class MobilePaySimulator(Served):
    def __init__(self, *, app_id: str = "1GJ3K5L7M9N1P3Q5R7S9", app_secret: str | None = None,
                 hospital_public_key: str | None = None, time_factor: float = 1.0,
                 refund_delay: float = 2.0) -> None:
        self.app_id = app_id
        self.app_secret = app_secret or secrets.token_hex(16).upper()
        self.private_hex, self.public_hex = crypto.new_keypair()
        self.demo_hospital_key: str | None = None
        if hospital_public_key is None:
            self.demo_hospital_key, hospital_public_key = crypto.new_keypair()
        self.hospital_public_hex = crypto.normalize_public_key(hospital_public_key)
        self.refund_delay = refund_delay
        self.orders: dict[str, MobileOrder] = {}
        self.counts = {"uploads": 0, "orders_created": 0, "charges": 0, "refunds_created": 0,
                       "query_calls": 0, "refused_signatures": 0}
        self.server = SimServer.for_gateway("mobilepay", self, schedule=RETRY_SCHEDULE,
                                            time_factor=time_factor, accepted=_accepted)
        self.faults, self.notifier = self.server.faults, self.server.notifier
        handlers = {"6201": self._upload, "6202": self._pay, "6203": self._refund,
                    "6301": self._query}
        for infno, path in DEFAULT_PATHS.items():
            self.server.app.router.add_post(path, self._endpoint(handlers[infno]))

    def write_keys(self, directory: Path) -> dict[str, Path]:
        contents = {"platform_public_key": ("mobilepay_platform_public.hex", self.public_hex),
                    "app_secret": ("mobilepay_app_secret", self.app_secret)}
        if self.demo_hospital_key is not None:
            contents["private_key"] = ("mobilepay_hospital_private.hex", self.demo_hospital_key)
        return write_key_files(directory, contents)

    # -- the wire --------------------------------------------------------------------------

    def _seal(self, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return crypto.seal(app_id=self.app_id, app_secret=self.app_secret,
                           private_hex=self.private_hex, public_hex=self.public_hex, data=data,
                           timestamp=int(time.time()), extra=extra)

    async def _reply(self, code: int, message: str, data: dict[str, Any]) -> web.Response:
        envelope = await asyncio.to_thread(self._seal, data, code=code, message=message)
        return web.json_response(envelope)

    def _endpoint(self, handler: Any) -> Any:
        async def run(request: web.Request) -> web.Response:
            try:
                envelope = orjson.loads(await request.read())
                data = await asyncio.to_thread(crypto.open_envelope, envelope,
                                               app_secret=self.app_secret,
                                               peer_public_hex=self.hospital_public_hex)
            except (orjson.JSONDecodeError, crypto.EnvelopeError, AttributeError):
                self.counts["refused_signatures"] += 1
                return await self._reply(REFUSED, "验签失败", {})

            async def busy() -> web.Response:
                return await self._reply(BUSY, "系统繁忙", {})

            blocked = await self.server.guard(busy)
            if blocked is not None:
                return blocked
            try:
                result: web.Response = await handler(request, data)
            except (KeyError, PermanentError):
                return await self._reply(1000, "参数错误", {})
            return result

        return run

    def _order_out(self, order: MobileOrder) -> dict[str, Any]:
        return dict(order.split(), payOrdId=order.pay_ord_id, medOrgOrd=order.med_org_ord,
                    ordStas=order.status, feeSumamt=format_yuan(order.amount),
                    setlTime=order.setl_time)

    # -- transactions ----------------------------------------------------------------------

    async def _upload(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        """6201: a repeated upload of the same order returns the same ids."""
        self.counts["uploads"] += 1
        no, amount = str(data["medOrgOrd"]), fen_of(data["feeSumamt"], "feeSumamt")
        order = self.orders.get(no)
        if order is None:
            order = MobileOrder(no, "ORD" + secrets.token_hex(10).upper(),
                                secrets.token_urlsafe(24), amount, str(data.get("notifyUrl", "")),
                                pay_auth_no=str(data.get("payAuthNo", "")))
            self.orders[no] = order
            self.counts["orders_created"] += 1
        elif order.amount != amount:
            return await self._reply(STATE_ERROR, "订单信息不一致", {})
        if self.faults.take_drop():
            return drop_connection(request)
        return await self._reply(0, "成功", dict(self._order_out(order),
                                                 payToken=order.pay_token))

    def _settle(self, order: MobileOrder) -> None:
        order.status = "6"
        order.setl_time = _now()
        self.counts["charges"] += 1
        self._notify(order, dict(self._order_out(order), notifyType="PAY"))

    async def _pay(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        """6202: settle with the patient's authorization (the money moves here)."""
        order = self.orders.get(str(data.get("medOrgOrd", "")))
        if order is None or order.pay_ord_id != data.get("payOrdId"):
            return await self._reply(NOT_FOUND, "订单不存在", {})
        if data.get("payToken") != order.pay_token or not data.get("payAuthNo"):
            return await self._reply(STATE_ERROR, "授权无效", {})
        if order.status in ("0", "1"):
            self._settle(order)
        elif order.status != "6":
            return await self._reply(STATE_ERROR, "订单状态不允许支付", {})
        if self.faults.take_drop():
            return drop_connection(request)
        return await self._reply(0, "成功", self._order_out(order))

    async def pay_action(self, data: dict[str, Any]) -> dict[str, Any]:
        """The patient confirms in the insurance app; the platform settles and notifies."""
        order = self.orders.get(str(data.get("out_trade_no", "")))
        if order is None:
            raise SimError("no such order", 404)
        if order.status not in ("0", "1"):
            raise SimError(f"order is {order.status}", 409)
        self._settle(order)
        return {"out_trade_no": order.med_org_ord, "pay_ord_id": order.pay_ord_id}

    async def _refund(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        """6203: accepted as PROC; settled (and notified) after ``refund_delay``."""
        order = self.orders.get(str(data.get("medOrgOrd", "")))
        if order is None or order.pay_ord_id != data.get("payOrdId"):
            return await self._reply(NOT_FOUND, "订单不存在", {})
        sn, amount = str(data["appRefdSn"]), fen_of(data["totlRefdAmt"], "totlRefdAmt")
        refund = order.refunds.get(sn)
        if refund is None:
            if order.status not in ("6", "7"):
                return await self._reply(STATE_ERROR, "订单状态不允许退款", {})
            if amount <= 0 or sum(r.amount for r in order.refunds.values()) + amount > \
                    order.amount:
                return await self._reply(EXCEEDS, "退款金额超过可退金额", {})
            refund = MobileRefund(sn, amount)
            order.refunds[sn] = refund
            self.counts["refunds_created"] += 1
            asyncio.get_running_loop().call_later(
                self.refund_delay * self.notifier.time_factor, self._refund_done, order, refund)
        if self.faults.take_drop():
            return drop_connection(request)
        return await self._reply(0, "成功", self._refund_out(order, refund))

    def _refund_out(self, order: MobileOrder, refund: MobileRefund) -> dict[str, Any]:
        return {"payOrdId": order.pay_ord_id, "medOrgOrd": order.med_org_ord,
                "appRefdSn": refund.app_refd_sn, "totlRefdAmt": format_yuan(refund.amount),
                "refdStas": refund.status, "refdTime": refund.refd_time,
                "feeSumamt": format_yuan(order.amount)}

    def _refund_done(self, order: MobileOrder, refund: MobileRefund) -> None:
        refund.status = "SUCC"
        refund.refd_time = _now()
        if sum(r.amount for r in order.refunds.values() if r.status == "SUCC") == order.amount:
            order.status = "7"
        self._notify(order, dict(self._refund_out(order, refund), notifyType="REFUND"),
                     kind="refund")

    async def _query(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        """6301: the order (and, given ``appRefdSn``, that refund in ``refdInfo``)."""
        self.counts["query_calls"] += 1
        order = self.orders.get(str(data.get("medOrgOrd", "")))
        if order is None:
            return await self._reply(NOT_FOUND, "订单不存在", {})
        out = self._order_out(order)
        sn = data.get("appRefdSn")
        if sn:
            refund = order.refunds.get(str(sn))
            if refund is None:
                return await self._reply(NOT_FOUND, "退款不存在", {})
            out["refdInfo"] = self._refund_out(order, refund)
        return await self._reply(0, "成功", out)

    # -- notifications ---------------------------------------------------------------------

    def _notify(self, order: MobileOrder, data: dict[str, Any], kind: str = "payment") -> None:
        body = orjson.dumps(self._seal(data))

        def build() -> tuple[bytes, dict[str, str]]:
            return body, {"Content-Type": "application/json"}

        self.notifier.send(order.notify_url, order=order.med_org_ord, kind=kind, build=build)

    async def crafted_notification(self, data: dict[str, Any]) -> dict[str, Any]:
        """One notification from ``data``: ``url``, ``out_trade_no``, ``amount`` (fen),
        ``forge`` (signed with another SM2 key), ``wrong_secret`` (sealed with another app
        secret), ``app_id``."""
        no = str(data.get("out_trade_no", ""))
        order = self.orders.get(no) or MobileOrder(no, "ORDX", "", 1, "")
        out = dict(self._order_out(order), notifyType="PAY", ordStas="6", setlTime=_now(),
                   feeSumamt=format_yuan(int(data.get("amount", order.amount))))
        private, public = self.private_hex, self.public_hex
        if data.get("forge"):
            private, public = crypto.new_keypair()
        envelope = crypto.seal(
            app_id=str(data.get("app_id", self.app_id)),
            app_secret="WRONG" + self.app_secret if data.get("wrong_secret") else self.app_secret,
            private_hex=private, public_hex=public, data=out, timestamp=int(time.time()))
        status, answer = await self.notifier.post(str(data["url"]), orjson.dumps(envelope),
                                                  {"Content-Type": "application/json"})
        return {"status": status, "body": answer.decode("utf-8", "replace")}

    # -- control ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return dict(self.counts, orders=len(self.orders),
                    refunded_fen=sum(r.amount for o in self.orders.values()
                                     for r in o.refunds.values() if r.status == "SUCC"))

    def bill_totals(self, day: Any) -> dict[str, Any]:
        raise SimError("the mobile-payment simulator has no bill download", 404)

    def public_material(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "platform_public_key": self.public_hex}


def _accepted(status: int, body: bytes) -> bool:
    try:
        return status == 200 and orjson.loads(body).get("code") == 0
    except (orjson.JSONDecodeError, AttributeError):
        return False


async def serve(host: str = "127.0.0.1", port: int = 8704, *, keys_dir: Path | None = None,
                time_factor: float = 1.0, hospital_public_key: str | None = None,
                app_secret: str | None = None) -> None:
    sim = MobilePaySimulator(hospital_public_key=hospital_public_key, app_secret=app_secret,
                             time_factor=time_factor)
    await serve_until_cancelled(sim, host, port, keys_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``hisbridge simulate mobilepay``."""
    parser = command_line("mobilepay", port=8704)
    parser.add_argument("--hospital-public-key", type=Path)
    parser.add_argument("--app-secret", type=Path)
    args = parser.parse_args(argv)
    key = args.hospital_public_key.read_text().strip() if args.hospital_public_key else None
    secret = args.app_secret.read_text().strip() if args.app_secret else None
    run_until_interrupted(serve(args.host, args.port, keys_dir=args.keys_dir,
                                time_factor=args.time_factor, hospital_public_key=key,
                                app_secret=secret))


if __name__ == "__main__":
    main()
