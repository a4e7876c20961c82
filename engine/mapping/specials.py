"""Special sources: values that come from the run rather than from the input document.

    @index         1-based position of the current item (in an ``each`` or a ``where``)
    @seq           a counter over the whole message, 1, 2, 3 ... each time it is read
    @now           the mapping time, ISO 8601 with the mapping's offset
    @uuid          a UUID derived from the input (the same input gives the same UUIDs)
    @header:NAME   the input header NAME (set by the channel or the workflow)

``@index``, ``@now`` and ``@header:`` may also be used in conditions; ``@seq`` and ``@uuid``
change each time they are read, so they may not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NAMES = ("@index", "@seq", "@now", "@uuid", "@header:NAME")


@dataclass(frozen=True, slots=True)
class Special:
    text: str
    kind: str
    arg: str = ""

    def values(self, scope: Any, run: Any) -> list[Any]:
        if self.kind == "index":
            return [scope.index]
        if self.kind == "header":
            value = run.headers.get(self.arg) if run is not None else None
            return [value] if value else []
        if self.kind == "now":
            return [run.now.isoformat(timespec="seconds")]
        if self.kind == "seq":
            run.seq += 1
            return [run.seq]
        run.seq_uuid += 1
        return [str(run.make_uuid(f"@uuid/{run.seq_uuid}"))]


def special(text: str) -> Special | None:
    """The special source ``text`` names, or None when it is not one."""
    s = text.strip()
    if s in ("@index", "@seq", "@now", "@uuid"):
        return Special(s, s[1:])
    if s.startswith("@header:") and len(s) > 8:
        return Special(s, "header", s[8:])
    return None


def in_conditions(compile_path: Any) -> Any:
    """A path compiler for conditions that also accepts @index, @now and @header:NAME."""

    def compile_operand(text: str) -> Any:
        found = special(text)
        if found is not None:
            if found.kind in ("seq", "uuid"):
                raise ValueError(f"{text} changes each time it is read: not in a condition")
            return found
        return compile_path(text)

    return compile_operand
