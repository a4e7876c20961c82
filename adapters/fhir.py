"""FHIR R4 destination: create, update and transaction bundles over REST.

A resource without an id is created (``POST [base]/[type]``), one with an id is updated
(``PUT [base]/[type]/[id]``), and a Bundle of type ``transaction`` or ``batch`` is posted to
the base. An error answer carrying an ``OperationOutcome`` is reported with its diagnostics;
for a batch, any failed entry fails the delivery with the entries' reasons.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from adapters.fhir_transactions import TransactionGrouper, answer_entries, with_locations
from adapters.http import DEFAULT_MAX_ANSWER_BYTES, HttpSender, OutcomeName
from engine.contracts import Result
from engine.errors import PermanentError
from engine.settings import DestinationSettings, Secret
from queues.contract import Envelope

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class FhirDestinationConfig(DestinationSettings):
    type: Literal["fhir"]
    base_url: str = Field(pattern=r"^https?://")
    headers: dict[str, str] = Field(default_factory=dict)
    token: Secret | None = None
    timeout: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=5.0, gt=0)
    outcomes: dict[str, OutcomeName] = Field(default_factory=dict)
    max_answer_bytes: int = Field(default=DEFAULT_MAX_ANSWER_BYTES, ge=1024)
    #: Up to this many transaction Bundles waiting at once go out as one transaction
    #: (see adapters.fhir_transactions); 1 sends each message in its own request.
    transaction_group: int = Field(default=1, ge=1, le=200)
    #: Grouped requests start at most once per this many seconds, unless a group is full.
    transaction_interval: float = Field(default=0.002, ge=0, le=1)

    @model_validator(mode="after")
    def _grouping_needs_concurrency(self) -> FhirDestinationConfig:
        # An ordered destination has one delivery in flight: there is nothing to group, and
        # a setting that silently does nothing misleads whoever reads the file.
        if self.ordered and self.transaction_group > 1:
            raise ValueError("transaction_group needs concurrent deliveries; an ordered "
                             "destination sends one message per request")
        return self

    def build(self, channel: str) -> FhirDestination:
        return FhirDestination(self)


class FhirDestination:
    def __init__(self, config: FhirDestinationConfig) -> None:
        self.config = config
        self.base = config.base_url.rstrip("/")
        self.sender = HttpSender(
            timeout=config.timeout, connect_timeout=config.connect_timeout,
            outcomes=config.outcomes,
            headers={"Accept": "application/fhir+json", **config.headers},
            token=config.token, concurrency=config.concurrency,
            max_answer_bytes=config.max_answer_bytes,
        )
        self.grouper = TransactionGrouper(
            self._post_merged, self._send_one, self.sender.outcome_for, self._raise_for,
            max_messages=config.transaction_group,
            # The same number of messages in flight as without grouping.
            max_requests=-(-config.concurrency // config.transaction_group),
            interval=config.transaction_interval,
        )

    async def start(self) -> None:
        await self.sender.start()

    async def close(self) -> None:
        await self.grouper.close()
        await self.sender.close()

    async def send(self, envelope: Envelope) -> Result:
        try:
            resource = orjson.loads(envelope.body)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"not FHIR JSON: {exc}") from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise PermanentError("not a FHIR resource: resourceType is missing")
        rtype = resource["resourceType"]
        rid = resource.get("id")
        # Both go into the URL: a type or id like "../Patient/x" would write elsewhere.
        if not _RESOURCE_TYPE.fullmatch(rtype):
            raise PermanentError(f"resourceType {rtype[:40]!r} is not a FHIR resource name")
        if rid not in (None, "") and not (isinstance(rid, str) and _ID.fullmatch(rid)
                                    and rid.strip(".")):
            raise PermanentError(f"{rtype}.id {str(rid)[:80]!r} is not a FHIR id "
                                 "(1-64 of A-Z a-z 0-9 - .)")
        if rtype == "Bundle" and resource.get("type") == "transaction":
            return await self.grouper.send(envelope, resource)
        return await self._send_one(envelope, resource)

    async def _send_one(self, envelope: Envelope, resource: dict[str, Any]) -> Result:
        rtype, rid = resource["resourceType"], resource.get("id")
        if rtype == "Bundle" and resource.get("type") in ("transaction", "batch"):
            method, url = "POST", self.base
        elif rid:
            method, url = "PUT", f"{self.base}/{rtype}/{rid}"
        else:
            method, url = "POST", f"{self.base}/{rtype}"
        status, body, headers = await self.sender.request(
            method, url, envelope.body, "fhir+json", {"X-Message-Id": envelope.message_id}
        )
        self._raise_for(status, body, headers, f"{method} {url}")
        if body is None:
            # Accepted, but the answer is too long to read. A batch's entries may each have
            # failed: an operator must look, so the message is dead-lettered saying why.
            if rtype == "Bundle" and resource.get("type") == "batch":
                raise PermanentError(
                    f"{method} {url}: batch answer over {self.config.max_answer_bytes} bytes;"
                    " its entries cannot be checked")
            return Result(detail=f"HTTP {status} (answer over {self.config.max_answer_bytes}"
                          " bytes, not kept)", content_type="fhir+json")
        if rtype == "Bundle" and resource.get("type") == "batch":
            _check_batch_response(body)
        detail = f"HTTP {status} {headers.get('Location', '')}".strip()
        if rtype == "Bundle":
            detail = with_locations(detail, answer_entries(body) or [])
        return Result(detail=detail, response=body or None, content_type="fhir+json")

    async def _post_merged(
        self, body: bytes, message_ids: list[str]
    ) -> tuple[int, bytes | None, dict[str, str]]:
        return await self.sender.request(
            "POST", self.base, body, "fhir+json", {"X-Message-Id": ", ".join(message_ids)})

    def _raise_for(self, status: int, body: bytes | None, headers: dict[str, str],
                   what: str | None = None) -> None:
        """The error for a refused request, with an OperationOutcome's issues as its text."""
        if self.sender.outcome_for(status) != "ack" and body is not None:
            reason = operation_outcome_text(body)
            if reason:
                body = reason.encode()
        self.sender.classify(status, body, headers, what or f"POST {self.base}")


def operation_outcome_text(body: bytes) -> str:
    """The issues of an OperationOutcome as one line, or '' if the body is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(doc, dict) or doc.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    issues = doc.get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (
            details.get("text") if isinstance(details, dict) else "") or ""
        parts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}".strip())
    return "OperationOutcome: " + "; ".join(parts) if parts else "OperationOutcome"


def _check_batch_response(body: bytes) -> None:
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    entries = doc.get("entry") if isinstance(doc, dict) else None
    failures = []
    for n, entry in enumerate(entries if isinstance(entries, list) else []):
        response = entry.get("response") if isinstance(entry, dict) else None
        status = str(response.get("status", "")) if isinstance(response, dict) else ""
        if status[:1] in ("4", "5"):
            failures.append(f"entry {n}: {status[:40]}")
    if failures:
        raise PermanentError("batch entries failed: " + ", ".join(failures))
