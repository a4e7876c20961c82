"""Channel and destination filters: which messages go on, decided from the received message.

Paths are HL7 ``SEG-F[.C[.S]]`` with an optional repetition ``SEG-F[2].C`` for HL7 bodies,
and dotted JSON paths ``a.b[0].c`` for JSON bodies.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from engine.errors import ConfigError, RejectedInput
from engine.hl7 import Hl7Message, parse
from engine.settings import FilterConfig, FilterRule

_HL7_PATH = re.compile(r"^([A-Z][A-Z0-9]{2})-(\d+)(?:\[(\d+)\])?(?:\.(\d+))?(?:\.(\d+))?$")
_JSON_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

Getter = Callable[["Subject"], str | None]


class Subject:
    """A message body opened lazily in the form the filter's paths need."""

    __slots__ = ("_hl7", "_json", "body", "content_type")

    def __init__(self, body: bytes, content_type: str, hl7: Hl7Message | None = None) -> None:
        self.body = body
        self.content_type = content_type
        self._hl7 = hl7
        self._json: Any = None

    @property
    def hl7(self) -> Hl7Message | None:
        if self._hl7 is None and self.content_type == "hl7v2":
            try:
                self._hl7 = parse(self.body)
            except RejectedInput:
                return None
        return self._hl7

    @property
    def json(self) -> Any:
        if self._json is None and self.content_type in ("json", "fhir+json"):
            try:
                self._json = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                self._json = {}
        return self._json


def compile_path(path: str) -> Getter:
    m = _HL7_PATH.match(path)
    if m:
        seg, fld, rep, comp, sub = m.groups()

        def hl7_get(s: Subject) -> str | None:
            msg = s.hl7
            if msg is None:
                return None
            if comp is None:
                return msg.unescape(_whole_field(msg, seg, int(fld), int(rep or 1)))
            return msg.unescape(msg.get(
                seg, int(fld), int(comp), repetition=int(rep or 1),
                subcomponent=int(sub) if sub else None,
            ))

        return hl7_get
    steps: list[str | int] = []
    for name, index in _JSON_STEP.findall(path):
        steps.append(int(index) if index else name)
    if not steps:
        raise ConfigError(f"invalid filter path {path!r}")

    def json_get(s: Subject) -> str | None:
        node = s.json
        for step in steps:
            if isinstance(step, int):
                if not isinstance(node, list) or step >= len(node):
                    return None
                node = node[step]
            else:
                if not isinstance(node, dict) or step not in node:
                    return None
                node = node[step]
        if node is None or isinstance(node, (dict, list)):
            return None if node is None else orjson.dumps(node).decode()
        return str(node)

    return json_get


def _whole_field(msg: Hl7Message, seg: str, fld: int, rep: int) -> str:
    """A whole repetition of a field (all components), raw."""
    text = msg.field_text(seg, fld)
    reps = text.split(msg.repetition_sep) if seg != "MSH" or fld > 2 else [text]
    return reps[rep - 1] if rep <= len(reps) else ""


class Filter:
    """A compiled FilterConfig: ``matches(subject)`` is True when the message should go on."""

    def __init__(self, config: FilterConfig) -> None:
        self.message_types = [t.strip() for t in config.message_types]
        self.rules: list[tuple[Getter, FilterRule]] = [
            (compile_path(rule.path), rule) for rule in config.where
        ]

    def matches(self, subject: Subject) -> bool:
        if self.message_types:
            msg = subject.hl7
            if msg is None:
                return False
            mtype = msg.message_type.replace(msg.component_sep, "^")
            if not any(mtype == t or mtype.startswith(t + "^") for t in self.message_types):
                return False
        for getter, rule in self.rules:
            value = getter(subject)
            if rule.exists is not None:
                if bool(value) != rule.exists:
                    return False
            elif rule.equals is not None:
                if value not in rule.equals:
                    return False
            elif rule.not_equals is not None and value in rule.not_equals:
                return False
        return True
