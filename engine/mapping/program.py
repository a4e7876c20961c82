"""A compiled mapping and the interpreter that applies it to a message.

The loader turns a TOML file into these objects once; ``Mapping.apply`` then only walks
pre-parsed paths and pre-resolved transforms. One ``apply`` is one ``Run``: it holds the
clock, the ``@seq`` counter, the input's headers and the ids given to every output item, so
outputs can reference each other (``ref = "patient"``) and ids are the same every time the
same input is mapped (replays and fixtures are reproducible).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping as AnyMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from engine.contracts import Payload
from engine.errors import MappingError, RejectedInput
from engine.hl7 import parse as parse_hl7
from engine.mapping import fhir
from engine.mapping.conditions import Condition
from engine.mapping.hl7_output import Hl7Builder
from engine.mapping.hl7_paths import root_scope as hl7_root
from engine.mapping.json_output import JsonBuilder, dumps, dumps_strings, prune
from engine.mapping.json_paths import JsonPath, JsonScope
from engine.mapping.specials import Special
from engine.mapping.transforms import Transform
from engine.mapping.values import Problem, as_text, is_empty
from engine.mapping.xml_output import XmlBuilder
from engine.mapping.xml_paths import XmlScope, parse_xml

CONTENT_TYPES = {"fhir": "fhir+json", "json": "json", "xml": "xml", "hl7v2": "hl7v2"}
_ACCEPTS = {
    "hl7v2": ("hl7v2",),
    "json": ("json", "fhir+json"),
    "fhir": ("fhir+json", "json"),
    "xml": ("xml",),
}


class SourcePath(Protocol):
    text: str

    @property
    def multi(self) -> bool: ...

    def values(self, scope: Any, run: Any) -> list[Any]: ...

    def nodes(self, scope: Any, run: Any) -> list[Any]: ...


# -- value sources ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constant:
    value: Any
    text: str = "value"

    def values(self, scope: Any, run: Run) -> list[Any]:
        return [self.value]


@dataclass(frozen=True, slots=True)
class Ref:
    """References to the resources of another output (``urn:uuid:`` in a Bundle)."""

    output: str
    text: str

    def values(self, scope: Any, run: Run) -> list[Any]:
        items = run.items.get(self.output, [])
        if run.mapping.outputs_by_name[self.output].each is not None:
            inside = [it for it in items if scope.contains(it.anchor)]
            if inside:
                items = inside
        return [it.reference for it in items]


Source = SourcePath | Constant | Special | Ref


# -- rules and outputs -----------------------------------------------------------------------


@dataclass(slots=True)
class Rule:
    """One compiled rule: where values come from, how they change, where they go.

    A rule with ``children`` is a group: it runs its children once per item of ``each``
    (or once, without ``each``), with ``target`` as the base of their relative targets.
    """

    label: str
    sources: tuple[Source, ...] = ()
    transforms: tuple[Transform, ...] = ()
    default: Any = None
    required: bool = False
    when: Condition | None = None
    target: Any = None
    each: SourcePath | None = None
    children: tuple[Rule, ...] | None = None
    simple: bool = False  # one source, nothing else: the common case, run without checks

    def finish(self) -> Rule:
        self.simple = (
            self.children is None and len(self.sources) == 1 and not self.transforms
            and self.default is None and not self.required and self.when is None
        )
        return self


@dataclass(slots=True)
class Template:
    """A URL such as ``Patient?identifier={identifier[0].system}|{identifier[0].value}``."""

    text: str
    parts: tuple[str | JsonPath, ...]
    # Per placeholder, its keys and indexes when it has nothing else (no [*], no where):
    # rendered by a direct walk of the resource.
    walks: tuple[tuple[Any, ...] | None, ...] = ()

    def __post_init__(self) -> None:
        self.walks = tuple(
            p.steps if isinstance(p, JsonPath) and not p.relative and p.where is None
            and all(type(x) in (str, int) for x in p.steps) else None
            for p in self.parts
        )

    def render(self, resource: dict[str, Any]) -> str:
        scope: JsonScope | None = None
        out = []
        for part, walk in zip(self.parts, self.walks, strict=True):
            if isinstance(part, str):
                out.append(part)
                continue
            if walk is not None:
                node: Any = resource
                for step in walk:
                    if type(step) is str:
                        node = node.get(step) if type(node) is dict else None
                    elif type(node) is list and -len(node) <= step < len(node):
                        node = node[step]
                    else:
                        node = None
                    if node is None:
                        break
                if type(node) is str and node:
                    out.append(quote(node, safe=":/"))
                    continue
                if node is None or node == "":
                    raise Problem(f"url {self.text!r}: {{{part.text}}} has no value")
            if scope is None:
                scope = JsonScope(resource, resource)
            values = [v for v in part.values(scope, None) if not is_empty(v)]
            if not values:
                raise Problem(f"url {self.text!r}: {{{part.text}}} has no value")
            out.append(quote(as_text(values[0]), safe=":/"))
        return "".join(out)


@dataclass(slots=True)
class Output:
    name: str
    label: str
    rules: tuple[Rule, ...]
    resource: str | None = None
    model: Any = None
    each: SourcePath | None = None
    when: Condition | None = None
    method: str | None = None
    url: Template | None = None
    if_none_exist: Template | None = None


@dataclass(slots=True)
class Item:
    output: Output
    scope: Any
    id: str
    reference: str
    anchor: Any


# -- one application -------------------------------------------------------------------------


@dataclass(slots=True)
class Run:
    mapping: CompiledMapping
    headers: AnyMapping[str, str]
    now: datetime
    digest: bytes
    seq: int = 0
    seq_uuid: int = 0
    items: dict[str, list[Item]] = field(default_factory=dict)

    def make_uuid(self, salt: str) -> uuid.UUID:
        h = hashlib.blake2b(self.digest + salt.encode(), digest_size=16).digest()
        return uuid.UUID(bytes=h, version=4)

    def make_id(self, salt: str) -> str:
        """``str(make_uuid(salt))``, without building the UUID object (once per output)."""
        h = bytearray(hashlib.blake2b(self.digest + salt.encode(), digest_size=16).digest())
        h[6] = (h[6] & 0x0F) | 0x40  # version 4
        h[8] = (h[8] & 0x3F) | 0x80  # RFC 4122 variant
        x = h.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


@dataclass(slots=True)
class _Base:
    """A group's ``to``, resolved on first write so an empty group leaves nothing behind."""

    builder: Any
    target: Any
    parent: _Base | None
    slot: Any = None
    resolved: bool = False

    def get(self) -> Any:
        if not self.resolved:
            parent = self.parent.get() if self.parent is not None else None
            self.slot = self.builder.locate(self.target, parent)
            self.resolved = True
        return self.slot


