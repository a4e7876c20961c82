"""Field types shared by the national platform's transaction models.

The platform's interface tables type every field as text (``c``), decimal ``n(p,s)``, date or
datetime. Amounts are ``n16,2``, quantities ``n16,4``, prices ``n16,6``: they are ``Decimal``
here, never ``float``, so that a fee adds up to the cent on both sides.

Every node allows extra keys: provinces add their own fields (``exp_content`` and the like) and
a model that refused them would break on the first regional variant.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Amount = Annotated[Decimal, Field(max_digits=16, decimal_places=2, allow_inf_nan=False)]
"""Money, ``n16,2`` (yuan with two decimals)."""

Quantity = Annotated[Decimal, Field(max_digits=16, decimal_places=4, allow_inf_nan=False)]
"""A count of units, ``n16,4``."""

Price = Annotated[Decimal, Field(max_digits=16, decimal_places=6, allow_inf_nan=False)]
"""A unit price, ``n16,6``."""

Number = Annotated[Decimal, Field(allow_inf_nan=False)]
"""Any other decimal the platform returns (ratios, ages, limits)."""

DateTime = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")]
"""``yyyy-MM-dd HH:mm:ss``, the platform's datetime text."""

Date = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
"""``yyyy-MM-dd``."""

Code = Annotated[str, Field(min_length=1, max_length=30)]
"""A required identifier or code (``psn_no``, ``mdtrt_id``, ``setl_id`` ...)."""

Flag = Annotated[str, Field(pattern=r"^[01]$")]
"""A ``0``/``1`` flag."""


class Node(BaseModel):
    """One named node of ``input`` or ``output``; unknown keys are kept."""

    model_config = ConfigDict(extra="allow")
