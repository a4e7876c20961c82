"""The named transforms a rule can apply, resolved and checked once at load.

A rule's ``transform`` is a list; each item is a name (``"trim"``) or a one-key table with
the transform's argument (``{ decimal = 2 }``, ``{ lookup = { table = "x", column = "y" } }``).
Values flow through the list in order. Most transforms work on each value; ``join``,
``first``, ``last``, ``split``, ``default`` and ``required`` work on the list of values.

Every factory validates its argument and raises ValueError at load; the returned function
raises ``Problem`` at run time, which the interpreter turns into a MappingError naming the
file, the rule and the path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timezone
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

from engine.mapping import datetimes
from engine.mapping.lookups import LookupTable, inline_table
from engine.mapping.patterns import checked_text, compile_pattern
from engine.mapping.values import CONTAINERS, Problem, as_text, flatten, is_empty

ListFn = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True, slots=True)
class CompileEnv:
    """What transforms may consult at load: lookup tables and the mapping's time zone."""

    lookups: dict[str, LookupTable]
    tz: timezone


@dataclass(frozen=True, slots=True)
class Transform:
    name: str
    fn: ListFn

    def __call__(self, values: list[Any]) -> list[Any]:
        try:
            return self.fn(values)
        except Problem as exc:
            raise Problem(f"transform {self.name}: {exc}") from None


def _each(fn: Callable[[Any], Any]) -> ListFn:
    """Lift a per-value function; None or "" results are dropped."""

    def run(values: list[Any]) -> list[Any]:
        out = []
        for v in values:
            if v is None or v == "" or v == [] or v == {}:  # is_empty, inline: a hot loop
                continue
            r = fn(v)
            if r is not None and r != "":
                out.append(r)
        return out

    return run


def _scalar(v: Any) -> str:
    if type(v) is str:
        return v
    if isinstance(v, CONTAINERS):
        raise Problem("expected a single value, got a JSON object or array")
    return as_text(v)


def _no_arg(name: str, arg: Any) -> None:
    if arg is not None and arg is not True:
        raise ValueError(f"{name} takes no argument")


# -- text ------------------------------------------------------------------------------------


