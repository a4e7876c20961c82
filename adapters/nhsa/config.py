"""The nhsa destination's configuration (``type = "nhsa"``).

Example::

    [[channels.destinations]]
    type = "nhsa"
    name = "nhsa"
    url = "https://fsi.example.gov.cn"
    fixmedins_code = "H44030500001"
    fixmedins_name = "示例人民医院"
    mdtrtarea_admvs = "440300"
    opter = "0001"
    opter_name = "收费员"
    auth = { scheme = "x-tif", paasid = "hosp01", token = "${NHSA_TOKEN}" }
    timeouts = { "2207" = 20.0 }
    in_doubt = { ledger = "data/nhsa-ledger.db" }
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import Field

from adapters.nhsa.auth import GatewayAuth, NoAuth
from adapters.nhsa.classify import DEFAULT_RULES, Classifier, ErrMsgRule, Verdict
from adapters.nhsa.client import Institution, NhsaClient
from adapters.nhsa.destination import NhsaDestination
from adapters.nhsa.indoubt import DEFAULT_ABSENT, Resolver
from adapters.nhsa.ledger import Ledger, MemoryLedger, SqliteLedger
from adapters.nhsa.transactions import Kind
from engine.settings import DataPath, DestinationSettings, Model


def _local_mac() -> str:
    """This machine's MAC address as 9001 wants it (``AA-BB-CC-DD-EE-FF``)."""
    node = uuid.getnode()
    return "-".join(f"{(node >> shift) & 0xFF:02X}" for shift in range(40, -8, -8))


class SignInConfig(Model):
    """The 9001 sign-in: kept for ``ttl`` seconds, renewed daily and when refused."""

    enabled: bool = True
    ttl: float = Field(default=12 * 3600.0, gt=0)
    renew_daily: bool = True
    sign_out_on_close: bool = False


class InDoubtConfig(Model):
    """How a settlement-type call whose answer was lost is resolved (``adapters.nhsa.indoubt``).

    Attributes:
        transactions: more (or fewer: ``"plain"``) settlement-type codes than the built-in
            2207/2304 (settle) and 2208/2305 (cancel).
        query_infno: the settlement query (5203).
        reverse_infno: the reversal of a call by its msgid (2601).
        reverse: reverse a lost settle that the query did not find (closes the window in
            which a request still in flight could commit after the query).
        delay: seconds to wait before querying.
        timeout: per query / reversal call.
        absent_messages: ``err_msg`` texts meaning "no such settlement".
        ledger: SQLite file keeping calls in doubt across restarts; in memory when unset.
    """

    transactions: dict[str, Kind] = Field(default_factory=dict)
    query_infno: str = Field(default="5203", pattern=r"^\d{4}$")
    reverse_infno: str = Field(default="2601", pattern=r"^\d{4}$")
    reverse: bool = True
    delay: float = Field(default=0.5, ge=0)
    timeout: float = Field(default=5.0, gt=0)
    absent_messages: list[str] = Field(default_factory=lambda: list(DEFAULT_ABSENT))
    ledger: DataPath | None = None


class NhsaDestinationConfig(DestinationSettings):
    """A national medical-insurance platform (国家医保信息平台) endpoint.

    Attributes:
        url, path: the platform's base URL and the ``callService`` path.
        infno: the transaction when the envelope names none.
        insuplc_admdvs: default insured area, when neither header nor document gives one.
        auth: the gateway scheme (``adapters.nhsa.auth``).
        timeout, timeouts: seconds per call, and per transaction code.
        msgid_node: this process's digit in the msgid sequence (several processes).
        infcodes: ``infcode`` → verdict, over the built-in ``{"0": success, "-1": permanent}``.
        err_msg_rules: ``{contains, verdict}`` rules tried before the built-in ones
            (``adapters.nhsa.classify``).
        peer_time_header: a response header with the peer's processing time in
            microseconds (the simulator's ``X-Sim-Elapsed-Us``), for overhead measurements.
    """

    type: Literal["nhsa"]
    url: str = Field(pattern=r"^https?://[^/\s]+")
    path: str = "/fsi/api/rsfComIfsService/callService"
    infno: str | None = Field(default=None, pattern=r"^\d{4}$")
    fixmedins_code: str = Field(min_length=12, max_length=12)
    fixmedins_name: str = Field(min_length=1)
    mdtrtarea_admvs: str = Field(pattern=r"^\d{6}$")
    insuplc_admdvs: str | None = Field(default=None, pattern=r"^\d{6}$")
    recer_sys_code: str = "HIS"
    infver: str = "V1.0"
    opter_type: Literal["1", "2", "3"] = "1"
    opter: str = Field(default="hisbridge", min_length=1)
    opter_name: str = Field(default="hisbridge", min_length=1)
    dev_no: str = ""
    dev_safe_info: str = ""
    cainfo: str = ""
    signtype: str = ""
    mac: str = Field(default_factory=lambda: _local_mac(), min_length=1)
    ip: str = Field(default="127.0.0.1", min_length=1)
    auth: GatewayAuth = NoAuth()
    timeout: float = Field(default=10.0, gt=0)
    connect_timeout: float = Field(default=3.0, gt=0)
    timeouts: dict[str, float] = Field(default_factory=dict)
    msgid_node: int | None = Field(default=None, ge=0, le=9)
    sign_in: SignInConfig = SignInConfig()
    validate_input: bool = True
    validate_output: bool = True
    infcodes: dict[str, Verdict] = Field(default_factory=dict)
    err_msg_rules: list[ErrMsgRule] = Field(default_factory=list)
    in_doubt: InDoubtConfig = InDoubtConfig()
    max_answer_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    peer_time_header: str | None = None

    def client(self) -> NhsaClient:
        institution = Institution(
            fixmedins_code=self.fixmedins_code, fixmedins_name=self.fixmedins_name,
            mdtrtarea_admvs=self.mdtrtarea_admvs, recer_sys_code=self.recer_sys_code,
            infver=self.infver, opter_type=self.opter_type, opter=self.opter,
            opter_name=self.opter_name, dev_no=self.dev_no, dev_safe_info=self.dev_safe_info,
            cainfo=self.cainfo, signtype=self.signtype, mac=self.mac, ip=self.ip,
        )
        return NhsaClient(
            self.url.rstrip("/") + self.path, institution, auth=self.auth,
            classifier=Classifier(self.infcodes, [*self.err_msg_rules, *DEFAULT_RULES]),
            timeout=self.timeout, connect_timeout=self.connect_timeout,
            timeouts=self.timeouts, msgid_node=self.msgid_node,
            sign_in=self.sign_in.enabled, sign_in_ttl=self.sign_in.ttl,
            renew_daily=self.sign_in.renew_daily, validate_output=self.validate_output,
            max_answer_bytes=self.max_answer_bytes, peer_time_header=self.peer_time_header,
            concurrency=self.concurrency,
        )

    def build(self, channel: str) -> NhsaDestination:
        client = self.client()
        d = self.in_doubt
        resolver = Resolver(
            client, query_infno=d.query_infno, reverse_infno=d.reverse_infno,
            reverse=d.reverse, delay=d.delay, timeout=d.timeout,
            absent_messages=tuple(d.absent_messages),
        )
        ledger: Ledger = SqliteLedger(d.ledger) if d.ledger else MemoryLedger()
        return NhsaDestination(
            f"{channel}/{self.name}", client, resolver, ledger, infno=self.infno,
            insuplc_admdvs=self.insuplc_admdvs, kinds=d.transactions,
            validate_input=self.validate_input,
            sign_out_on_close=self.sign_in.sign_out_on_close,
        )
