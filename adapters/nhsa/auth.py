"""Gateway authentication: the headers each province's gateway wants in front of the envelope.

The envelope is the same everywhere; the gateway in front of it is not. Each scheme is a
config model (discriminated on ``scheme``) that computes its headers per call:

- ``x-tif``: ``x-tif-paasid``, ``x-tif-timestamp`` (Unix seconds), ``x-tif-nonce`` and
  ``x-tif-signature = hex(SHA-256(timestamp + token + nonce + timestamp))``.
- ``hmac-sha1``: ``_api_access_key``, ``_api_name`` (the infno), ``_api_timestamp`` (Unix
  milliseconds; unconfirmed, configurable), ``_api_version`` and ``_api_signature =
  Base64(HMAC-SHA1(secret, "_api_access_key=..&_api_name=..&_api_timestamp=..&_api_version=.."))``.
- ``headers``: fixed headers whose values are secrets (gateways that want an API key only).
- ``none``: no gateway (a platform reached over a private line).

A new scheme is one more model here with a ``headers`` method and one more member of
``GatewayAuth``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Annotated, Literal

from pydantic import Field

from engine.settings import Model, Secret


class XTifAuth(Model):
    scheme: Literal["x-tif"]
    paasid: str = Field(min_length=1)
    token: Secret

    def headers(self, infno: str, now: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if now is None else now))
        nonce = secrets.token_hex(16)
        text = timestamp + self.token.get() + nonce + timestamp
        return {
            "x-tif-paasid": self.paasid,
            "x-tif-timestamp": timestamp,
            "x-tif-nonce": nonce,
            "x-tif-signature": hashlib.sha256(text.encode()).hexdigest(),
        }


class HmacSha1Auth(Model):
    scheme: Literal["hmac-sha1"]
    access_key: str = Field(min_length=1)
    secret_key: Secret
    api_version: str = "1.0.0"
    timestamp_unit: Literal["ms", "s"] = "ms"

    def headers(self, infno: str, now: float | None = None) -> dict[str, str]:
        t = time.time() if now is None else now
        timestamp = str(int(t * 1000) if self.timestamp_unit == "ms" else int(t))
        text = (
            f"_api_access_key={self.access_key}&_api_name={infno}"
            f"&_api_timestamp={timestamp}&_api_version={self.api_version}"
        )
        digest = hmac.new(self.secret_key.get().encode(), text.encode(), hashlib.sha1).digest()
        return {
            "_api_access_key": self.access_key,
            "_api_name": infno,
            "_api_timestamp": timestamp,
            "_api_version": self.api_version,
            "_api_signature": base64.b64encode(digest).decode(),
        }


class StaticHeadersAuth(Model):
    scheme: Literal["headers"]
    values: dict[str, Secret] = Field(min_length=1)

    def headers(self, infno: str, now: float | None = None) -> dict[str, str]:
        return {name: secret.get() for name, secret in self.values.items()}


class NoAuth(Model):
    scheme: Literal["none"] = "none"

    def headers(self, infno: str, now: float | None = None) -> dict[str, str]:
        return {}


GatewayAuth = Annotated[
    XTifAuth | HmacSha1Auth | StaticHeadersAuth | NoAuth, Field(discriminator="scheme")
]
