"""The condition grammar of ``when`` and ``where``, parsed once at load into a small tree.

Nothing in a mapping file is evaluated as code: a condition is tokenised and parsed by the
grammar below into comparison nodes, and evaluating it only reads values through compiled
paths::

    condition := or
    or        := and ("or" and)*
    and       := unary ("and" unary)*
    unary     := "not" unary | "(" condition ")" | test
    test      := operand [ op operand | "in" "(" literal ("," literal)* ")"
                         | "matches" string ]
    op        := "=" | "!=" | "<" | "<=" | ">" | ">="
    operand   := path | `path with odd characters` | "string" | 'string' | number
                 | true | false

A bare path is true when it has a non-empty value. ``=`` is true when any value of the left
side equals any value of the right (numbers compare as decimals), ``!=`` is its negation,
``<``/``>`` compare decimals (false when a value is not a number), ``matches`` searches a
regular expression (compiled at load).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from engine.mapping.patterns import checked_text, compile_pattern
from engine.mapping.values import as_text, flatten


class PathReader(Protocol):
    """What a condition needs from a compiled source path.

    A path whose ``single_text`` attribute is true yields at most one value, a string (HL7
    paths without ``[*]``): conditions on it compare that string directly.
    """

    def values(self, scope: Any, run: Any) -> list[Any]: ...


def _single_text(path: PathReader) -> bool:
    return getattr(path, "single_text", False) is True


PathCompiler = Callable[[str], PathReader]

_NUMBER = re.compile(r"-?\d+(\.\d+)?$")
_KEYWORDS = {"and", "or", "not", "in", "matches", "true", "false"}
_OPS = ("!=", "<=", ">=", "=", "<", ">")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # word, string, op, punct, path (back-quoted)
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            tokens.append(_Token("punct", ch, i))
            i += 1
        elif ch in "\"'":
            j, buf = i + 1, []
            while j < n and text[j] != ch:
                # Only \" \' and \\ are escapes: regular expressions keep \d, \s ...
                if text[j] == "\\" and j + 1 < n and text[j + 1] in (ch, "\\"):
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ValueError(f"unterminated string starting at column {i + 1}")
            tokens.append(_Token("string", "".join(buf), i))
            i = j + 1
        elif ch == "`":
            j = text.find("`", i + 1)
            if j == -1:
                raise ValueError(f"unterminated `path` starting at column {i + 1}")
            tokens.append(_Token("path", text[i + 1 : j], i))
            i = j + 1
        elif text.startswith(_OPS, i):
            op = next(o for o in _OPS if text.startswith(o, i))
            tokens.append(_Token("op", op, i))
            i += len(op)
        else:
            j, depth, quote = i, 0, ""
            while j < n:
                c = text[j]
                if quote:
                    if c == quote:
                        quote = ""
                elif c in "\"'" and depth:
                    quote = c
                elif c == "[":
                    depth += 1
                elif c == "]":
                    depth -= 1
                elif depth == 0 and (c.isspace() or c in "(),=!<>"):
                    break
                j += 1
            if j == i:
                raise ValueError(f"unexpected character {ch!r} at column {i + 1}")
            tokens.append(_Token("word", text[i:j], i))
            i = j
    return tokens


# -- the tree --------------------------------------------------------------------------------


class Condition(Protocol):
    def test(self, scope: Any, run: Any) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any

    def values(self, scope: Any, run: Any) -> list[Any]:
        return [self.value]


@dataclass(frozen=True, slots=True)
class _Exists:
    path: PathReader

    def test(self, scope: Any, run: Any) -> bool:
        # Sources never yield empty values: having any is existing.
        return bool(self.path.values(scope, run))


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal | int):
        d = Decimal(value)
    else:
        try:
            d = Decimal(str(value).strip())
        except (InvalidOperation, ValueError):
            return None
    # NaN is not a number to compare (and a signalling comparison would raise).
    return d if d.is_finite() else None


def _equal(left: Any, right: Any, numeric: bool) -> bool:
    if numeric:
        a, b = _decimal(left), _decimal(right)
        if a is not None and b is not None:
            return a == b
    return as_text(left) == as_text(right)


@dataclass(frozen=True, slots=True)
class _Compare:
    left: PathReader
    op: str
    right: PathReader
    numeric: bool

    def test(self, scope: Any, run: Any) -> bool:
        lefts = flatten(self.left.values(scope, run)) or [""]
        if self.op in ("=", "!=") and isinstance(self.right, _Literal) and isinstance(
            self.right.value, str
        ):
            wanted = self.right.value
            hit = any(as_text(a) == wanted for a in lefts)
            return hit if self.op == "=" else not hit
        rights = flatten(self.right.values(scope, run)) or [""]
        if self.op in ("=", "!="):
            hit = any(_equal(a, b, self.numeric) for a in lefts for b in rights)
            return hit if self.op == "=" else not hit
        for a in lefts:
            da = _decimal(a)
            if da is None:
                continue
            for b in rights:
                db = _decimal(b)
                if db is None:
                    continue
                if (
                    (self.op == "<" and da < db)
                    or (self.op == "<=" and da <= db)
                    or (self.op == ">" and da > db)
                    or (self.op == ">=" and da >= db)
                ):
                    return True
        return False


@dataclass(frozen=True, slots=True)
class _EqualsText:
    """``path = "text"`` / ``path != "text"`` on a ``single_text`` path: one comparison."""

    left: PathReader
    wanted: str
    negate: bool

    def test(self, scope: Any, run: Any) -> bool:
        found = self.left.values(scope, run)
        hit = (found[0] if found else "") == self.wanted
        return hit is not self.negate


@dataclass(frozen=True, slots=True)
class _InTexts:
    """``path in ("a", "b")`` on a ``single_text`` path: one set lookup."""

    left: PathReader
    texts: frozenset[str]

    def test(self, scope: Any, run: Any) -> bool:
        found = self.left.values(scope, run)
        return (found[0] if found else "") in self.texts


@dataclass(frozen=True, slots=True)
class _In:
    left: PathReader
    options: tuple[Any, ...]
    texts: frozenset[str] | None = None  # when every option is a string: a set lookup

    def test(self, scope: Any, run: Any) -> bool:
        lefts = flatten(self.left.values(scope, run)) or [""]
        if self.texts is not None:
            return any(as_text(a) in self.texts for a in lefts)
        return any(
            _equal(a, b, not isinstance(b, str)) for a in lefts for b in self.options
        )


@dataclass(frozen=True, slots=True)
class _Matches:
    left: PathReader
    pattern: re.Pattern[str]

    def test(self, scope: Any, run: Any) -> bool:
        return any(
            self.pattern.search(checked_text(as_text(v))) is not None
            for v in flatten(self.left.values(scope, run))
        )


@dataclass(frozen=True, slots=True)
class _Not:
    inner: Condition

    def test(self, scope: Any, run: Any) -> bool:
        return not self.inner.test(scope, run)


@dataclass(frozen=True, slots=True)
class _All:
    parts: tuple[Condition, ...]

    def test(self, scope: Any, run: Any) -> bool:
        for p in self.parts:  # noqa: SIM110 - a loop, not all(generator): a hot path
            if not p.test(scope, run):
                return False
        return True


@dataclass(frozen=True, slots=True)
class _Any:
    parts: tuple[Condition, ...]

    def test(self, scope: Any, run: Any) -> bool:
        for p in self.parts:  # noqa: SIM110 - a loop, not any(generator): a hot path
            if p.test(scope, run):
                return True
        return False


# -- the parser ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, compile_path: PathCompiler) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.compile_path = compile_path

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        tok = self.peek()
        if tok is None:
            raise ValueError("condition ends too early")
        self.pos += 1
        return tok

    def expect(self, kind: str, text: str) -> None:
        tok = self.take()
        if tok.kind != kind or tok.text != text:
            raise ValueError(f"expected {text!r} at column {tok.pos + 1}, found {tok.text!r}")

    def is_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "word" and tok.text == word

    def parse(self) -> Condition:
        if not self.tokens:
            raise ValueError("empty condition")
        cond = self.parse_or()
        tok = self.peek()
        if tok is not None:
            raise ValueError(f"unexpected {tok.text!r} at column {tok.pos + 1}")
        return cond

    def parse_or(self) -> Condition:
        parts = [self.parse_and()]
        while self.is_word("or"):
            self.pos += 1
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else _Any(tuple(parts))

    def parse_and(self) -> Condition:
        parts = [self.parse_unary()]
        while self.is_word("and"):
            self.pos += 1
            parts.append(self.parse_unary())
        return parts[0] if len(parts) == 1 else _All(tuple(parts))

    def parse_unary(self) -> Condition:
        if self.is_word("not"):
            self.pos += 1
            return _Not(self.parse_unary())
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == "(":
            self.pos += 1
            inner = self.parse_or()
            self.expect("punct", ")")
            return inner
        return self.parse_test()

    def operand(self, *, left: bool) -> tuple[PathReader, bool]:
        """An operand and whether it is a number literal."""
        tok = self.take()
        if tok.kind == "string":
            return _Literal(tok.text), False
        if tok.kind == "path":
            return self.compile(tok), False
        if tok.kind != "word" or (tok.text in _KEYWORDS and tok.text not in ("true", "false")):
            raise ValueError(f"expected a path or a value at column {tok.pos + 1}, "
                             f"found {tok.text!r}")
        if tok.text in ("true", "false"):
            return _Literal(tok.text == "true"), False
        if not left and _NUMBER.match(tok.text):
            return _Literal(Decimal(tok.text)), True
        return self.compile(tok), False

    def compile(self, tok: _Token) -> PathReader:
        try:
            return self.compile_path(tok.text)
        except ValueError as exc:
            raise ValueError(f"bad path {tok.text!r} in condition: {exc}") from None

    def literal(self) -> Any:
        tok = self.take()
        if tok.kind == "string":
            return tok.text
        if tok.kind == "word" and _NUMBER.match(tok.text):
            return Decimal(tok.text)
        if tok.kind == "word" and tok.text in ("true", "false"):
            return tok.text == "true"
        raise ValueError(f"expected a value at column {tok.pos + 1}, found {tok.text!r}")

    def parse_test(self) -> Condition:
        left, _ = self.operand(left=True)
        tok = self.peek()
        if tok is None or (tok.kind == "word" and tok.text in ("and", "or")) or (
            tok.kind == "punct" and tok.text == ")"
        ):
            if isinstance(left, _Literal):
                raise ValueError("a condition must test a path, not only a value")
            return _Exists(left)
        if tok.kind == "op":
            self.pos += 1
            right, numeric = self.operand(left=False)
            if (
                tok.text in ("=", "!=") and _single_text(left) and isinstance(right, _Literal)
                and isinstance(right.value, str)
            ):
                return _EqualsText(left, right.value, tok.text == "!=")
            return _Compare(left, tok.text, right, numeric)
        if tok.kind == "word" and tok.text == "in":
            self.pos += 1
            self.expect("punct", "(")
            options = [self.literal()]
            while True:
                nxt = self.take()
                if nxt.kind == "punct" and nxt.text == ")":
                    break
                if nxt.kind != "punct" or nxt.text != ",":
                    raise ValueError(f"expected ',' or ')' at column {nxt.pos + 1}")
                options.append(self.literal())
            texts = (
                frozenset(options) if all(isinstance(o, str) for o in options) else None
            )
            if texts is not None and _single_text(left):
                return _InTexts(left, texts)
            return _In(left, tuple(options), texts)
        if tok.kind == "word" and tok.text == "matches":
            self.pos += 1
            pat = self.take()
            if pat.kind != "string":
                raise ValueError("matches needs a quoted regular expression")
            return _Matches(left, compile_pattern(pat.text))
        raise ValueError(f"unexpected {tok.text!r} at column {tok.pos + 1}")


def compile_condition(text: str, compile_path: PathCompiler) -> Condition:
    """Parse ``text``; raises ValueError with the column of the problem."""
    if not isinstance(text, str):
        raise ValueError("a condition must be a string such as 'PV1-2 = \"I\"'")
    return _Parser(text, compile_path).parse()


def split_where(text: str) -> tuple[str, str | None]:
    """Split ``path where condition`` at the first ``where`` outside quotes and brackets."""
    depth, quote = 0, ""
    for i, c in enumerate(text):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif (
            depth == 0 and c.isspace() and text.startswith("where", i + 1)
            and (i + 6 >= len(text) or text[i + 6].isspace())
        ):
            return text[:i].strip(), text[i + 6 :].strip()
    return text.strip(), None
