"""Value lookup tables: inline in the mapping file or CSV files beside it.

::

    [lookups.gender]                       # inline
    values = { M = "male", F = "female", "*" = "unknown" }

    [lookups.charge_codes]                 # CSV, read once at load
    file = "lookups/charge_codes.csv"      # relative to the mapping file, inside its folder
    key = "hospital_code"                  # key column (default: the first)
    value = "nhsa_code"                    # value column (default: the second)

The key ``*`` (an inline entry or a CSV row) is the fallback for codes not in the table; in
it ``{}`` stands for the code itself. Without a fallback an unknown code is a MappingError
naming the table and the code (codes are not patient data).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FALLBACK = "*"


@dataclass(slots=True)
class LookupTable:
    name: str
    source: str  # "inline" or the CSV path, for messages
    rows: dict[str, dict[str, str]]
    value_column: str
    columns: tuple[str, ...] = field(default=())

    def get(self, key: str, column: str | None = None) -> str | None:
        """The value for ``key`` (or the fallback with ``{}`` filled), None when absent."""
        col = column or self.value_column
        row = self.rows.get(key)
        if row is None:
            row = self.rows.get(FALLBACK)
            if row is None:
                return None
            return row.get(col, "").replace("{}", key)
        return row.get(col, "")


def inline_table(name: str, values: Any) -> LookupTable:
    if not isinstance(values, dict) or not values:
        raise ValueError("'values' must be a table of code = value pairs")
    rows: dict[str, dict[str, str]] = {}
    for k, v in values.items():
        if isinstance(v, dict | list):
            raise ValueError(f"value of {k!r} must be a string or number")
        rows[str(k)] = {"value": _cell(v)}
    return LookupTable(name, "inline", rows, "value", ("key", "value"))


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def csv_table(
    name: str, path: Path, display: str, key: str | None, value: str | None
) -> LookupTable:
    """Read a UTF-8 (optionally with BOM) CSV with a header row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"lookup file {display} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"lookup file {display} is not UTF-8") from None
    except OSError as exc:
        raise ValueError(f"cannot read lookup file {display}: {exc.strerror}") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ValueError(f"lookup file {display} is empty") from None
    if len(header) < 2:
        raise ValueError(f"lookup file {display} needs a header with at least two columns")
    key_col = key or header[0]
    value_col = value or header[1]
    for col in (key_col, value_col):
        if col not in header:
            raise ValueError(
                f"lookup file {display} has no column {col!r} (columns: {', '.join(header)})"
            )
    k = header.index(key_col)
    rows: dict[str, dict[str, str]] = {}
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(
                f"lookup file {display} line {line_no}: {len(row)} cells, header has {len(header)}"
            )
        code = row[k].strip()
        if code in rows:
            raise ValueError(f"lookup file {display} line {line_no}: duplicate key {code!r}")
        rows[code] = {h: c.strip() for h, c in zip(header, row, strict=True)}
    return LookupTable(name, display, rows, value_col, tuple(header))
