"""What a value is while it flows through a rule, and the few conversions everyone needs.

Values are plain Python: ``str`` (from HL7 and XML), ``str``/``int``/``Decimal``/``bool``/
``dict``/``list`` (from JSON; JSON numbers with a fraction become ``Decimal`` so that amounts
keep their exact value), and ``Decimal`` from the decimal transforms. A value is *empty* when
it is None, ``""``, ``[]`` or ``{}``: empty values are never written.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

# For isinstance in hot paths: a tuple, not ``dict | list`` (which builds a union per call).
CONTAINERS = (dict, list)


def is_empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, CONTAINERS) and not value)


def as_text(value: Any) -> str:
    """The text form used for comparisons, templates and HL7/XML output."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def flatten(values: list[Any]) -> list[Any]:
    """Values with JSON arrays opened one level (``given`` is a list of names)."""
    for v in values:
        if isinstance(v, list):
            break
    else:
        return values
    out: list[Any] = []
    for v in values:
        if isinstance(v, list):
            out.extend(v)
        else:
            out.append(v)
    return out


def from_json(value: Any) -> Any:
    """A JSON scalar as a mapping value: floats become exact decimals (orjson parses floats)."""
    if isinstance(value, float):
        if not -_EXACT < value < _EXACT:
            # orjson reads an integer of more than 64 bits, and any number this large, as a
            # double: its digits past the 16th are already lost (an id sent as a number).
            raise Problem("number too large to have been read exactly (send it as a string)")
        # repr gives the shortest text that round-trips, i.e. the digits that were sent.
        return Decimal(repr(value))
    return value


_EXACT = float(2**53)


class Problem(Exception):
    """A value cannot be mapped. The interpreter adds the file, the rule and the path.

    The text must not quote patient data (names, identity numbers): it ends up in the
    dead-letter reason and in logs. Codes (charge codes, table keys) are fine.
    """