def _trim(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("trim", arg)
    return _each(lambda v: _scalar(v).strip())


def _upper(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("upper", arg)
    return _each(lambda v: _scalar(v).upper())


def _lower(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("lower", arg)
    return _each(lambda v: _scalar(v).lower())


def _string(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("string", arg)
    return _each(_scalar)


def _template(arg: Any, env: CompileEnv) -> ListFn:
    if not isinstance(arg, str) or "{}" not in arg:
        raise ValueError('template needs a string with {} where the value goes, e.g. "urn:x:{}"')
    return _each(lambda v: arg.replace("{}", _scalar(v)))


def _url_encode(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("url_encode", arg)
    return _each(lambda v: quote(_scalar(v), safe=""))


def _slice(arg: Any, env: CompileEnv) -> ListFn:
    if (
        not isinstance(arg, list) or not 1 <= len(arg) <= 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in arg)
    ):
        raise ValueError("slice needs [start] or [start, end] (0-based, end excluded)")
    start = arg[0]
    end = arg[1] if len(arg) == 2 else None
    return _each(lambda v: _scalar(v)[start:end])


def _pad_left(arg: Any, env: CompileEnv) -> ListFn:
    if isinstance(arg, int) and not isinstance(arg, bool):
        width, fill = arg, "0"
    elif isinstance(arg, dict):
        _keys("pad_left", arg, {"width", "fill"}, {"width"})
        width, fill = arg["width"], str(arg.get("fill", "0"))
    else:
        raise ValueError("pad_left needs a width or { width = N, fill = \"0\" }")
    if not isinstance(width, int) or width < 1 or len(fill) != 1:
        raise ValueError("pad_left width must be a positive integer and fill one character")
    return _each(lambda v: _scalar(v).rjust(width, fill))


def _regex(arg: Any, env: CompileEnv) -> ListFn:
    if isinstance(arg, str):
        pattern, group = arg, None
    elif isinstance(arg, dict):
        _keys("regex", arg, {"pattern", "group"}, {"pattern"})
        pattern, group = arg["pattern"], arg.get("group")
    else:
        raise ValueError('regex needs a pattern or { pattern = "...", group = N }')
    rx = compile_pattern(pattern)
    if group is None:
        group = 1 if rx.groups else 0
    if not isinstance(group, int | str) or (isinstance(group, int) and group > rx.groups):
        raise ValueError(f"the pattern has no group {group!r}")

    def extract(v: Any) -> Any:
        m = rx.search(checked_text(_scalar(v)))
        return m.group(group) if m else None

    return _each(extract)


def _replace(arg: Any, env: CompileEnv) -> ListFn:
    if not isinstance(arg, dict):
        raise ValueError('replace needs { pattern = "...", with = "..." }')
    _keys("replace", arg, {"pattern", "with"}, {"pattern", "with"})
    rx = compile_pattern(arg["pattern"])
    repl = str(arg["with"])
    # The replacement is literal text: no group references, nothing to interpret.
    return _each(lambda v: rx.sub(lambda _m: repl, checked_text(_scalar(v))))


# -- lists -----------------------------------------------------------------------------------


def _join(arg: Any, env: CompileEnv) -> ListFn:
    if not isinstance(arg, str):
        raise ValueError('join needs a separator string, e.g. { join = " " } or { join = "" }')

    def run(values: list[Any]) -> list[Any]:
        parts = [_scalar(v) for v in flatten(values) if not is_empty(v)]
        return [arg.join(parts)] if parts else []

    return run


def _split(arg: Any, env: CompileEnv) -> ListFn:
    if isinstance(arg, str):
        sep, index = arg, None
    elif isinstance(arg, dict):
        _keys("split", arg, {"sep", "index"}, {"sep"})
        sep, index = arg["sep"], arg.get("index")
    else:
        raise ValueError('split needs a separator or { sep = ",", index = 0 }')
    if not isinstance(sep, str) or not sep:
        raise ValueError("split separator must be a non-empty string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise ValueError("split index must be an integer (0-based, -1 for the last)")

    def run(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for v in values:
            if is_empty(v):
                continue
            parts = [p for p in _scalar(v).split(sep)]
            if index is None:
                out.extend(p for p in parts if p)
            elif -len(parts) <= index < len(parts) and parts[index]:
                out.append(parts[index])
        return out

    return run


def _first(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("first", arg)

    def run(values: list[Any]) -> list[Any]:
        for v in flatten(values):
            if not (v is None or v == "" or v == [] or v == {}):  # not is_empty(v)
                return [v]
        return []

    return run


def _last(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("last", arg)

    def run(values: list[Any]) -> list[Any]:
        for v in reversed(flatten(values)):
            if not (v is None or v == "" or v == [] or v == {}):  # not is_empty(v)
                return [v]
        return []

    return run


def _default(arg: Any, env: CompileEnv) -> ListFn:
    if isinstance(arg, dict | list) or arg is None:
        raise ValueError("default needs a value")
    value = to_value(arg)
    return lambda values: values if any(not is_empty(v) for v in values) else [value]


def _required(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("required", arg)

    def run(values: list[Any]) -> list[Any]:
        if all(is_empty(v) for v in values):
            raise Problem("required value is missing")
        return values

    return run


# -- numbers and money -----------------------------------------------------------------------

_ROUNDING = {"half_up": ROUND_HALF_UP, "half_even": ROUND_HALF_EVEN, "down": ROUND_DOWN}


MAX_EXPONENT = 100


def to_decimal(v: Any) -> Decimal:
    if isinstance(v, bool):
        raise Problem("expected a number, got true/false")
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, int):
        d = Decimal(v)
    else:
        try:
            d = Decimal(_scalar(v).strip().replace(",", ""))
        except InvalidOperation:
            raise Problem("not a decimal number") from None
    if not d.is_finite():
        raise Problem("not a finite number")
    exponent = d.as_tuple().exponent
    if d.adjusted() > MAX_EXPONENT or (isinstance(exponent, int) and exponent < -MAX_EXPONENT):
        # 1e999999999 is a few bytes in, a gigabyte of digits when written out.
        raise Problem(f"number out of range (more than {MAX_EXPONENT} digits before or "
                      "after the point)")
    return d


def _decimal(arg: Any, env: CompileEnv) -> ListFn:
    scale: int | None
    rounding = ROUND_HALF_UP
    if arg is None or arg is True:
        scale = None
    elif isinstance(arg, int) and not isinstance(arg, bool):
        scale = arg
    elif isinstance(arg, dict):
        _keys("decimal", arg, {"scale", "rounding"}, {"scale"})
        scale = arg["scale"]
        name = arg.get("rounding", "half_up")
        if name not in _ROUNDING:
            raise ValueError(f"rounding must be one of {', '.join(_ROUNDING)}")
        rounding = _ROUNDING[name]
    else:
        raise ValueError("decimal takes a scale: { decimal = 2 }")
    if scale is not None and (not isinstance(scale, int) or not 0 <= scale <= 12):
        raise ValueError("decimal scale must be an integer from 0 to 12")
    if scale is None:
        return _each(to_decimal)
    q = Decimal(1).scaleb(-scale)

    def conv(v: Any) -> Decimal:
        try:
            return to_decimal(v).quantize(q, rounding=rounding)
        except InvalidOperation:
            # More digits than the decimal context holds (28): no exact value to write.
            raise Problem(f"number too large to write with {scale} decimal places") from None

    return _each(conv)


def _integer(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("integer", arg)

    def conv(v: Any) -> int:
        d = to_decimal(v)
        if d != d.to_integral_value():
            raise Problem("not a whole number")
        return int(d)

    return _each(conv)


def _yuan_to_fen(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("yuan_to_fen", arg)

    def conv(v: Any) -> int:
        fen = to_decimal(v) * 100
        if fen != fen.to_integral_value():
            raise Problem("amount has fractions of a fen (more than 2 decimal places)")
        return int(fen)

    return _each(conv)


def _fen_to_yuan(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("fen_to_yuan", arg)

    def conv(v: Any) -> Decimal:
        fen = to_decimal(v)
        if fen != fen.to_integral_value():
            raise Problem("an amount in fen must be a whole number")
        try:
            return (fen / 100).quantize(Decimal("0.01"))
        except InvalidOperation:
            raise Problem("amount too large to write in yuan") from None

    return _each(conv)


# -- dates -----------------------------------------------------------------------------------


def _converter(source: str, target: str, tz: timezone, offset: bool) -> Callable[[Any], str]:
    def parse(text: str) -> datetimes.Stamp:
        try:
            if source == "hl7":
                return datetimes.parse_hl7(text)
            if source in ("iso", "date"):
                return datetimes.parse_iso(text)
            return datetimes.parse_pattern(text, source)
        except ValueError as exc:
            raise Problem(str(exc)) from None

    def conv(v: Any) -> str:
        stamp = parse(_scalar(v))
        try:
            if target == "hl7":
                return datetimes.format_hl7(stamp, tz, offset=offset)
            if target == "iso":
                return datetimes.format_iso(stamp, tz)
            if target == "date":
                return datetimes.format_date(stamp, tz)
            return datetimes.format_pattern(stamp, target, tz)
        except OverflowError:
            # 9999-12-31T23:00-12:00 is a valid input whose local time is past year 9999.
            raise Problem("date/time out of range in the mapping's time zone") from None

    return conv


def _datetime(arg: Any, env: CompileEnv) -> ListFn:
    if not isinstance(arg, dict):
        raise ValueError('datetime needs { from = "hl7", to = "iso" } (hl7, iso, date or a '
                         "pattern such as yyyy-MM-dd HH:mm:ss)")
    _keys("datetime", arg, {"from", "to", "offset"}, {"from", "to"})
    for k in ("from", "to"):
        if not isinstance(arg[k], str):
            raise ValueError(f"datetime {k} must be a string")
        datetimes.check_pattern(arg[k])
    offset = arg.get("offset", False)
    if not isinstance(offset, bool):
        raise ValueError("datetime offset must be true or false")
    return _each(_converter(arg["from"], arg["to"], env.tz, offset))


def _hl7_to_iso(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("hl7_to_iso", arg)
    return _each(_converter("hl7", "iso", env.tz, False))


def _iso_to_hl7(arg: Any, env: CompileEnv) -> ListFn:
    _no_arg("iso_to_hl7", arg)
    return _each(_converter("iso", "hl7", env.tz, False))


# -- code lookups ----------------------------------------------------------------------------


def _lookup_fn(table: LookupTable, column: str | None, missing: str) -> ListFn:
    def conv(v: Any) -> Any:
        key = _scalar(v)
        found = table.get(key, column)
        if found is None:
            if missing == "keep":
                return key
            if missing == "empty":
                return None
            where = "" if table.source == "inline" else f" ({table.source})"
            raise Problem(f"code {key[:40]!r} is not in lookup table {table.name}{where}")
        return found

    return _each(conv)


def _lookup(arg: Any, env: CompileEnv) -> ListFn:
    if isinstance(arg, str):
        name, column, missing = arg, None, "error"
    elif isinstance(arg, dict):
        _keys("lookup", arg, {"table", "column", "missing"}, {"table"})
        name, column = arg["table"], arg.get("column")
        missing = arg.get("missing", "error")
    else:
        raise ValueError('lookup needs a table name or { table = "...", column = "..." }')
    if missing not in ("error", "keep", "empty"):
        raise ValueError("lookup missing must be error, keep or empty")
    table = env.lookups.get(name)
    if table is None:
        known = ", ".join(sorted(env.lookups)) or "none defined"
        raise ValueError(f"unknown lookup table {name!r} (tables: {known})")
    if column is not None and column not in table.columns:
        raise ValueError(
            f"lookup table {name!r} has no column {column!r} (columns: {', '.join(table.columns)})"
        )
    return _lookup_fn(table, column, missing)


def _map(arg: Any, env: CompileEnv) -> ListFn:
    try:
        table = inline_table("(inline map)", arg)
    except ValueError as exc:
        raise ValueError(f"map needs a table of code = value pairs: {exc}") from None
    return _lookup_fn(table, None, "error")


# -- registry --------------------------------------------------------------------------------

FACTORIES: dict[str, Callable[[Any, CompileEnv], ListFn]] = {
    "trim": _trim,
    "upper": _upper,
    "lower": _lower,
    "string": _string,
    "template": _template,
    "url_encode": _url_encode,
    "slice": _slice,
    "pad_left": _pad_left,
    "regex": _regex,
    "replace": _replace,
    "join": _join,
    "split": _split,
    "first": _first,
    "last": _last,
    "default": _default,
    "required": _required,
    "decimal": _decimal,
    "integer": _integer,
    "yuan_to_fen": _yuan_to_fen,
    "fen_to_yuan": _fen_to_yuan,
    "datetime": _datetime,
    "hl7_to_iso": _hl7_to_iso,
    "iso_to_hl7": _iso_to_hl7,
    "lookup": _lookup,
    "map": _map,
}


def _keys(name: str, arg: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(arg) - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)} "
                         f"(options: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(arg))
    if missing:
        raise ValueError(f"{name}: missing option(s) {', '.join(missing)}")


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def compile_transform(item: Any, env: CompileEnv) -> Transform:
    """One entry of a rule's ``transform`` list; raises ValueError for a bad one."""
    if isinstance(item, str):
        name, arg = item, None
    elif isinstance(item, dict) and len(item) == 1:
        name, arg = next(iter(item.items()))
    else:
        raise ValueError(
            'each transform is a name ("trim") or a one-key table ({ decimal = 2 })'
        )
    factory = FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown transform {name!r}{suggest(name, list(FACTORIES))}")
    return Transform(name, factory(arg, env))


def to_value(v: Any) -> Any:
    """A TOML constant as a mapping value (floats become exact decimals)."""
    if isinstance(v, float):
        return Decimal(repr(v))
    return v
