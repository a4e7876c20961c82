"""Exact JSON for insurance amounts: what is written, and what is refused on the way in."""

from __future__ import annotations

from decimal import Decimal

import pytest

from adapters.exact_json import decode_json
from adapters.nhsa.envelope import encode_json


def test_decimals_are_written_as_fixed_point_numbers() -> None:
    assert encode_json({"a": Decimal("180.50"), "b": Decimal("1E+2"), "c": 3}) == (
        b'{"a":180.50,"b":100,"c":3}')
    assert decode_json(b'{"a":180.50}') == {"a": Decimal("180.50")}


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), object()])
def test_what_is_no_json_number_is_not_written(value: object) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json({"a": value})


@pytest.mark.parametrize(("text", "reason"), [
    (b'{"a": NaN}', "NaN is not valid JSON"),
    (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
    (b'{"a": 1e999999999}', "number out of range"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_what_is_no_amount_is_not_read(text: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_json(text)
