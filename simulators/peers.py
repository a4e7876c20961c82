"""The simulated peers a config points at: one simulator per distinct peer address.

``start_peers(config, workdir)`` reads the channels and starts what they talk to:

- a FHIR server for ``fhir`` destinations, an MLLP receiver for ``mllp`` destinations;
- the e-invoice platform for ``einvoice`` destinations, with the destination's key;
- the insurance platform for ``nhsa`` destinations, checking the destination's gateway
  signature (x-tif or HMAC-SHA1) with the destination's own secret;
- the WeChat Pay gateway for a ``payment_notify`` source of gateway ``wechatpay``, whose
  merchant key, APIv3 key and platform certificate the source's account table references.

Secrets are made here, never kept in the repository: an ``${ENV}`` reference that is not set
gets a random value in this process's environment, a ``file:`` reference that does not exist
is written (mode 0600) with a random value or the simulator's key. The WeChat Pay platform
certificate is rewritten on every start (the simulator makes a new platform key each time).
Only loopback addresses are simulated: a config pointing at a real peer is refused, so a demo
never writes over a production key.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.einvoice import EinvoiceDestinationConfig
from adapters.fhir import FhirDestinationConfig
from adapters.mllp import MllpDestinationConfig
from adapters.nhsa import NhsaDestinationConfig
from adapters.nhsa.auth import HmacSha1Auth, XTifAuth
from adapters.payments.signing import (
    certificate_pem,
    load_private_key,
    new_private_key,
    private_pem,
)
from adapters.payments.source import PaymentNotifyConfig
from engine.config import Config
from engine.errors import ConfigError
from engine.settings import Secret
from simulators.einvoice import EinvoiceSimulator
from simulators.fhir import FhirServer
from simulators.his import HisReceiver
from simulators.insurance import GatewayCheck, Simulator, serve
from simulators.payments.wechatpay import WechatPaySimulator

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def secret_value(secret: Secret, make: Any = None) -> str:
    """The secret's value, creating it (``make()`` or a random token) when it does not exist."""
    ref = secret.reference
    env = _ENV_REF.match(ref)
    if env:
        value = os.environ.get(env.group(1))
        if value is None:
            value = make() if make else secrets.token_urlsafe(24)
            os.environ[env.group(1)] = value
        return value
    path = Path(ref.removeprefix("file:"))
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = make() if make else secrets.token_urlsafe(24)
    write_secret(path, value)
    return str(value)


def replace_secret(secret: Secret, value: str) -> None:
    """Set the secret to ``value`` whether or not it exists."""
    env = _ENV_REF.match(secret.reference)
    if env:
        os.environ[env.group(1)] = value
    else:
        write_secret(Path(secret.reference.removeprefix("file:")), value)


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(value if value.endswith("\n") else value + "\n")


def _loopback(host: str | None, what: str) -> str:
    if host not in LOOPBACK:
        raise ConfigError(f"{what} points at {host!r}: the demo only simulates peers on "
                          "127.0.0.1 (use a demo config)")
    return host or "127.0.0.1"


@dataclass(frozen=True, slots=True)
class FeeLine:
    """One fee line an insurance platform holds (its ``det_item_fee_sumamt`` as ``amount``)."""

    mdtrt_id: str
    feedetl_sn: str
    chrg_bchno: str
    amount: Decimal


@dataclass
class Peers:
    """The running simulators, by kind and address."""

    workdir: Path
    fhir: dict[str, FhirServer] = field(default_factory=dict)
    mllp: dict[str, HisReceiver] = field(default_factory=dict)
    einvoice: dict[str, EinvoiceSimulator] = field(default_factory=dict)
    insurance: dict[str, Simulator] = field(default_factory=dict)
    wechatpay: dict[str, WechatPaySimulator] = field(default_factory=dict)

    def names(self) -> list[str]:
        return ([f"FHIR server {a}" for a in self.fhir] + [f"MLLP receiver {a}" for a in self.mllp]
                + [f"e-invoice platform {a}" for a in self.einvoice]
                + [f"insurance platform {a}" for a in self.insurance]
                + [f"WeChat Pay {a}" for a in self.wechatpay])

    async def stop(self) -> None:
        for fhir in self.fhir.values():
            await fhir.stop()
        for receiver in self.mllp.values():
            await receiver.stop()
        for platform in self.einvoice.values():
            await platform.stop()
        for insurer in self.insurance.values():
            await insurer.close()
        for wechat in self.wechatpay.values():
            await wechat.stop()

    def insurance_fees(self, mdtrt_id: str | None = None) -> list[FeeLine]:
        """The fee lines the insurance platforms hold (every visit's, or one visit's): what
        was uploaded to them (2204, 2301), read from the simulators' own stores."""
        where, args = ("WHERE mdtrt_id = ?", (mdtrt_id,)) if mdtrt_id else ("", ())
        return [FeeLine(str(r["mdtrt_id"]), str(r["feedetl_sn"]), str(r["chrg_bchno"] or ""),
                        Decimal(str(r["sumamt"])))
                for sim in self.insurance.values()
                for r in sim.store.all(
                    f"SELECT mdtrt_id, feedetl_sn, chrg_bchno, sumamt FROM fee {where}"  # noqa: S608
                    " ORDER BY mdtrt_id, feedetl_sn", *args)]

    async def fault(self, seconds: float, status: int = 503) -> int:
        """Every FHIR server answers ``status`` for ``seconds``; returns how many."""
        for fhir in self.fhir.values():
            await fhir.set_fault("error", status=status, duration=seconds)
        return len(self.fhir)


