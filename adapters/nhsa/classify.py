"""What an answer means: ``infcode`` and ``err_msg`` turned into a verdict.

Declared here, overridable per destination in config. The national platform answers
``infcode = "0"`` for success and ``"-1"`` for every business refusal; the refusal is
permanent (the same request will be refused again) unless its ``err_msg`` says otherwise,
e.g. that the operator must sign in again, which the adapter does once and resends.

Verdicts:

- ``success``: return the output.
- ``permanent``: ``PermanentError`` carrying ``err_msg`` (dead-letter).
- ``transient``: ``TransientError`` (retry later; the platform asked to come back).
- ``resign``: renew the 9001 sign-in and resend once, then permanent if it persists.
- ``resend``: the call was refused before processing for a reason a fresh ``msgid`` cures
  (the platform already saw that msgid: a restart within the same second); resend once.
"""

from __future__ import annotations

from typing import Literal

from engine.settings import Model

Verdict = Literal["success", "permanent", "transient", "resign", "resend"]

DEFAULT_INFCODES: dict[str, Verdict] = {"0": "success", "-1": "permanent"}


class ErrMsgRule(Model):
    """A refusal whose ``err_msg`` contains ``contains`` gets ``verdict``."""

    contains: str
    verdict: Verdict


DEFAULT_RULES: tuple[ErrMsgRule, ...] = (
    ErrMsgRule(contains="重新签到", verdict="resign"),
    ErrMsgRule(contains="签到编号", verdict="resign"),
    ErrMsgRule(contains="报文ID重复", verdict="resend"),
    ErrMsgRule(contains="系统繁忙", verdict="transient"),
)


class Classifier:
    """Applies the infcode table and the err_msg rules (rules first, for refusals only)."""

    def __init__(
        self,
        infcodes: dict[str, Verdict] | None = None,
        rules: tuple[ErrMsgRule, ...] | list[ErrMsgRule] | None = None,
        default: Verdict = "permanent",
    ) -> None:
        self.infcodes = {**DEFAULT_INFCODES, **(infcodes or {})}
        self.rules = tuple(rules) if rules is not None else DEFAULT_RULES
        self.default = default

    def verdict(self, infcode: str, err_msg: str) -> Verdict:
        table = self.infcodes.get(infcode)
        if table == "success":
            return "success"
        for rule in self.rules:
            if rule.contains in err_msg:
                return rule.verdict
        return table or self.default
