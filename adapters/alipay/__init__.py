"""Alipay OpenAPI (gateway v2): RSA2 signing, notifies, trades, refunds and bills."""