async def start_peers(config: Config, workdir: Path, *, time_factor: float = 0.01) -> Peers:
    """Start a simulator for every peer address in ``config`` (see the module docstring).

    ``workdir`` holds the simulators' own databases; ``time_factor`` compresses the payment
    gateways' notification retry schedules.
    """
    peers = Peers(workdir)
    try:
        for ch in config.channels:
            if not ch.enabled:
                continue
            for dest in ch.destinations:
                await _start_for_destination(peers, dest)
            source = ch.source
            if isinstance(source, PaymentNotifyConfig) and source.wechatpay is not None:
                await _start_wechatpay(peers, source, time_factor)
    except BaseException:
        await peers.stop()
        raise
    return peers


async def _start_for_destination(peers: Peers, dest: Any) -> None:
    if isinstance(dest, FhirDestinationConfig):
        url = urlsplit(dest.base_url)
        key = f"{url.hostname}:{url.port}"
        if key not in peers.fhir:
            fhir = FhirServer(_loopback(url.hostname, dest.name), url.port or 80, base=url.path)
            await fhir.start()
            peers.fhir[key] = fhir
    elif isinstance(dest, MllpDestinationConfig):
        key = f"{dest.host}:{dest.port}"
        if key not in peers.mllp:
            receiver = HisReceiver(_loopback(dest.host, dest.name), dest.port)
            await receiver.start()
            peers.mllp[key] = receiver
    elif isinstance(dest, EinvoiceDestinationConfig):
        url = urlsplit(dest.url)
        key = f"{url.hostname}:{url.port}"
        if key not in peers.einvoice:
            platform = EinvoiceSimulator(
                peers.workdir / f"einvoice-{len(peers.einvoice)}.db",
                accounts={dest.appid: secret_value(dest.key, lambda: secrets.token_hex(16))},
                host=_loopback(url.hostname, dest.name), port=url.port or 80)
            await platform.start()
            peers.einvoice[key] = platform
        else:
            peers.einvoice[key].accounts[dest.appid] = secret_value(dest.key)
    elif isinstance(dest, NhsaDestinationConfig):
        url = urlsplit(dest.url)
        key = f"{url.hostname}:{url.port}"
        gateway = _gateway(dest)
        if key not in peers.insurance:
            peers.insurance[key] = await serve(
                _loopback(url.hostname, dest.name), url.port or 80,
                db_path=peers.workdir / f"insurance-{len(peers.insurance)}.db", gateway=gateway,
                institutions={dest.fixmedins_code: dest.fixmedins_name})
        else:
            national = peers.insurance[key].national
            known = national.gateway  # several destinations, one platform: accept each
            if known.scheme == "none":
                national.gateway = gateway
            elif gateway.scheme == known.scheme:
                known.credentials.update(gateway.credentials)


def _gateway(dest: NhsaDestinationConfig) -> GatewayCheck:
    auth = dest.auth
    if isinstance(auth, XTifAuth):
        return GatewayCheck("x-tif", {auth.paasid: secret_value(auth.token)})
    if isinstance(auth, HmacSha1Auth):
        return GatewayCheck("hmac-sha1", {auth.access_key: secret_value(auth.secret_key)})
    return GatewayCheck()


async def _start_wechatpay(peers: Peers, source: PaymentNotifyConfig,
                           time_factor: float) -> None:
    account = source.wechatpay
    assert account is not None
    url = urlsplit(account.base_url)
    key = f"{url.hostname}:{url.port}"
    if key in peers.wechatpay:
        return
    host = _loopback(url.hostname, "wechatpay.base_url")
    # The merchant's own keys are kept if they exist (a second demo run); the simulator
    # verifies with the merchant's public key and encrypts with the APIv3 key.
    merchant = load_private_key(
        secret_value(account.merchant_private_key, lambda: private_pem(new_private_key())),
        what="wechatpay merchant private key")
    apiv3 = secret_value(account.apiv3_key, lambda: secrets.token_hex(16))
    sim = WechatPaySimulator(mchid=account.mchid, appid=account.appid,
                             merchant_public_key=merchant.public_key(),
                             apiv3_key=apiv3.encode("ascii"), time_factor=time_factor,
                             refund_delay=2.0)
    # A fresh platform key each start: its certificate replaces the old one.
    for ref in account.platform_certificates:
        replace_secret(ref, certificate_pem(sim.platform_cert))
    await sim.start(host, url.port or 80)
    peers.wechatpay[key] = sim

