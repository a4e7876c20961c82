"""The configuration file: TOML parsed once into frozen, validated models.

Unknown keys are errors. An invalid file fails with one line per problem, each naming the
file, the line and the dotted key path::

    config.toml:41 channels[2].destinations[0].url: Input should be a valid URL

Sources and destinations are discriminated unions on ``type``: adding an adapter is its
config model (in its own module, with a ``build`` method) plus one line in the union below.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, model_validator

from adapters.einvoice import EinvoiceDestinationConfig
from adapters.fhir import FhirDestinationConfig
from adapters.http import HttpDestinationConfig, HttpSourceConfig
from adapters.mllp import MllpDestinationConfig, MllpSourceConfig
from adapters.nhsa import NhsaDestinationConfig
from adapters.payments.source import PaymentNotifyConfig
from adapters.soap import SoapDestinationConfig
from engine.errors import ConfigError
from engine.internal import InternalSourceConfig
from engine.retry import RetryPolicy
from engine.settings import FilterConfig, FilterRule, HostPort, Model, Secret, is_data_path
from queues.rabbitmq.config import RabbitQueueConfig

SourceConfig = Annotated[
    MllpSourceConfig | HttpSourceConfig | PaymentNotifyConfig | InternalSourceConfig,
    Field(discriminator="type"),
]
DestinationConfig = Annotated[
    MllpDestinationConfig | HttpDestinationConfig | FhirDestinationConfig
    | EinvoiceDestinationConfig
    | NhsaDestinationConfig
    | SoapDestinationConfig,
    Field(discriminator="type"),
]


class StoreConfig(Model):
    """The embedded database holding messages, their history and (by default) the queues."""

    path: str = "data/hisbridge.db"
    synchronous: Literal["FULL", "EXTRA", "NORMAL"] = "FULL"
    max_batch: int = Field(default=512, ge=1, le=10_000)
    # Delete finished messages and their history after this many days (0 keeps them).
    retention_days: float = Field(default=0, ge=0)


class SqliteQueueConfig(Model):
    backend: Literal["sqlite"] = "sqlite"
    max_depth: int = Field(default=1_000_000, ge=1)


QueueConfig = Annotated[SqliteQueueConfig | RabbitQueueConfig, Field(discriminator="backend")]


class AdminConfig(Model):
    """The admin API. Without ``token`` a random one is written to ``<store dir>/admin.token``."""

    enabled: bool = True
    listen: HostPort = "127.0.0.1:8080"
    token: Secret | None = None


class LoggingConfig(Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class ChannelConfig(Model):
    """A source, an optional filter and mapping, and the destinations to fan out to.

    Attributes:
        dedup: fields whose values make the dedup key (HL7 paths or ``header:Name``);
            ``[]`` disables dedup. Default: ``MSH-4`` + ``MSH-10`` for HL7, the
            ``Idempotency-Key`` header otherwise.
        dedup_window_days: how long a key is held. A message whose key was first seen
            longer ago is new, so a sender's control-id counter that wraps around (999999
            → 1) keeps flowing; resends come within minutes or hours.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    enabled: bool = True
    source: SourceConfig
    filter: FilterConfig | None = None
    mapping: str | None = None
    dedup: list[str] | None = None
    dedup_window_days: float = Field(default=7.0, gt=0)
    prefetch: int = Field(default=200, ge=1, le=10_000)
    destinations: list[DestinationConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_destinations(self) -> ChannelConfig:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique in a channel: {', '.join(dupes)}")
        return self


class Config(Model):
    store: StoreConfig = StoreConfig()
    queue: QueueConfig = SqliteQueueConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    retry: RetryPolicy = RetryPolicy()
    mappings_dir: str = "mappings"
    mapping_workers: int = Field(default=0, ge=0, le=64)
    channels: list[ChannelConfig] = Field(default_factory=list)

    _base_dir: Path = PrivateAttr(default=Path("."))
    _file: str = PrivateAttr(default="<config>")

    @model_validator(mode="after")
    def _unique_channels(self) -> Config:
        names = [c.name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique: {', '.join(dupes)}")
        listens = [
            c.source.listen for c in self.channels
            if c.enabled and isinstance(c.source, MllpSourceConfig)
            and not c.source.listen.endswith(":0")
        ]
        dupes = sorted({x for x in listens if listens.count(x) > 1})
        if dupes:
            raise ValueError(f"two MLLP sources listen on {', '.join(dupes)}")
        for ch in self.channels:
            for dest in ch.destinations:
                if dest.response_to is not None and dest.response_to not in names:
                    raise ValueError(
                        f"channel {ch.name} destination {dest.name}: response_to names no "
                        f"channel ({dest.response_to})"
                    )
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def file(self) -> str:
        return self._file

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(path)
        return p if p.is_absolute() else self._base_dir / p


def load_config(path: str | Path) -> Config:
    """Read and validate a config file.

    Raises:
        ConfigError: one line per problem (``file:line dotted.path: message``) in its text;
            the individual problems are in ``.problems``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(path)) from None
    return parse_config(text, file=str(path), base_dir=path.resolve().parent)


def parse_config(text: str, *, file: str = "<config>", base_dir: Path | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(
            f"invalid TOML: {exc}", file=file, line=int(m.group(1)) if m else None
        ) from None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, text, file) from None
    config._base_dir = base_dir or Path(".")
    config._file = file
    if base_dir is not None:
        _anchor_secret_files(config, base_dir)
    return config


def _anchor_secret_files(node: object, base_dir: Path) -> None:
    """Make relative ``file:`` secret references and ``DataPath`` fields relative to the
    config file's directory (like the store path), not to wherever the process started."""
    if isinstance(node, Secret):
        if node.reference.startswith("file:"):
            path = Path(node.reference.removeprefix("file:"))
            if not path.is_absolute():
                node.reference = f"file:{base_dir / path}"
    elif isinstance(node, BaseModel):
        for name, info in type(node).model_fields.items():
            value = getattr(node, name)
            if isinstance(value, str) and is_data_path(info) and value != ":memory:":
                if not Path(value).is_absolute():
                    # Frozen models: set once, right after validation, before anyone reads it.
                    object.__setattr__(node, name, str(base_dir / value))
                continue
            _anchor_secret_files(value, base_dir)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _anchor_secret_files(item, base_dir)
    elif isinstance(node, dict):
        for item in node.values():
            _anchor_secret_files(item, base_dir)


def validation_error(exc: ValidationError, text: str, file: str) -> ConfigError:
    """Turn pydantic's errors into one ConfigError listing every problem with its line."""
    locator = TomlLocator(text)
    problems = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        message = err["msg"]
        if err["type"] == "value_error":
            message = message.removeprefix("Value error, ")  # our validators' own words
        elif err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "union_tag_invalid":
            message = f"unknown type {err.get('input', {}).get('type', '')!r}" if isinstance(
                err.get("input"), dict) else message
            expected = err.get("ctx", {}).get("expected_tags")
            if expected:
                message += f" (expected one of {expected})"
        problems.append(
            ConfigError(message, file=file, line=locator.line_of(loc), path=format_path(loc))
        )
    # Each problem carries its own file:line and path; the combined error is their lines.
    combined = ConfigError("\n".join(str(p) for p in problems), line=problems[0].line)
    combined.problems = problems  # type: ignore[attr-defined]
    return combined


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the union tags pydantic inserts (``source.mllp.listen`` → ``source.listen``)."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and i > 0 and (
            (loc[i - 1] in ("source", "queue"))
            or (isinstance(loc[i - 1], int) and i > 1 and loc[i - 2] == "destinations")
        ) and part not in _FIELD_NAMES:
            continue
        if isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        out.append(part)
    return tuple(out)


_FIELD_NAMES = {"type", "name", "listen", "url", "host", "port", "backend"}


def format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class TomlLocator:
    """Finds the line where a dotted key path is set, for error messages.

    tomllib keeps no positions, so this walks the text the way a reader would: table headers
    (``[a.b]``, ``[[a.b]]`` counting array entries) set the current path, ``key = value`` lines
    add a key, and keys inside an inline table on the same line are indexed too.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r'^\s*("[^"]+"|[A-Za-z0-9_.-]+)\s*=')
    _INLINE_KEY = re.compile(r'[{,]\s*("[^"]+"|[A-Za-z0-9_-]+)\s*=')

    def __init__(self, text: str) -> None:
        self.entries: list[tuple[tuple[Any, ...], int]] = []
        counts: dict[tuple[Any, ...], int] = {}
        current: tuple[Any, ...] = ()
        for lineno, line in enumerate(text.splitlines(), start=1):
            h = self._HEADER.match(line)
            if h:
                keys = [k.strip().strip('"') for k in h.group(2).split(".")]
                path: list[Any] = []
                for depth, key in enumerate(keys):
                    path.append(key)
                    if depth < len(keys) - 1:
                        # An array of tables on the way: attach to its latest entry.
                        n = counts.get(tuple(path))
                        if n is not None:
                            path.append(n)
                if h.group(1) == "[[":
                    n = counts.get(tuple(path), -1) + 1
                    counts[tuple(path)] = n
                    path.append(n)
                current = tuple(path)
                self.entries.append((current, lineno))
                continue
            k = self._KEY.match(line)
            if k:
                key_path = current + tuple(p.strip('"') for p in k.group(1).split("."))
                self.entries.append((key_path, lineno))
                for inner in self._INLINE_KEY.finditer(line):
                    self.entries.append(((*key_path, inner.group(1).strip('"')), lineno))

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        best, best_len = None, -1
        for path, lineno in self.entries:
            n = 0
            for a, b in zip(path, loc, strict=False):
                if a != b:
                    break
                n += 1
            if n == len(path) and n > best_len:
                best, best_len = lineno, n
        return best


__all__ = [
    "AdminConfig",
    "ChannelConfig",
    "Config",
    "DestinationConfig",
    "FilterConfig",
    "FilterRule",
    "HostPort",
    "Secret",
    "SourceConfig",
    "StoreConfig",
    "load_config",
    "parse_config",
]
