"""Config field types and the settings every source and destination share.

Adapters define their own config models (in their own modules) from these pieces; the
top-level file model and the unions of adapters live in ``engine.config``.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainSerializer,
    model_validator,
)
from pydantic_core import core_schema

from engine.errors import ConfigError
from engine.retry import RetryPolicy

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class Secret:
    """A secret given by reference: ``"${ENV_NAME}"`` or ``"file:/path/to/secret"``.

    The value is resolved when first used, so ``hisbridge check`` can validate a config on a
    machine without the secrets, and it never appears in reprs, logs or error messages.
    Literal secrets are refused: they would end up in the repository.
    """

    __slots__ = ("_value", "reference")

    def __init__(self, reference: str) -> None:
        self.reference = reference
        self._value: str | None = None

    def get(self) -> str:
        if self._value is None:
            m = _ENV_REF.match(self.reference)
            if m:
                value = os.environ.get(m.group(1))
                if value is None:
                    raise ConfigError(f"environment variable {m.group(1)} is not set")
                self._value = value
            else:
                path = Path(self.reference.removeprefix("file:"))
                try:
                    self._value = path.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
        return self._value

    def available(self) -> bool:
        try:
            self.get()
        except ConfigError:
            return False
        return True

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(value: Any) -> Secret:
            if isinstance(value, Secret):
                return value
            if not isinstance(value, str):
                raise ValueError("a secret must be a string reference")
            if _ENV_REF.match(value) or value.startswith("file:"):
                return cls(value)
            raise ValueError(
                'secrets are given by reference: "${ENV_NAME}" or "file:/path" (never inline)'
            )

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: s.reference),
        )


def _parse_host_port(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return value


HostPort = Annotated[str, BeforeValidator(_parse_host_port), PlainSerializer(str)]
"""A ``host:port`` string such as ``127.0.0.1:2575`` (port 0 picks a free port)."""


class _RelativeToConfig:
    """Marks a path field that the loader anchors at the config file's directory."""


DataPath = Annotated[str, _RelativeToConfig()]
"""A file path in config; relative paths are relative to the config file, like the store."""


def is_data_path(info: Any) -> bool:
    """Whether a pydantic field is a ``DataPath`` (also inside ``DataPath | None``)."""
    if any(isinstance(m, _RelativeToConfig) for m in info.metadata):
        return True
    return any(
        any(isinstance(m, _RelativeToConfig) for m in getattr(arg, "__metadata__", ()))
        for arg in typing.get_args(info.annotation)
    )


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Model(BaseModel):
    """Frozen, strict config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryOverrides(Model):
    """Per-destination changes to the default retry policy (unset fields inherit)."""

    max_attempts: int | None = Field(default=None, ge=1)
    initial_delay: float | None = Field(default=None, ge=0)
    max_delay: float | None = Field(default=None, ge=0)
    multiplier: float | None = Field(default=None, ge=1.0)
    jitter: float | None = Field(default=None, ge=0, le=1)
    max_age: float | None = Field(default=None, ge=0)

    def apply(self, base: RetryPolicy) -> RetryPolicy:
        return base.merged(**self.model_dump())


class FilterRule(Model):
    """A field condition: the value at ``path`` (HL7 ``PV1-2``, JSON ``a.b``) must match."""

    path: str
    equals: list[str] | None = None
    not_equals: list[str] | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> FilterRule:
        if sum(x is not None for x in (self.equals, self.not_equals, self.exists)) != 1:
            raise ValueError("give exactly one of equals, not_equals, exists")
        return self


class FilterConfig(Model):
    """Messages that do not match are stored as ``filtered`` and go nowhere."""

    message_types: list[str] = []
    where: list[FilterRule] = []


class DestinationSettings(Model):
    """What every destination has, whatever its protocol.

    Attributes:
        name: unique within its channel; the queue is ``dest:<channel>/<name>``.
        mapping: a mapping applied for this destination only, after the channel's mapping.
        ordered: deliver one at a time in arrival order; a failing message holds the rest.
        concurrency: deliveries in flight at once (ignored when ordered).
        retry: changes to the default retry policy.
        filter: only messages matching it go to this destination.
        response_to: a channel that receives the peer's answer as a new message (a settlement
            result becomes a message for the HIS, a pre-settlement answer the settle request).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    mapping: str | None = None
    ordered: bool = False
    concurrency: int = Field(default=8, ge=1, le=1000)
    retry: RetryOverrides = RetryOverrides()
    filter: FilterConfig | None = None
    response_to: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
