"""Exact JSON for money: amounts travel as JSON numbers and are read back as ``Decimal``.

The platform expects amounts as JSON numbers (``"totalAmt": 180.50``). Neither ``json`` nor
``orjson`` writes a ``Decimal`` as a number, and going through ``float`` is exactly what the
project forbids for money, so this module writes JSON itself: strings and keys through
``json.dumps`` (correct escaping, UTF-8 kept as is), decimals with their own digits.
Reading is ``adapters.exact_json.decode_json``: ``180.50`` comes back as
``Decimal("180.50")``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any


def encode_json(value: Any) -> bytes:
    """Serialize ``value`` (dicts, lists, str, int, Decimal, bool, None) to UTF-8 JSON.

    Raises:
        TypeError: for floats (money must never be a float) and any other type.
    """
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode("utf-8")


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise TypeError(f"cannot encode non-finite decimal {value}")
        # Fixed-point text: never an exponent such as 1E+2, which some Java parsers refuse.
        out.append(format(value, "f"))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        raise TypeError("floats are not encoded: give amounts as Decimal")
    elif isinstance(value, Mapping):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {type(key).__name__}")
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")
