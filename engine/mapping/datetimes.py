"""Date and time conversions between HL7 DTM, ISO 8601 / FHIR and ``yyyy-MM-dd``-style patterns.

Precision is kept: HL7 ``19620712`` becomes FHIR ``1962-07-12`` (a date, not a midnight),
``20260402141530`` becomes ``2026-04-02T14:15:30+08:00``. A time without an offset is in the
mapping's ``timezone`` (default ``+08:00``, China Standard Time): FHIR requires an offset on
every time, and Chinese HIS and insurance interfaces send local times without one.

Patterns use the tokens ``yyyy MM dd HH mm ss SSS`` (as in Chinese interface specifications,
e.g. ``yyyy-MM-dd HH:mm:ss`` for the insurance ``fee_ocur_time``); other characters are literal.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import NamedTuple

_HL7 = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"([+-]\d{4})?$"
)
_ISO = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:?\d{2})?)?)?)?$"
)
_TOKENS = re.compile(r"yyyy|MM|dd|HH|mm|ss|SSS")
_FIELDS = {"yyyy": 0, "MM": 1, "dd": 2, "HH": 3, "mm": 4, "ss": 5, "SSS": 6}


def parse_offset(text: str) -> timezone:
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text.strip())
    if m is None:
        raise ValueError(f"bad time zone offset {text!r} (expected e.g. +08:00)")
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    if minutes > 14 * 60:
        raise ValueError(f"bad time zone offset {text!r}")
    return timezone(timedelta(minutes=minutes if m.group(1) == "+" else -minutes))


class Stamp(NamedTuple):
    """A date/time with the precision it was given in (parts after ``precision`` unknown).

    A named tuple rather than a frozen dataclass: one is made per converted value, and a
    tuple is made several times faster.
    """

    parts: tuple[int, int, int, int, int, int, int]  # year, month, day, hour, min, sec, micros
    precision: int  # 1 year, 2 month, 3 day, 4 hour, 5 minute, 6 second, 7 fraction
    tz: timezone | None
    frac_digits: int = 0

    def as_datetime(self, default_tz: timezone) -> datetime:
        y, mo, d, h, mi, s, us = self.parts
        return datetime(y, mo or 1, d or 1, h, mi, s, us, tzinfo=self.tz or default_tz)

    def in_zone(self, tz: timezone) -> Stamp:
        """The same instant in ``tz`` (dates without a time are left alone)."""
        if self.precision <= 3 or self.tz is None or self.tz == tz:
            return self
        dt = self.as_datetime(tz).astimezone(tz)
        parts = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond)
        return Stamp(parts, self.precision, tz, self.frac_digits)


def _build(groups: tuple[str | None, ...], tz: timezone | None) -> Stamp:
    nums = [0, 0, 0, 0, 0, 0]
    precision = 0
    for i in range(6):
        g = groups[i]
        if g is not None:
            nums[i] = int(g)
            precision += 1
    frac = groups[6]
    micros = int((frac + "000000")[:6]) if frac else 0
    if frac:
        precision = 7
    y, mo, d, h, mi, s = nums
    parts = (y, mo, d, h, mi, s, micros)
    # Let datetime check the ranges (month 13, February 30 ...).
    datetime(y, mo or 1, d or 1, h, mi, s, micros)
    return Stamp(parts, precision, tz, len(frac) if frac else 0)


def parse_hl7(text: str) -> Stamp:
    m = _HL7.match(text.strip())
    if m is None:
        raise ValueError("not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    tz = parse_offset(m.group(8)) if m.group(8) else None
    try:
        return _build(m.groups()[:7], tz)
    except ValueError:
        raise ValueError("HL7 date/time out of range") from None


def parse_iso(text: str) -> Stamp:
    m = _ISO.match(text.strip())
    if m is None:
        raise ValueError("not an ISO 8601 date/time (YYYY-MM-DD[THH:MM:SS[+HH:MM]])")
    z = m.group(8)
    tz = UTC if z == "Z" else (parse_offset(z) if z else None)
    try:
        return _build(m.groups()[:7], tz)
    except ValueError:
        raise ValueError("ISO date/time out of range") from None


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _TOKENS.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        width = {"yyyy": 4, "SSS": 3}.get(m.group(0), 2)
        out.append(f"(?P<{m.group(0)}>\\d{{{width}}})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + "$")


def parse_pattern(text: str, pattern: str) -> Stamp:
    m = _pattern_regex(pattern).match(text.strip())
    if m is None:
        raise ValueError(f"does not match the pattern {pattern!r}")
    found = m.groupdict()
    groups: list[str | None] = [None] * 7
    for token, idx in _FIELDS.items():
        if token in found:
            groups[idx] = found[token]
    precision_groups = groups[:6]
    # A pattern may skip leading parts only if it is a time of day; keep it simple: fill
    # missing parts below the last given one with zero.
    last = max((i for i, g in enumerate(precision_groups) if g is not None), default=-1)
    for i in range(last + 1):
        if precision_groups[i] is None:
            precision_groups[i] = "01" if i in (1, 2) else "00"
    try:
        return _build((*precision_groups, groups[6]), None)
    except ValueError:
        raise ValueError("date/time out of range") from None


def format_hl7(stamp: Stamp, tz: timezone, *, offset: bool = False) -> str:
    st = stamp.in_zone(tz) if not offset else stamp
    y, mo, d, h, mi, s, us = st.parts
    pieces = [f"{y:04d}", f"{mo:02d}", f"{d:02d}", f"{h:02d}", f"{mi:02d}", f"{s:02d}"]
    text = "".join(pieces[: min(st.precision, 6)])
    if st.precision == 7:
        text += "." + f"{us:06d}"[: max(1, min(4, st.frac_digits))]
    if offset and st.precision >= 4:
        z = st.tz or tz
        text += _offset_text(z, colon=False)
    return text


def _offset_text(tz: timezone, *, colon: bool) -> str:
    key = (tz, colon)
    found = _OFFSETS.get(key)
    if found is None:
        found = _OFFSETS[key] = _offset(tz, colon=colon)
    return found


_OFFSETS: dict[tuple[timezone, bool], str] = {}  # a handful of zones: +08:00, UTC ...


def _offset(tz: timezone, *, colon: bool) -> str:
    delta = tz.utcoffset(None)
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    sep = ":" if colon else ""
    return f"{sign}{minutes // 60:02d}{sep}{minutes % 60:02d}"


def format_iso(stamp: Stamp, tz: timezone) -> str:
    """FHIR ``dateTime``: a partial date as given, a time always with seconds and offset."""
    y, mo, d, h, mi, s, us = stamp.parts
    if stamp.precision == 1:
        return f"{y:04d}"
    if stamp.precision == 2:
        return f"{y:04d}-{mo:02d}"
    if stamp.precision == 3:
        return f"{y:04d}-{mo:02d}-{d:02d}"
    text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
    if stamp.precision == 7:
        text += "." + f"{us:06d}"[: max(1, min(6, stamp.frac_digits))]
    return text + _offset_text(stamp.tz or tz, colon=True)


def format_date(stamp: Stamp, tz: timezone) -> str:
    """FHIR ``date``: at most day precision (a time is dropped, after moving to ``tz``)."""
    st = stamp.in_zone(tz)
    y, mo, d = st.parts[:3]
    if st.precision == 1:
        return f"{y:04d}"
    if st.precision == 2:
        return f"{y:04d}-{mo:02d}"
    return f"{y:04d}-{mo:02d}-{d:02d}"


def format_pattern(stamp: Stamp, pattern: str, tz: timezone) -> str:
    st = stamp.in_zone(tz)
    y, mo, d, h, mi, s, us = st.parts
    values = {
        "yyyy": f"{y:04d}", "MM": f"{mo or 1:02d}", "dd": f"{d or 1:02d}", "HH": f"{h:02d}",
        "mm": f"{mi:02d}", "ss": f"{s:02d}", "SSS": f"{us // 1000:03d}",
    }
    return _TOKENS.sub(lambda m: values[m.group(0)], pattern)


def stamp_from_datetime(dt: datetime) -> Stamp:
    parts = (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, 0)
    tz = dt.tzinfo if isinstance(dt.tzinfo, timezone) else None
    return Stamp(parts, 6, tz)


def check_pattern(pattern: str) -> None:
    """Refuse a pattern with no date/time token (a typo such as ``YYYY-mm-DD``)."""
    if pattern in ("hl7", "iso", "date"):
        return
    if not _TOKENS.search(pattern):
        raise ValueError(
            f"{pattern!r} is not a date format: use hl7, iso, date or a pattern with "
            "yyyy MM dd HH mm ss SSS"
        )
    if re.search(r"YYYY|DD|hh", pattern):
        raise ValueError(
            f"{pattern!r}: use yyyy (year), dd (day) and HH (24-hour) in date patterns"
        )
