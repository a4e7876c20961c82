"""WeChat Pay API v3: signing, callbacks, orders, refunds and trade bills (see ``client``)."""
