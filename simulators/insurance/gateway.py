"""The simulated gateway in front of the national service: it checks each request's
signature like a provincial gateway would, independently of the adapter's code.

Schemes: ``x-tif`` (SHA-256 over timestamp + token + nonce + timestamp; nonces are not
accepted twice), ``hmac-sha1`` (Base64 HMAC-SHA1 over the ``_api_*`` fields; ``_api_name``
must be the envelope's ``infno``), ``none``. Timestamps more than 5 minutes away are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

SKEW = 300.0


class GatewayRefusal(Exception):
    """Answered with HTTP 401 and this text."""


@dataclass
class GatewayCheck:
    scheme: str = "none"
    credentials: dict[str, str] = field(default_factory=dict)
    """paasid → token (x-tif) or access key → secret key (hmac-sha1)."""
    _nonces: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def verify(self, headers: Mapping[str, str], infno: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.scheme == "none":
            return
        if self.scheme == "x-tif":
            self._x_tif(headers, now)
        elif self.scheme == "hmac-sha1":
            self._hmac(headers, infno, now)
        else:
            raise GatewayRefusal(f"gateway scheme {self.scheme!r} not configured")

    def _x_tif(self, headers: Mapping[str, str], now: float) -> None:
        paasid = headers.get("x-tif-paasid", "")
        stamp = headers.get("x-tif-timestamp", "")
        nonce = headers.get("x-tif-nonce", "")
        signature = headers.get("x-tif-signature", "")
        if not (paasid and stamp and nonce and signature):
            raise GatewayRefusal("missing x-tif headers")
        token = self.credentials.get(paasid)
        if token is None:
            raise GatewayRefusal("unknown x-tif-paasid")
        if not stamp.isdigit() or abs(now - int(stamp)) > SKEW:
            raise GatewayRefusal("x-tif-timestamp outside the accepted window")
        expected = hashlib.sha256(f"{stamp}{token}{nonce}{stamp}".encode()).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise GatewayRefusal("x-tif-signature does not verify")
        self._fresh_nonce(f"{paasid}:{nonce}", now)

    def _hmac(self, headers: Mapping[str, str], infno: str, now: float) -> None:
        key = headers.get("_api_access_key", "")
        name = headers.get("_api_name", "")
        stamp = headers.get("_api_timestamp", "")
        version = headers.get("_api_version", "")
        signature = headers.get("_api_signature", "")
        if not (key and name and stamp and version and signature):
            raise GatewayRefusal("missing _api_* headers")
        secret = self.credentials.get(key)
        if secret is None:
            raise GatewayRefusal("unknown _api_access_key")
        if name != infno:
            raise GatewayRefusal("_api_name does not match the envelope's infno")
        if not stamp.isdigit() or abs(now - int(stamp) / 1000) > SKEW:
            raise GatewayRefusal("_api_timestamp outside the accepted window")
        text = (
            f"_api_access_key={key}&_api_name={name}"
            f"&_api_timestamp={stamp}&_api_version={version}"
        )
        expected = base64.b64encode(
            hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()
        ).decode()
        if not hmac.compare_digest(expected, signature):
            raise GatewayRefusal("_api_signature does not verify")

    def _fresh_nonce(self, nonce: str, now: float) -> None:
        while self._nonces and next(iter(self._nonces.values())) < now - 2 * SKEW:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise GatewayRefusal("x-tif-nonce already used (replay)")
        self._nonces[nonce] = now
