"""The check behind every "no patient data in logs" test.

A test runs real traffic with ``caplog`` at DEBUG, collects the patient values it used (names,
identity-card, insurance-card and phone numbers, addresses, payers' names and accounts) and
calls ``assert_no_patient_data(caplog.records, values)``. Every record the engine emits at
INFO or above is searched as an operator could read it: the message, the traceback of an
attached exception (with its chained causes), ``exc_text``, ``stack_info``, any ``extra``
field, and the text and JSON lines the configured formatters would write. Records of the
simulators and of the test's own peers are left out: they are the other side, not us.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable

from engine.logsetup import JsonFormatter

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_OTHER_SIDE = ("simulators", "hisbridge.simulators", "tests")
_TEXT = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
_JSON = JsonFormatter()


def texts_of(record: logging.LogRecord) -> list[str]:
    """Everything of ``record`` that could reach an operator's screen or a log file."""
    texts = [record.getMessage(), _TEXT.format(record), _JSON.format(record)]
    if record.exc_info and record.exc_info[1] is not None:
        texts.append("".join(traceback.format_exception(record.exc_info[1])))
    texts += [record.exc_text or "", record.stack_info or ""]
    for name, value in vars(record).items():
        if name not in _STANDARD:
            texts += [f"{name}={value!s}", f"{name}={value!r}"]
    return texts


def _forms(value: str) -> set[str]:
    """The value, and how it reads inside the repr of bytes (``\\xe5\\xbc\\xa0`` for 张)."""
    return {value, repr(value.encode("utf-8"))[2:-1]}


def loud_records(records: Iterable[logging.LogRecord]) -> list[logging.LogRecord]:
    """The engine's records at INFO or above."""
    return [r for r in records
            if r.levelno >= logging.INFO and not r.name.startswith(_OTHER_SIDE)]


def assert_no_patient_data(records: Iterable[logging.LogRecord], values: Iterable[str],
                           *, expect_some: bool = True) -> list[logging.LogRecord]:
    """Fail naming the value and the record if any engine record at INFO+ contains one of
    ``values``; returns the records checked."""
    secrets = sorted({form for v in values if v and v.strip() for form in _forms(v)})
    assert secrets, "the test collected no patient values to look for"
    loud = loud_records(records)
    if expect_some:
        assert loud, "expected some INFO/WARNING records to check"
    for record in loud:
        for text in texts_of(record):
            for value in secrets:
                assert value not in text, (
                    f"patient value {value!r} logged at {record.levelname} by {record.name}: "
                    f"{text[:2000]}")
    return loud
