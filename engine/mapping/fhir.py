"""FHIR R4 specifics: target paths checked against the resource models, validation, Bundles.

Models come from ``fhir.resources.R4B`` (R4B is wire-compatible with R4 for the resources
hisbridge maps; fhir.resources 8 has no R4 module). At load, every target path of a FHIR
output is walked through the model, so ``birthdate`` or ``name.family`` (``name`` repeats)
fails ``hisbridge check`` with a suggestion. At run time each resource is validated, unless
the mapping says ``validate = false``; a resource that fails is a MappingError carrying the
validation messages (element paths and reasons, never the values).

Validation first asks ``fhir_check.vouch``, a structural check derived from the same models
that costs a few microseconds; only what it cannot vouch for goes through fhir.resources
(``model_validate``), which then decides, with its own messages. ``hisbridge test`` runs
both on every fixture and fails if the fast check passes what fhir.resources refuses.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from engine.mapping import fhir_check
from engine.mapping.json_paths import APPEND, LAST, STAR
from engine.mapping.transforms import suggest
from engine.mapping.values import Problem


def model_class(resource_type: str) -> Any:
    """The fhir.resources model for a resource type; ValueError when there is none."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"{resource_type!r} is not a FHIR R4 resource type") from None


@dataclass(frozen=True, slots=True)
class _Element:
    repeats: bool
    child: Any  # model class, "primitive", or None when unknown (not checked further)


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(is a list, innermost type) of a field annotation such as Optional[List[X]]."""
    repeats = False
    t = annotation
    while True:
        origin = typing.get_origin(t)
        args = typing.get_args(t)
        if origin is typing.Annotated:
            t = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - the models use typing.List
            repeats = True
            t = args[0]
        elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            inner = [a for a in args if a is not type(None)]
            if len(inner) != 1:
                return repeats, None
            t = inner[0]
        else:
            return repeats, t


@functools.lru_cache(maxsize=512)
def _elements(cls: Any) -> dict[str, _Element]:
    from fhir.resources.R4B import get_fhir_model_class

    out: dict[str, _Element] = {}
    for name, info in cls.model_fields.items():
        if name == "fhir_comments":
            continue
        repeats, inner = _unwrap(info.annotation)
        child: Any = "primitive"
        type_name = getattr(inner, "__name__", "")
        if type_name.endswith("Type") and getattr(inner, "__module__", "") == "abc":
            base = type_name[:-4]
            try:
                child = get_fhir_model_class(base)
            except (ValueError, KeyError, AttributeError):
                child = None
            if base in ("Resource", "FHIRPrimitiveExtension"):
                child = None
        out[info.alias or name] = _Element(repeats, child)
    return out


def check_path(resource_type: str, steps: list[Any]) -> None:
    """Walk ``steps`` (keys and list markers) through the model; ValueError if impossible."""
    cls: Any = model_class(resource_type)
    done: list[str] = []
    i = 0
    while i < len(steps):
        step = steps[i]
        if not isinstance(step, str):
            raise ValueError(f"{resource_type}.{'.'.join(done)}: an index needs an element name")
        if cls is None:
            return
        if cls == "primitive":
            raise ValueError(
                f"{resource_type}.{'.'.join(done)} is a primitive value: it has no {step!r}"
            )
        elements = _elements(cls)
        if step == "resourceType" and not done:
            cls = "primitive"
            done.append(step)
            i += 1
            continue
        element = elements.get(step)
        if element is None:
            where = f"{resource_type}.{'.'.join(done)}" if done else resource_type
            raise ValueError(
                f"{where} has no element {step!r}{suggest(step, list(elements))}"
            )
        done.append(step)
        i += 1
        nxt = steps[i] if i < len(steps) else None
        is_index = nxt is not None and (isinstance(nxt, int) or nxt in (APPEND, LAST, STAR))
        if is_index:
            if not element.repeats:
                raise ValueError(
                    f"{resource_type}.{'.'.join(done)} does not repeat: remove the index"
                )
            i += 1
        elif element.repeats and nxt is not None:
            raise ValueError(
                f"{resource_type}.{'.'.join(done)} repeats: write {step}[0], {step}[+] "
                f"or {step}[*] before .{nxt}"
            )
        cls = element.child


VALIDATION_MODES = ("fast", "full", "both")
FAST_CHECK_WRONG = "the fast FHIR check passed a resource fhir.resources refuses"


def validate(
    resource_type: str, resource: dict[str, Any], model: Any, mode: str = "fast"
) -> None:
    """Raise Problem with the validation messages when ``resource`` is not valid FHIR.

    ``mode``: ``fast`` asks ``fhir_check.vouch`` and falls back to fhir.resources when it
    cannot vouch; ``full`` always uses fhir.resources; ``both`` runs both and fails if the
    fast check vouched for a resource fhir.resources refuses (fixtures and tests).
    """
    if mode == "full":
        _validate_fully(resource_type, resource, model)
        return
    vouched = fhir_check.vouch(model, resource)
    if mode == "fast":
        if not vouched:
            _validate_fully(resource_type, resource, model)
        return
    try:
        _validate_fully(resource_type, resource, model)
    except Problem as exc:
        if vouched:
            raise Problem(
                f"{FAST_CHECK_WRONG} ({exc})"
            ) from None
        raise


def prepare(model: Any) -> None:
    """Build the fast check's table for ``model`` now (at load) rather than on first use."""
    fhir_check.shape(model)


def _validate_fully(resource_type: str, resource: dict[str, Any], model: Any) -> None:
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False)[:10]:
            loc = _loc(err.get("loc", ()))
            msg = str(err.get("msg", "invalid"))
            lines.append(f"{loc}: {msg}" if loc else msg)
        more = exc.error_count() - len(lines)
        if more > 0:
            lines.append(f"... and {more} more")
        raise Problem(f"not a valid FHIR {resource_type}: " + "; ".join(lines)) from None
    except (TypeError, ValueError) as exc:
        raise Problem(f"not a valid FHIR {resource_type}: {type(exc).__name__}") from None


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}
