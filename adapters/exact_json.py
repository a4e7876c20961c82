"""JSON read with exact decimals, for the platforms that send money as JSON numbers.

The insurance platform and the e-invoice platform write amounts as numbers (``180.50``).
Read as float they would be wrong by a fraction of a fen; read here they are ``Decimal``.
What is not JSON or no amount is refused with ``ValueError``, like any other bad answer:
``NaN`` and ``Infinity`` (which Python's ``json`` accepts), an exponent so large that the
number written back without one would be gigabytes of zeros, and nesting deeper than the
parser can recurse (a hostile ``[[[[...`` must not become a ``RecursionError``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_MAX_EXPONENT = 64


def decode_json(data: bytes | str) -> Any:
    """Parse JSON keeping every non-integer number as an exact ``Decimal``.

    Raises:
        ValueError: the text is not valid JSON (``json.JSONDecodeError`` is a ValueError),
            is nested too deeply, or holds a number far outside any amount.
    """
    try:
        return json.loads(data, parse_float=_decimal, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _decimal(text: str) -> Decimal:
    value = Decimal(text)
    if abs(value.adjusted()) > _MAX_EXPONENT:
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
