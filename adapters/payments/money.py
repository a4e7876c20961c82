"""Amounts and card numbers: the two things a payment log must never get wrong.

Gateways disagree on units: WeChat Pay and UnionPay send integer fen (分), Alipay and the
insurance platform send decimal yuan (元) as text. Inside hisbridge an amount is an ``int`` of
fen; conversions are explicit and exact (a yuan value with more than two decimals is an
error, never rounded), and no float is ever involved.

Every amount a gateway sends goes through ``yuan_to_fen`` or ``parse_fen``, so the rules
live here once: ASCII digits only (Python's ``int`` and ``Decimal`` also read "²" or "١٢"),
and no negative amount unless the caller says a negative one is meaningful (a bill's
refund line). A negative payment or refund amount is never meaningful in an answer or a
notification: taken, it would turn a refund into a charge in the ledger.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_CENT = Decimal("0.01")
_YUAN_TEXT = re.compile(r"-?[0-9]{1,13}(?:\.[0-9]{1,2})?")
_FEN_TEXT = re.compile(r"-?[0-9]{1,15}")
_YUAN_LIMIT = Decimal(10) ** 13  # as the text form allows; "1E+999999" is no amount


class AmountError(ValueError):
    """A value that is not a valid amount (not a number, too many decimals, a float)."""


class NegativeAmount(AmountError):
    """A well-formed amount below zero where only zero or more makes sense."""


def yuan_to_fen(value: Decimal | str, *, negative: bool = False) -> int:
    """Exact yuan → fen: ``"12.30"`` → 1230. Refuses floats, sub-fen precision and, unless
    ``negative``, amounts below zero (``NegativeAmount``)."""
    fen = _yuan_to_fen(value)
    if fen < 0 and not negative:
        raise NegativeAmount(f"a negative amount: {value}")
    return fen


def _yuan_to_fen(value: Decimal | str) -> int:
    if isinstance(value, float | bool):
        raise AmountError("amounts are never floats; pass Decimal or str")
    if isinstance(value, str):
        text = value.strip()
        if not _YUAN_TEXT.fullmatch(text):
            raise AmountError(f"not a yuan amount: {value!r}")
        value = Decimal(text)
    if not isinstance(value, Decimal):
        raise AmountError(f"not a yuan amount: {value!r}")
    try:
        if not value.is_finite() or abs(value) >= _YUAN_LIMIT:
            raise AmountError(f"not a yuan amount: {value:.20}")
        fen = value * 100
        if fen != fen.to_integral_value():
            raise AmountError(f"more than two decimals in a yuan amount: {value}")
        return int(fen)
    except InvalidOperation:
        raise AmountError(f"not a yuan amount: {value!r}") from None


def fen_to_yuan(fen: int) -> Decimal:
    """Exact fen → yuan with two decimals: 1230 → ``Decimal("12.30")``."""
    if not isinstance(fen, int) or isinstance(fen, bool):
        raise AmountError(f"fen must be an int, got {type(fen).__name__}")
    return (Decimal(fen) / 100).quantize(_CENT)


def format_yuan(fen: int) -> str:
    """Fen as the two-decimal yuan text gateways expect: 10 → ``"0.10"``."""
    return str(fen_to_yuan(fen))


def parse_fen(value: str | int, *, negative: bool = False) -> int:
    """An integer fen amount from a gateway field (``"1230"`` or 1230); rejects decimals,
    anything but ASCII digits and, unless ``negative``, amounts below zero."""
    if isinstance(value, bool):
        raise AmountError("not a fen amount: bool")
    if isinstance(value, int):
        fen = value
    elif isinstance(value, str) and _FEN_TEXT.fullmatch(value.strip()):
        fen = int(value.strip())
    else:
        shown = repr(value[:20]) if isinstance(value, str) else type(value).__name__
        raise AmountError(f"not a fen amount: {shown}")
    if fen < 0 and not negative:
        raise NegativeAmount(f"a negative amount: {fen}")
    return fen


_CARD = re.compile(r"\d{12,19}")


def mask_card(number: str) -> str:
    """Keep the first six and last four digits of a card number: ``621626*********0018``."""
    digits = number.strip()
    if len(digits) <= 10:
        return "*" * len(digits)
    return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]


def mask_cards_in(text: str) -> str:
    """Mask every run of 12-19 digits in free text (card numbers in error messages)."""
    return _CARD.sub(lambda m: mask_card(m.group(0)), text)
