"""Reading mapping files: TOML in, compiled ``CompiledMapping`` out, every problem reported.

The loader checks everything it can before the first message arrives: unknown keys (with a
suggestion), path syntax, transform names and arguments, lookup tables and their files,
FHIR element names along each target path, references between outputs. It collects all
problems of all files and raises one ``ConfigError`` listing them, one line each::

    mappings/adt_to_fhir.toml output[0].rule[4] (from "PID-7" to "birthdate"): Patient has
    no element 'birthdate' (did you mean 'birthDate'?)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.contracts import Mapper
from engine.errors import ConfigError
from engine.hl7 import charset_codec
from engine.mapping import fhir
from engine.mapping.conditions import Condition, compile_condition
from engine.mapping.datetimes import parse_offset
from engine.mapping.hl7_output import compile_hl7_target
from engine.mapping.hl7_paths import compile_hl7_path
from engine.mapping.json_output import compile_json_target
from engine.mapping.json_paths import compile_json_path
from engine.mapping.lookups import LookupTable, csv_table, inline_table
from engine.mapping.program import (
    CompiledMapping,
    Constant,
    Output,
    Ref,
    Rule,
    Source,
    Template,
)
from engine.mapping.specials import NAMES, in_conditions, special
from engine.mapping.transforms import CompileEnv, compile_transform, suggest, to_value
from engine.mapping.xml_output import compile_xml_target
from engine.mapping.xml_paths import xml_path_compiler

SOURCES = ("hl7v2", "json", "fhir", "xml")
TARGETS = ("fhir", "json", "xml", "hl7v2")
_TOP_KEYS = {
    "name", "description", "source", "target", "when", "timezone", "validate", "bundle",
    "decimals", "resource", "method", "url", "if_none_exist", "namespaces", "hl7", "lookups",
    "rule", "output",
}
_OUTPUT_KEYS = {"name", "description", "resource", "each", "when", "method", "url",
                "if_none_exist", "rule"}
_RULE_KEYS = {"from", "value", "ref", "to", "transform", "default", "required", "when",
              "each", "rule", "note"}
_HL7_KEYS = {"message_type", "version", "processing_id", "charset", "sending_application",
             "sending_facility", "receiving_application", "receiving_facility"}
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass
class _Problems:
    file: str
    lines: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{self.file} {where}: {message}" if where else f"{self.file}: {message}")


@dataclass
class _Context:
    """What compiling one file needs: its format, lookups, and where problems go."""

    problems: _Problems
    source: str
    target: str
    compile_path: Callable[[str], Any]
    compile_target: Callable[[str], Any]
    env: CompileEnv
    output_names: set[str] = field(default_factory=set)
    refs: list[tuple[str, str]] = field(default_factory=list)


def _check_keys(
    table: dict[str, Any], allowed: set[str], where: str, problems: _Problems
) -> None:
    for key in table:
        if key not in allowed:
            problems.add(where, f"unknown key {key!r}{suggest(key, sorted(allowed))}")


def _label(where: str, raw: dict[str, Any]) -> str:
    bits = []
    src = raw.get("from", raw.get("ref", raw.get("each")))
    if isinstance(src, list):
        src = ", ".join(str(s) for s in src)
    if src is not None:
        bits.append(f"from {str(src)[:60]!r}")
    if raw.get("to") is not None:
        bits.append(f"to {str(raw['to'])[:60]!r}")
    return f"{where} ({' '.join(bits)})" if bits else where


# -- rules -----------------------------------------------------------------------------------


def _source(text: Any, ctx: _Context, where: str, in_group: bool) -> Source | None:
    if not isinstance(text, str) or not text.strip():
        ctx.problems.add(where, "'from' must be a path string or a list of paths")
        return None
    s = text.strip()
    found = special(s)
    if found is not None:
        return found
    if s.startswith("@") and ctx.source != "xml":  # in XPath, @name is an attribute
        ctx.problems.add(where, f"unknown special source {s!r} (use {', '.join(NAMES)})")
        return None
    try:
        path = ctx.compile_path(s)
    except ValueError as exc:
        ctx.problems.add(where, f"bad path: {exc}")
        return None
    relative = s.startswith((".", "-")) if ctx.source != "xml" else False
    if relative and not in_group:
        ctx.problems.add(where, f"{s!r} is relative: use it inside a group with 'each'")
    if getattr(path, "selects_segment", False):
        ctx.problems.add(where, f"{s!r} names a segment: name a field, e.g. {s}-1")
    return path  # type: ignore[no-any-return]


def _condition(text: Any, ctx: _Context, where: str) -> Condition | None:
    try:
        return compile_condition(text, in_conditions(ctx.compile_path))
    except ValueError as exc:
        ctx.problems.add(where, f"bad condition: {exc}")
        return None


def _target_steps(target: Any) -> list[Any]:
    return list(getattr(target, "steps", ()))


def _rule(
    raw: Any, ctx: _Context, where: str, *, in_group: bool, base_steps: list[Any] | None,
    resource: str | None,
) -> Rule | None:
    if not isinstance(raw, dict):
        ctx.problems.add(where, "a rule must be a table ({ from = ..., to = ... })")
        return None
    label = _label(where, raw)
    start = len(ctx.problems.lines)
    _check_keys(raw, _RULE_KEYS, label, ctx.problems)
    rule = Rule(label=label)
    if "when" in raw:
        rule.when = _condition(raw["when"], ctx, label)
    is_group = "rule" in raw
    target = None
    target_steps: list[Any] | None = None
    if raw.get("to") is not None:
        to = raw["to"]
        if not isinstance(to, str):
            ctx.problems.add(label, "'to' must be a path string")
        else:
            try:
                target = ctx.compile_target(to)
            except ValueError as exc:
                ctx.problems.add(label, f"bad target: {exc}")
            if target is not None:
                relative = bool(getattr(target, "relative", False)) or (
                    getattr(target, "kind", "abs") != "abs"
                )
                if relative and base_steps is None:
                    ctx.problems.add(
                        label, f"{to!r} is relative: use it inside a group with a 'to'"
                    )
                steps = _target_steps(target)
                target_steps = (base_steps or []) + steps if relative else steps
                if resource and ctx.target == "fhir":
                    try:
                        fhir.check_path(resource, target_steps)
                    except ValueError as exc:
                        ctx.problems.add(label, str(exc))
    if is_group:
        for key in ("from", "value", "ref", "transform", "default", "required"):
            if key in raw:
                ctx.problems.add(label, f"a group (with 'rule') cannot have {key!r}")
        each_in_group = in_group
        if "each" in raw:
            each = raw["each"]
            if not isinstance(each, str):
                ctx.problems.add(label, "'each' must be a path string")
            else:
                try:
                    rule.each = ctx.compile_path(each)
                    each_in_group = True
                    if getattr(rule.each, "comp", None) is not None:
                        ctx.problems.add(label, f"'each' {each!r} names a component: iterate "
                                         "segments (OBX[*]) or repetitions (PID-3[*])")
                    if ctx.source != "xml" and each.strip().startswith((".", "-")) and not in_group:
                        ctx.problems.add(label, f"{each!r} is relative: nest it in another group")
                except ValueError as exc:
                    ctx.problems.add(label, f"bad 'each' path: {exc}")
        if target is not None and _spreads(target):
            ctx.problems.add(label, "a group's 'to' cannot use [*]: use [+]")
        rule.target = target
        children = raw["rule"]
        if not isinstance(children, list) or not children:
            ctx.problems.add(label, "'rule' must be a non-empty list of rules")
            return None
        compiled = []
        child_base = target_steps if target is not None else base_steps
        for n, child in enumerate(children):
            c = _rule(child, ctx, f"{where}.rule[{n}]", in_group=each_in_group,
                      base_steps=child_base, resource=resource)
            if c is not None:
                compiled.append(c)
        rule.children = tuple(compiled)
        return rule.finish() if len(ctx.problems.lines) == start else None
    if "each" in raw:
        ctx.problems.add(label, "'each' needs nested rules: rule = [ { from = ..., to = ... } ]")
    if target is None and "to" not in raw:
        ctx.problems.add(label, "a rule needs 'to' (where the value goes)")
    given = [k for k in ("from", "value", "ref") if k in raw]
    if len(given) != 1:
        ctx.problems.add(label, "a rule needs exactly one of 'from', 'value' or 'ref'")
    elif given[0] == "from":
        texts = raw["from"] if isinstance(raw["from"], list) else [raw["from"]]
        sources = [_source(t, ctx, label, in_group) for t in texts]
        rule.sources = tuple(s for s in sources if s is not None)
    elif given[0] == "value":
        value = raw["value"]
        if isinstance(value, dict | list) or value == "":
            ctx.problems.add(label, "'value' must be a non-empty string, a number or a boolean")
        rule.sources = (Constant(to_value(value), f"value {value!r}"),)
    else:
        ref = raw["ref"]
        if not isinstance(ref, str):
            ctx.problems.add(label, "'ref' must be the name of another output")
        else:
            ctx.refs.append((label, ref))
            rule.sources = (Ref(ref, f"ref {ref}"),)
    transforms = raw.get("transform", [])
    if isinstance(transforms, str | dict):
        transforms = [transforms]
    if not isinstance(transforms, list):
        ctx.problems.add(label, "'transform' must be a list")
        transforms = []
    compiled_transforms = []
    for n, item in enumerate(transforms):
        try:
            compiled_transforms.append(compile_transform(item, ctx.env))
        except ValueError as exc:
            ctx.problems.add(f"{label} transform[{n}]", str(exc))
    rule.transforms = tuple(compiled_transforms)
    if "default" in raw:
        if isinstance(raw["default"], dict | list):
            ctx.problems.add(label, "'default' must be a string, number or boolean")
        rule.default = to_value(raw["default"])
    required = raw.get("required", False)
    if not isinstance(required, bool):
        ctx.problems.add(label, "'required' must be true or false")
    rule.required = bool(required)
    rule.target = target
    return rule.finish() if len(ctx.problems.lines) == start else None


def _interning(compile_path: Callable[[str], Any]) -> Callable[[str], Any]:
    """One compiled object per distinct path text, so per-run results can be shared."""
    cache: dict[str, Any] = {}

    def compile_once(text: str) -> Any:
        found = cache.get(text)
        if found is None:
            found = compile_path(text)
            cache[text] = found
        return found

    return compile_once


def _spreads(target: Any) -> bool:
    spread = getattr(target, "spread", False)
    return spread if isinstance(spread, bool) else spread >= 0


def _rules(
    raw: Any, ctx: _Context, where: str, resource: str | None, *, in_each: bool
) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        ctx.problems.add(where, "'rule' must be a list of tables ([[rule]])")
        return ()
    out = []
    for n, item in enumerate(raw):
        r = _rule(item, ctx, f"{where}[{n}]", in_group=in_each, base_steps=None,
                  resource=resource)
        if r is not None:
            out.append(r)
    return tuple(out)


# -- outputs ---------------------------------------------------------------------------------


def _template(text: Any, ctx: _Context, where: str) -> Template | None:
    if not isinstance(text, str) or not text:
        ctx.problems.add(where, "must be a string")
        return None
    parts: list[Any] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(text[pos : m.start()])
        try:
            parts.append(compile_json_path(m.group(1)))
        except ValueError as exc:
            ctx.problems.add(where, f"bad placeholder {{{m.group(1)}}}: {exc}")
        pos = m.end()
    parts.append(text[pos:])
    return Template(text, tuple(p for p in parts if p != ""))


def _output(raw: dict[str, Any], ctx: _Context, where: str, keys: set[str]) -> Output | None:
    start = len(ctx.problems.lines)
    name = raw.get("name")
    label = (f"{where} ({name})" if isinstance(name, str) else where) if where else "output"
    _check_keys(raw, keys, label, ctx.problems)
    resource = raw.get("resource")
    model = None
    if ctx.target == "fhir":
        if not isinstance(resource, str):
            ctx.problems.add(label, "a FHIR output needs resource = \"Patient\" (the type)")
            resource = None
        else:
            try:
                model = fhir.model_class(resource)
                fhir.prepare(model)
            except ValueError as exc:
                ctx.problems.add(label, str(exc))
                resource = None
    else:
        for key in ("resource", "method", "url", "if_none_exist"):
            if key in raw:
                ctx.problems.add(label, f"{key!r} is only for target = \"fhir\"")
    out = Output(name=str(name or "output"), label=label, rules=(), resource=resource,
                 model=model)
    if "each" in raw:
        try:
            out.each = ctx.compile_path(raw["each"])
        except (ValueError, AttributeError) as exc:
            ctx.problems.add(label, f"bad 'each' path: {exc}")
    if "when" in raw:
        out.when = _condition(raw["when"], ctx, f"{label} when")
    method = raw.get("method")
    if method is not None:
        if method not in ("POST", "PUT"):
            ctx.problems.add(label, "method must be POST or PUT")
        out.method = method
    if "url" in raw:
        out.url = _template(raw["url"], ctx, f"{label} url")
    if "if_none_exist" in raw:
        out.if_none_exist = _template(raw["if_none_exist"], ctx, f"{label} if_none_exist")
    rules_where = f"{where}.rule" if where else "rule"
    if "rule" not in raw:
        ctx.problems.add(label, "no rules: add [[rule]] tables")
    else:
        out.rules = _rules(raw["rule"], ctx, rules_where, resource, in_each=out.each is not None)
    return out if len(ctx.problems.lines) == start else None


# -- files -----------------------------------------------------------------------------------


def _lookups(raw: Any, base: Path, problems: _Problems) -> dict[str, LookupTable]:
    tables: dict[str, LookupTable] = {}
    if raw is None:
        return tables
    if not isinstance(raw, dict):
        problems.add("lookups", "must be a table of tables ([lookups.NAME])")
        return tables
    root = base.resolve()
    for name, spec in raw.items():
        where = f"lookups.{name}"
        if not isinstance(spec, dict):
            problems.add(where, "must be a table with 'values' or 'file'")
            continue
        _check_keys(spec, {"values", "file", "key", "value"}, where, problems)
        try:
            if "values" in spec and "file" not in spec:
                tables[name] = inline_table(name, spec["values"])
            elif "file" in spec and "values" not in spec:
                rel = spec["file"]
                if not isinstance(rel, str):
                    raise ValueError("'file' must be a path string")
                path = (base / rel).resolve()
                if not path.is_relative_to(root):
                    raise ValueError(f"lookup file {rel!r} must be inside {base}")
                tables[name] = csv_table(name, path, rel, spec.get("key"), spec.get("value"))
            else:
                raise ValueError("give either 'values' (inline) or 'file' (CSV)")
        except ValueError as exc:
            problems.add(where, str(exc))
    return tables


def _hl7_header(raw: Any, problems: _Problems) -> dict[int, str]:
    if not isinstance(raw, dict) or not isinstance(raw.get("message_type"), str):
        problems.add("hl7", 'an HL7 v2 target needs [hl7] message_type = "ADT^A08^ADT_A01"')
        return {}
    _check_keys(raw, _HL7_KEYS, "hl7", problems)
    if not re.fullmatch(r"[A-Z0-9]{3}(\^[A-Z0-9]{3}(\^[A-Z0-9_]{3,7})?)?", raw["message_type"]):
        problems.add("hl7", f"message_type {raw['message_type']!r} is not like ADT^A08^ADT_A01")
    for key, value in raw.items():
        if not isinstance(value, str) or any(c in value for c in "|~\\&\r\n"):
            problems.add(f"hl7.{key}", "must be a string without HL7 delimiters")
    if charset_codec(str(raw.get("charset", "UNICODE UTF-8"))) in (None, ""):
        problems.add("hl7.charset", f"unknown character set {raw.get('charset')!r} "
                     "(e.g. UNICODE UTF-8, GB 18030-2000)")
    return {
        3: raw.get("sending_application", "HISBRIDGE"),
        4: raw.get("sending_facility", ""),
        5: raw.get("receiving_application", ""),
        6: raw.get("receiving_facility", ""),
        9: raw["message_type"],
        11: raw.get("processing_id", "P"),
        12: raw.get("version", "2.5"),
        18: raw.get("charset", "UNICODE UTF-8"),
    }


def _compile(
    data: dict[str, Any], path: Path, display: str, problems: _Problems
) -> CompiledMapping | None:
    start = len(problems.lines)
    _check_keys(data, _TOP_KEYS, "", problems)
    source, target = data.get("source"), data.get("target")
    if source not in SOURCES:
        problems.add("source", f"must be one of {', '.join(SOURCES)} (got {source!r})")
        return None
    if target not in TARGETS:
        problems.add("target", f"must be one of {', '.join(TARGETS)} (got {target!r})")
        return None
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        problems.add("name", "must be letters, digits, '_', '.' or '-'")
        name = path.stem
    try:
        tz = parse_offset(data.get("timezone", "+08:00"))
    except (ValueError, AttributeError) as exc:
        problems.add("timezone", str(exc))
        tz = parse_offset("+08:00")
    namespaces = data.get("namespaces", {})
    if not isinstance(namespaces, dict) or not all(
        isinstance(v, str) for v in namespaces.values()
    ):
        problems.add("namespaces", "must be a table of prefix = \"uri\"")
        namespaces = {}
    lookups = _lookups(data.get("lookups"), path.parent, problems)
    env = CompileEnv(lookups, tz)
    if source == "hl7v2":
        compile_path: Callable[[str], Any] = compile_hl7_path
    elif source == "xml":
        compile_path = xml_path_compiler(namespaces)
    else:
        compile_path = compile_json_path
    if target == "hl7v2":
        compile_target: Callable[[str], Any] = compile_hl7_target
    elif target == "xml":
        def compile_target(text: str) -> Any:
            return compile_xml_target(text, namespaces)
    else:
        compile_target = compile_json_target
    compile_path = _interning(compile_path)
    ctx = _Context(problems, source, target, compile_path, compile_target, env)
    msh = _hl7_header(data.get("hl7"), problems) if target == "hl7v2" else {}
    if target != "hl7v2" and "hl7" in data:
        problems.add("hl7", "[hl7] is only for target = \"hl7v2\"")
    if target != "fhir":
        for key in ("validate", "bundle"):
            if key in data:
                problems.add(key, "only for target = \"fhir\"")

    outputs: list[Output] = []
    if "output" in data and "rule" in data:
        problems.add("rule", "use either top-level [[rule]] or [[output]] tables, not both")
    elif "output" in data:
        raw_outputs = data["output"]
        if not isinstance(raw_outputs, list) or not raw_outputs:
            problems.add("output", "must be a list of tables ([[output]])")
            raw_outputs = []
        for key in ("resource", "method", "url", "if_none_exist"):
            if key in data:
                problems.add(key, "set it on each [[output]]")
        names = [o.get("name") for o in raw_outputs if isinstance(o, dict)]
        ctx.output_names = {n for n in names if isinstance(n, str)}
        for n, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict):
                problems.add(f"output[{n}]", "must be a table")
                continue
            if not isinstance(raw.get("name"), str):
                problems.add(f"output[{n}]", "needs a name (used by ref and in errors)")
            elif names.count(raw["name"]) > 1:
                problems.add(f"output[{n}]", f"duplicate output name {raw['name']!r}")
            o = _output(raw, ctx, f"output[{n}]", _OUTPUT_KEYS)
            if o is not None:
                outputs.append(o)
    elif "rule" in data:
        single: dict[str, Any] = {
            k: data[k] for k in ("resource", "method", "url", "if_none_exist", "rule") if k in data
        }
        single["name"] = name
        ctx.output_names = {name}
        o = _output(single, ctx, "", _OUTPUT_KEYS)
        if o is not None:
            outputs.append(o)
    else:
        problems.add("", "no rules: add [[rule]] (or [[output]] with [[output.rule]]) tables")
    for where, ref in ctx.refs:
        if target != "fhir":
            problems.add(where, "'ref' is only for target = \"fhir\"")
        elif ref not in ctx.output_names:
            hint = suggest(ref, sorted(ctx.output_names))
            problems.add(where, f"ref {ref!r} names no output{hint}")
    when = _condition(data["when"], ctx, "when") if "when" in data else None

    bundle = data.get("bundle")
    if target == "fhir":
        if bundle is None:
            many = len(outputs) > 1 or any(o.each is not None for o in outputs)
            bundle = "transaction" if many else "none"
        if bundle not in ("transaction", "batch", "none"):
            problems.add("bundle", "must be transaction, batch or none")
    validate = data.get("validate", True)
    if not isinstance(validate, bool):
        problems.add("validate", "must be true or false")
    decimals = data.get("decimals", "number")
    if decimals not in ("number", "string"):
        problems.add("decimals", "must be number or string")
    if len(problems.lines) != start:
        return None
    return CompiledMapping(
        name=name, file=display, source=source, target=target, outputs=tuple(outputs),
        when=when, bundle=bundle or "none", validate=validate, decimals=decimals, tz=tz,
        msh=msh, namespaces=dict(namespaces),
        outputs_by_name={o.name: o for o in outputs},
        encoding=charset_codec(msh.get(18, "")) or "utf-8",
    )


def _read(path: Path, display: str, problems: _Problems) -> CompiledMapping | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        problems.add("", f"not valid TOML: {exc}")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.add("", f"cannot read: {exc}")
        return None
    return _compile(data, path, display, problems)


def load_mapping(path: Path) -> CompiledMapping:
    """Load one mapping file; raises ConfigError listing every problem in it."""
    problems = _Problems(str(path))
    mapping = _read(path, str(path), problems)
    if mapping is None:
        raise ConfigError(_summary(problems.lines), file=None)
    return mapping


def load_mappings(directory: Path) -> dict[str, Mapper]:
    """Every ``*.toml`` mapping in ``directory`` by name; ConfigError listing all problems."""
    if not directory.is_dir():
        raise ConfigError(f"mappings directory {directory} does not exist")
    found: dict[str, Mapper] = {}
    origin: dict[str, str] = {}
    lines: list[str] = []
    for path in sorted(directory.glob("*.toml")):
        problems = _Problems(str(path))
        mapping = _read(path, str(path), problems)
        lines.extend(problems.lines)
        if mapping is None:
            continue
        if mapping.name in found:
            lines.append(
                f"{path}: mapping name {mapping.name!r} is also used by {origin[mapping.name]}"
            )
            continue
        found[mapping.name] = mapping
        origin[mapping.name] = str(path)
    if lines:
        raise ConfigError(_summary(lines))
    return found


def _summary(lines: list[str]) -> str:
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems in mappings:\n  " + "\n  ".join(lines)
