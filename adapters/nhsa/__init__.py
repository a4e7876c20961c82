"""The national medical-insurance platform (国家医保信息平台): HTTP/JSON ``infno`` transactions.

Modules, by what they own:

- ``config``: ``NhsaDestinationConfig`` (``type = "nhsa"``), the engine's entry point.
- ``destination``: ``NhsaDestination``, an engine envelope in, one transaction out.
- ``client``: the HTTP session, envelope, sign-in and error translation.
- ``auth``: the gateway signature schemes (x-tif SHA-256, HMAC-SHA1, static headers).
- ``envelope``: ``msgid`` generation and the exact-decimal JSON codec.
- ``classify``: ``infcode`` / ``err_msg`` → verdict, overridable in config.
- ``session``: the 9001 sign-in kept and renewed.
- ``indoubt`` and ``ledger``: what happens when a settlement's answer is lost.
- ``transactions`` with ``person``, ``visits``, ``fees``, ``settlement``, ``reconciliation``,
  ``session_models``: the typed input and output models of each transaction.
"""

from adapters.nhsa.config import NhsaDestinationConfig
from adapters.nhsa.destination import NhsaDestination

__all__ = ["NhsaDestination", "NhsaDestinationConfig"]
