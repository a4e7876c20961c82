"""The configuration reference stays true to the config models.

An integrator configures hisbridge from README.md (and, for the adapters with many options,
from the page the README points to). These tests walk the pydantic models that
``config.toml`` is parsed into and fail when a model has a field its page does not name, when
a source or destination type has no row in the README, or when the README names a key that
no model has: add the option to the docs in the same change as the field.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from adapters.einvoice import EinvoiceDestinationConfig
from adapters.nhsa import NhsaDestinationConfig
from adapters.payments.source import PaymentNotifyConfig
from adapters.soap import SoapDestinationConfig
from engine.config import Config, DestinationConfig, SourceConfig
from engine.settings import DestinationSettings
from queues.rabbitmq.config import RabbitQueueConfig

ROOT = Path(__file__).resolve().parents[2]
README = "README.md"

# Models whose options are documented on their own page (the README's row points there);
# models nested in them are documented on the same page.
PAGES: dict[type[BaseModel], str] = {
    RabbitQueueConfig: "docs/operations.md",
    NhsaDestinationConfig: "docs/insurance.md",
    SoapDestinationConfig: "docs/insurance.md",
    EinvoiceDestinationConfig: "docs/einvoice.md",
    PaymentNotifyConfig: "docs/payments.md",
}


def _code(page: str) -> str:
    """The page's inline code spans and TOML blocks: where option names are written."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml[^\n]*\n(.*?)^```", text, re.M | re.S)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return "\n".join(blocks + re.findall(r"`([^`\n]+)`", prose))


def _members(annotation: object) -> list[type[BaseModel]]:
    """The config models an annotation can hold (through unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _members(arg)
    return found


def _documented_fields() -> dict[tuple[str, str], set[str]]:
    """(page, model name) → the fields that page must name, for every model under Config."""
    out: dict[tuple[str, str], set[str]] = {}
    todo: list[tuple[type[BaseModel], str]] = [(Config, README)]
    seen: set[type[BaseModel]] = set()
    while todo:
        model, page = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        page = PAGES.get(model, page)
        fields = dict(model.model_fields)
        if issubclass(model, DestinationSettings) and model is not DestinationSettings:
            # The settings every destination shares are documented once, in the README.
            fields = {k: v for k, v in fields.items() if k not in DestinationSettings.model_fields}
            todo.append((DestinationSettings, README))
        out[(page, model.__name__)] = set(fields)
        for info in fields.values():
            todo += [(m, page) for m in _members(info.annotation)]
    return out


def _named(field: str, code: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(field)}(?![\w-])", code) is not None


@pytest.mark.parametrize(("page", "model"), sorted(_documented_fields()))
def test_every_config_field_is_documented(page: str, model: str) -> None:
    code = _code(page)
    missing = sorted(f for f in _documented_fields()[(page, model)] if not _named(f, code))
    assert not missing, f"{page} does not name {model} option(s) {', '.join(missing)}"


def _union(annotation: object) -> dict[str, type[BaseModel]]:
    """``type`` value → config model, for a discriminated union of sources or destinations."""
    (union, *_) = typing.get_args(annotation)
    assert isinstance(union, types.UnionType) or typing.get_origin(union) is typing.Union
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m
            for m in typing.get_args(union)}


def _table(heading: str) -> dict[str, str]:
    """The ``| `type` | options |`` rows of the README's table under ``### heading``."""
    text = (ROOT / README).read_text(encoding="utf-8")
    section = text.split(f"\n### {heading}\n", 1)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^\| `([a-z_]+)` \| (.*) \|$", section, re.M))


def _options(cell: str) -> set[str]:
    """The option names a table cell lists: code spans outside parentheses."""
    depth, outside = 0, []
    for ch in cell:
        depth += ch == "("
        if depth == 0:
            outside.append(ch)
        depth -= ch == ")" and depth > 0
    return {name for name in re.findall(r"`([^`]+)`", "".join(outside))
            if re.fullmatch(r"[a-z_]+", name)}


@pytest.mark.parametrize(("heading", "union"), [("Sources", SourceConfig),
                                                ("Destinations", DestinationConfig)])
def test_the_readme_tables_match_the_adapters(heading: str, union: object) -> None:
    models = _union(union)
    rows = _table(heading)
    assert sorted(rows) == sorted(models), f"README {heading} table rows vs config types"
    for name, cell in rows.items():
        unknown = _options(cell) - set(models[name].model_fields)
        assert not unknown, f"README {heading} {name}: no such option(s) {sorted(unknown)}"


def test_the_readme_top_level_keys_exist() -> None:
    text = (ROOT / README).read_text(encoding="utf-8")
    top = text.split("| key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    for keys in re.findall(r"^\| (`[^|]+`) \|", top, re.M):
        for key in re.findall(r"`([a-z_.]+)(?:\.\*)?`", keys):
            models: list[type[BaseModel]] = [Config]
            for part in key.split("."):
                assert any(part in m.model_fields for m in models), f"README names {key}"
                models = [t for m in models if part in m.model_fields
                          for t in _members(m.model_fields[part].annotation)]
