"""The transactions this adapter knows: code, input and output models, and what kind of call
each one is.

``kind`` decides what a lost answer means:

- ``plain``: reads and uploads that may be sent again (a timeout is a transient error);
- ``settle``: 2207 / 2304 move money; a lost answer is resolved by querying, never resent;
- ``cancel``: 2208 / 2305 move money back; resolved the same way.

Transactions not listed here can still be sent (``input`` passes through unvalidated), as
``plain`` unless the destination's config names them settlement-type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from adapters.nhsa import fees, person, reconciliation, session_models, settlement, visits
from adapters.nhsa.fields import Node

Kind = Literal["plain", "settle", "cancel"]


@dataclass(frozen=True, slots=True)
class Transaction:
    infno: str
    name: str
    input: type[Node]
    output: type[Node] | None
    kind: Kind = "plain"


_ALL = (
    Transaction("9001", "sign in", session_models.SignInInput, session_models.SignInOutput),
    Transaction("9002", "sign out", session_models.SignOutInput, None),
    Transaction("1101", "person info", person.PersonQueryInput, person.PersonInfo),
    Transaction(
        "2201", "outpatient registration",
        visits.OutpatientRegistrationInput, visits.VisitOutput,
    ),
    Transaction(
        "2202", "outpatient registration cancel", visits.RegistrationCancelInput, None
    ),
    Transaction("2203", "outpatient visit info", visits.OutpatientVisitInput, None),
    Transaction("2204", "outpatient fee upload", fees.FeeUploadInput, fees.FeeUploadOutput),
    Transaction("2205", "outpatient fee cancel", fees.OutpatientFeeCancelInput, None),
    Transaction(
        "2206", "outpatient pre-settlement",
        settlement.OutpatientPreSettleInput, settlement.SettlementOutput,
    ),
    Transaction(
        "2207", "outpatient settlement",
        settlement.OutpatientSettleInput, settlement.SettlementOutput, "settle",
    ),
    Transaction(
        "2208", "outpatient settlement cancel",
        settlement.SettlementCancelInput, settlement.SettlementOutput, "cancel",
    ),
    Transaction("2401", "admission", visits.AdmissionInput, visits.VisitOutput),
    Transaction("2402", "discharge", visits.DischargeInput, None),
    Transaction("2301", "inpatient fee upload", fees.FeeUploadInput, fees.FeeUploadOutput),
    Transaction("2302", "inpatient fee cancel", fees.InpatientFeeCancelInput, None),
    Transaction(
        "2303", "inpatient pre-settlement",
        settlement.InpatientPreSettleInput, settlement.SettlementOutput,
    ),
    Transaction(
        "2304", "inpatient settlement",
        settlement.InpatientSettleInput, settlement.SettlementOutput, "settle",
    ),
    Transaction(
        "2305", "inpatient settlement cancel",
        settlement.SettlementCancelInput, settlement.SettlementOutput, "cancel",
    ),
    Transaction(
        "3201", "reconciliation totals",
        reconciliation.ReconciliationInput, reconciliation.ReconciliationOutput,
    ),
    Transaction(
        "5203", "settlement query",
        settlement.SettlementQueryInput, settlement.SettlementOutput,
    ),
    Transaction("2601", "reversal", settlement.ReversalInput, None),
)

TRANSACTIONS: dict[str, Transaction] = {t.infno: t for t in _ALL}


def lookup(infno: str) -> Transaction | None:
    return TRANSACTIONS.get(infno)
