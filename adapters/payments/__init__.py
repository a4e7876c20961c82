"""What the payment gateways share: the order/refund store, the callback source and bills.

Each gateway (``adapters.wechatpay``, ``adapters.alipay``, ``adapters.unionpay``,
``adapters.mobilepay``) speaks its own protocol; this package holds only what is truly
common to them:

- ``money``: yuan (``Decimal``) / fen (``int``) conversion and card-number masking.
- ``signing``: RSA key and certificate loading, SHA256withRSA sign / verify.
- ``account``: an account's keys resolved once, a client's keys and HTTP session.
- ``errors``: the payment errors (callback refusals, refunds beyond what was paid).
- ``model``: the normalized order, refund and event records every gateway produces.
- ``states``: the order state machine (created → paid → refunding → refunded / closed).
- ``store``: orders, refunds, events and the audit of refused callbacks in SQLite.
- ``service``: idempotent create / refund with in-doubt resolution by query.
- ``notify``: the callback HTTP source (an engine ``Source``), shared by all gateways.
- ``transport``: one HTTP call with timeouts and the in-doubt classification.
- ``bills``: the totals a bill parses to.

To add a gateway, start from ``adapters.wechatpay``.
"""
