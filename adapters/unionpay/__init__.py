"""UnionPay online gateway 5.1.0: signMethod=01 signing, consume, query, refund, notifies."""
