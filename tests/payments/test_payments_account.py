"""How every gateway holds its account's keys and its HTTP session (pure logic)."""

from __future__ import annotations

import pytest

from adapters.alipay.client import AlipayClient
from adapters.alipay.settings import AlipaySettings
from adapters.payments.account import AccountKeys, GatewaySession
from adapters.payments.model import Order, OrderState, Submit
from engine.errors import ConfigError, TransientError
from engine.settings import Secret


class Loader:
    """Counts how often the keys are resolved; fails while ``broken``."""

    def __init__(self) -> None:
        self.calls = 0
        self.broken = False

    def __call__(self) -> str:
        self.calls += 1
        if self.broken:
            raise ConfigError("key file missing")
        return f"keys#{self.calls}"


def test_account_keys_are_resolved_once_on_first_use() -> None:
    loader = Loader()
    keys = AccountKeys(loader)
    assert loader.calls == 0
    assert keys.get() == "keys#1"
    assert keys.get() == "keys#1"
    assert loader.calls == 1


def test_account_keys_given_are_used_as_they_are() -> None:
    loader = Loader()
    assert AccountKeys(loader, "given").get() == "given"
    assert loader.calls == 0


def test_account_keys_that_fail_to_resolve_are_tried_again() -> None:
    loader = Loader()
    loader.broken = True
    keys = AccountKeys(loader)
    with pytest.raises(ConfigError, match="key file missing"):
        keys.get()
    loader.broken = False
    assert keys.get() == "keys#2"


async def test_gateway_session_refuses_calls_before_open_and_after_close() -> None:
    loader = Loader()
    session = GatewaySession("Sim Pay", loader)
    with pytest.raises(TransientError, match=r"^Sim Pay client is not started$"):
        session.ready()
    with pytest.raises(AssertionError, match="start"):
        _ = session.keys
    assert await session.open() == "keys#1"
    http, keys = session.ready()
    assert keys == session.keys == "keys#1"
    assert not http.closed
    await session.close()
    assert http.closed
    with pytest.raises(TransientError, match="not started"):
        session.ready()
    await session.close()  # closing twice is harmless


async def test_gateway_session_with_bad_keys_does_not_open() -> None:
    loader = Loader()
    loader.broken = True
    session = GatewaySession("Sim Pay", loader)
    with pytest.raises(ConfigError):
        await session.open()
    with pytest.raises(TransientError, match="not started"):
        session.ready()


async def test_a_client_not_started_raises_transient_error_before_any_request() -> None:
    settings = AlipaySettings(app_id="2021000000000001",
                              app_private_key=Secret("${HISBRIDGE_TEST_UNSET_KEY}"),
                              alipay_public_key=Secret("${HISBRIDGE_TEST_UNSET_KEY}"))
    client = AlipayClient(settings)
    order = Order("alipay", "AL-NONE", 1, "", "precreate", OrderState.CREATED, Submit.PENDING,
                  "", 0, 0, 0.0, "", {})
    with pytest.raises(TransientError, match=r"^Alipay client is not started$"):
        await client.query(order)