@dataclass(slots=True)
class CompiledMapping:
    """A loaded mapping: satisfies ``engine.contracts.Mapper``."""

    name: str
    file: str
    source: str
    target: str
    outputs: tuple[Output, ...]
    when: Condition | None = None
    bundle: str = "none"
    validate: bool = True
    decimals: str = "number"
    tz: timezone = UTC
    msh: dict[int, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    outputs_by_name: dict[str, Output] = field(default_factory=dict)
    encoding: str = "utf-8"  # of HL7 v2 output, as its MSH-18 declares
    fhir_validation: str = "fast"  # fhir.VALIDATION_MODES; fixtures run "both"

    def apply(self, payload: Payload) -> list[Payload]:
        """Map one payload; [] when the mapping's ``when`` does not match.

        Raises:
            MappingError: naming this file, the rule and the path.
        """
        return self.run(payload)

    def run(self, payload: Payload, *, now: datetime | None = None) -> list[Payload]:
        root = self._read(payload)
        when = now or datetime.now(self.tz)
        digest = hashlib.blake2b(
            self.name.encode() + b"\x00" + payload.body
            # surrogatepass: a header is not checked yet, and its id must not fail on it.
            + b"".join(f"\x00{k}={v}".encode("utf-8", "surrogatepass")
                       for k, v in sorted(payload.headers.items())),
            digest_size=16,
        ).digest()
        run = Run(self, payload.headers, when.astimezone(self.tz), digest)
        if self.when is not None and not self._test(self.when, root, run, "when"):
            return []
        plan = self._plan(root, run)
        if self.target == "fhir":
            return self._fhir(plan, run, payload.headers)
        outputs = []
        for n, item in enumerate(plan):
            body = self._build(item, run, n)
            headers = {**payload.headers, "mapping": self.name}
            outputs.append(Payload(body, CONTENT_TYPES[self.target], headers))
        return outputs

    # -- reading -----------------------------------------------------------------------------

    def _fail(self, where: str, problem: str) -> MappingError:
        return MappingError(f"{self.file}: {where}: {problem}")

    def _read(self, payload: Payload) -> Any:
        ctype = payload.content_type.lower().removeprefix("application/").split(";")[0].strip()
        if ctype not in _ACCEPTS[self.source]:
            raise self._fail("input", f"this mapping reads {self.source}, got {ctype!r}")
        if self.source == "hl7v2":
            try:
                return hl7_root(parse_hl7(payload.body))
            except RejectedInput as exc:
                raise self._fail("input", f"not a usable HL7 v2 message: {exc}") from None
        if self.source == "xml":
            try:
                root = parse_xml(payload.body)
            except ValueError as exc:
                raise self._fail("input", str(exc)) from None
            return XmlScope(root, root)
        try:
            doc = orjson.loads(payload.body)
        except orjson.JSONDecodeError as exc:
            raise self._fail("input", f"not valid JSON: {exc}") from None
        return JsonScope(doc, doc)

    def _test(self, cond: Condition, scope: Any, run: Run, where: str) -> bool:
        try:
            return cond.test(scope, run)
        except Problem as exc:
            raise self._fail(where, str(exc)) from None

    # -- planning: which items each output produces, and their ids ---------------------------

    def _plan(self, root: Any, run: Run) -> list[Item]:
        plan: list[Item] = []
        for out in self.outputs:
            try:
                scopes = out.each.nodes(root, run) if out.each is not None else [root]
            except Problem as exc:
                raise self._fail(f"{out.label} each", str(exc)) from None
            if out.when is not None:
                scopes = [s for s in scopes if self._test(out.when, s, run, f"{out.label} when")]
            items = []
            for n, scope in enumerate(scopes):
                ident = run.make_id(f"{out.name}/{n}")
                if self.bundle == "none" and out.resource:
                    ref = f"{out.resource}/{ident}"
                else:
                    ref = f"urn:uuid:{ident}"
                items.append(Item(out, scope, ident, ref, scope.anchor))
            run.items[out.name] = items
            plan.extend(items)
        return plan

    # -- building ----------------------------------------------------------------------------

    def _builder(self, run: Run, n: int) -> Any:
        if self.target == "hl7v2":
            msh = dict(self.msh)
            msh.setdefault(7, run.now.strftime("%Y%m%d%H%M%S"))
            msh.setdefault(10, _control_id(run, n))
            return Hl7Builder(msh)
        if self.target == "xml":
            return XmlBuilder(self.namespaces)
        return JsonBuilder()

    def _populate(self, item: Item, run: Run, n: int) -> Any:
        builder = self._builder(run, n)
        for rule in item.output.rules:
            self._rule(rule, item.scope, None, builder, run)
        return builder

    def _build(self, item: Item, run: Run, n: int) -> bytes:
        builder = self._populate(item, run, n)
        if self.target == "hl7v2":
            text: str = builder.serialize()
            try:
                return text.encode(self.encoding)
            except UnicodeEncodeError as exc:
                raise self._fail(
                    "output", f"a value cannot be written in {self.encoding} (MSH-18) at "
                    f"character {exc.start}"
                ) from None
        if self.target == "xml":
            return builder.serialize()  # type: ignore[no-any-return]
        doc = (prune(builder.document) or {}) if builder.padded else builder.document
        return self._dumps(doc, strings=self.decimals != "number")

    def _dumps(self, doc: Any, *, strings: bool = False) -> bytes:
        try:
            return dumps_strings(doc) if strings else dumps(doc)
        except orjson.JSONEncodeError:
            # A lone surrogate (from a header, say) has no UTF-8 form.
            raise self._fail("output", "a value is not valid Unicode text") from None

    def _rule(self, rule: Rule, scope: Any, base: _Base | None, builder: Any, run: Run) -> None:
        try:
            if rule.simple:
                # Sources never yield empty values, so there is nothing to filter.
                values = rule.sources[0].values(scope, run)
                if values:
                    builder.write(rule.target, base.get() if base is not None else None, values)
                return
            if rule.children is not None:
                items = rule.each.nodes(scope, run) if rule.each is not None else [scope]
                for item in items:
                    # A group's condition is tested for each item, where its paths point.
                    if rule.when is not None and not rule.when.test(item, run):
                        continue
                    item_base = (
                        _Base(builder, rule.target, base) if rule.target is not None else base
                    )
                    for child in rule.children:
                        self._rule(child, item, item_base, builder, run)
                return
            if rule.when is not None and not rule.when.test(scope, run):
                return
            sources = rule.sources
            if len(sources) == 1:
                values = sources[0].values(scope, run)
            else:
                values = []
                for source in sources:
                    values.extend(source.values(scope, run))
            for transform in rule.transforms:
                try:
                    values = transform.fn(values)
                except Problem as exc:
                    raise Problem(f"transform {transform.name}: {exc}") from None
            if values:
                values = [v for v in values if v is not None and v != "" and v != [] and v != {}]
            if not values:
                if rule.default is not None:
                    values = [rule.default]
                elif rule.required:
                    raise Problem("required value is missing")
                else:
                    return
            builder.write(rule.target, base.get() if base is not None else None, values)
        except Problem as exc:
            raise self._fail(rule.label, str(exc)) from None

    # -- FHIR --------------------------------------------------------------------------------

    def _fhir(
        self, plan: list[Item], run: Run, headers: AnyMapping[str, str]
    ) -> list[Payload]:
        entries = []
        resources = []
        for n, item in enumerate(plan):
            out = item.output
            builder = JsonBuilder()
            builder.document["resourceType"] = out.resource
            if self.bundle == "none":
                builder.document["id"] = item.id
            for rule in out.rules:
                self._rule(rule, item.scope, None, builder, run)
            resource = (prune(builder.document) or {}) if builder.padded else builder.document
            resource["resourceType"] = out.resource
            assert out.resource is not None
            if self.validate:
                try:
                    fhir.validate(out.resource, resource, out.model, self.fhir_validation)
                except Problem as exc:
                    raise self._fail(f"{out.label} (item {n + 1})", str(exc)) from None
            try:
                url = out.url.render(resource) if out.url is not None else None
                none_exist = (
                    out.if_none_exist.render(resource) if out.if_none_exist is not None else None
                )
            except Problem as exc:
                raise self._fail(out.label, str(exc)) from None
            if self.bundle == "none":
                method = out.method or "PUT"
                resources.append((resource, method, url or f"{out.resource}/{item.id}"))
                continue
            request: dict[str, Any] = {"method": out.method or ("PUT" if url else "POST"),
                                       "url": url or out.resource}
            if none_exist:
                request["ifNoneExist"] = none_exist
            entries.append({"fullUrl": item.reference, "resource": resource, "request": request})
        base = {**headers, "mapping": self.name}
        if self.bundle == "none":
            return [
                Payload(
                    self._dumps(res), "fhir+json",
                    {**base, "fhir-resource-type": res["resourceType"], "fhir-method": method,
                     "fhir-url": url},
                )
                for res, method, url in resources
            ]
        if not entries:
            return []
        body = self._dumps(fhir.bundle(self.bundle, entries))
        return [Payload(body, "fhir+json", {**base, "fhir-resource-type": "Bundle"})]


def _control_id(run: Run, n: int) -> str:
    """A 20-character MSH-10 (the v2.5 limit), the same for the same input and output."""
    h = hashlib.blake2b(run.digest + f"msh10/{n}".encode(), digest_size=12).hexdigest()
    return "HB" + h[:18].upper()
