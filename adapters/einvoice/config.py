"""Settings of one e-invoice platform: where it is, how to sign, and how its codes read.

Platforms built on the same design differ in operation names, result codes and whether
they sign their answers, so each of those is configuration, with defaults matching our
simulator (``simulators/einvoice``) and the Bosssoft-style platform it imitates.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from adapters.einvoice.envelope import SignatureCheck
from engine.settings import Model, Secret

OperationName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")]

OperationKind = Literal[
    "outpatient", "inpatient", "registration", "write_off", "state", "by_bus_no", "picture"
]
"""What a destination can be asked to do (config ``operation`` or the
``einvoice-operation`` header)."""

ISSUE_KINDS: tuple[OperationKind, ...] = ("outpatient", "inpatient", "registration")


class Operations(Model):
    """The platform's operation names (the last segment of ``POST <url>/<operation>``).

    Attributes:
        by_bus_no: finds the invoice of a business number; the idempotency check before an
            issue. ``None`` when the platform has no such query: then only the platform's
            own duplicate refusal (``results.duplicate_bus_no``) protects against doubles.
        picture: returns a link to the invoice's file. Not in the public client code we
            studied; our simulator's name, configurable for the real one.
    """

    outpatient: OperationName = "invoiceEBillOutpatient"
    inpatient: OperationName = "invEBillHospitalized"
    registration: OperationName = "invEBillRegistration"
    write_off: OperationName = "writeOffEBill"
    state: OperationName = "getEBillStatesByBillInfo"
    by_bus_no: OperationName | None = "getEBillByBusNo"
    picture: OperationName = "getEBillPictureUrl"


class ResultCodes(Model):
    """How to read the platform's non-success ``result`` codes.

    Attributes:
        transient: codes meaning "try again later" (busy, maintenance); every other code
            is permanent for that request.
        duplicate_bus_no: the platform refuses an issue because ``busNo`` already has an
            invoice; the adapter then fetches that invoice and reports it as the result.
        not_found: ``by_bus_no`` found no invoice (so issuing is safe).
        already_written_off: a write-off of a voided invoice; the adapter reports the
            existing red note instead of failing.
    """

    transient: tuple[str, ...] = ("E9999",)
    duplicate_bus_no: tuple[str, ...] = ("E2001",)
    not_found: tuple[str, ...] = ("E2004",)
    already_written_off: tuple[str, ...] = ("E2003",)


class EinvoicePlatformSettings(Model):
    """One platform account.

    Attributes:
        url: base URL; operations are posted to ``<url>/<operation>``.
        appid: the hospital's application id on the platform.
        key: the shared signing secret, by reference (``${ENV}`` or ``file:/path``).
        timeout: seconds for a whole call; after it an issue or write-off is in doubt.
        connect_timeout: seconds to connect (a call that never connected is not in doubt).
        response_signature: verify the platform's answers: ``required``, ``if_present``,
            ``off`` (see ``adapters.einvoice.envelope``).
        lookup_before_issue: when to ask ``by_bus_no`` before issuing: ``always`` (survives
            restarts; one extra call per invoice), ``after_doubt`` (only for a business
            number whose previous attempt was in doubt, remembered in memory), ``never``.
        check_state_before_write_off: query the state first, so a repeated write-off
            reports the existing red note without calling ``writeOffEBill``.
        max_response_bytes: larger answers are refused (a QR code image is a few KB).
    """

    url: str
    appid: str = Field(min_length=1, max_length=64)
    key: Secret
    version: str = "1.0"
    timeout: float = Field(default=10.0, gt=0, le=300)
    connect_timeout: float = Field(default=3.0, gt=0, le=60)
    response_signature: SignatureCheck = "required"
    lookup_before_issue: Literal["always", "after_doubt", "never"] = "always"
    check_state_before_write_off: bool = True
    operations: Operations = Operations()
    results: ResultCodes = ResultCodes()
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=256)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")
