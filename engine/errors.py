"""The errors every part of hisbridge raises, and what each one means for a message.

    HisbridgeError                 base of everything below; never raised itself
    ├── ConfigError                the configuration (or a mapping file) is invalid; the engine
    │                              refuses to start. Carries file, line and dotted key path.
    ├── MappingError               a message cannot be mapped (missing required field, invalid
    │   │                          target resource). Permanent for that message.
    │   └── (is a PermanentError)
    ├── TransientError             the peer may accept later: timeouts, refused connections,
    │                              HTTP 5xx/429, HL7 AE. The message is retried with backoff.
    ├── PermanentError             the peer will never accept this message as it is: HTTP 4xx,
    │                              HL7 AR, SOAP faults, insurance infcode != 0. Dead-lettered now.
    ├── InDoubtError (Transient)   a call that moves money timed out: the peer may or may not
    │                              have acted. The caller must query before any retry.
    └── RejectedInput              bytes from a peer that we refuse to accept (not HL7, frame
                                   too large, bad encoding). Answered with a negative ACK; never
                                   stored as accepted.

Adapters translate library exceptions (aiohttp, zeep, sqlite3 ...) into these at their
boundary, so that one function (`engine.outcome.decide`) turns them into ack, retry or
dead-letter.
"""

from __future__ import annotations


class HisbridgeError(Exception):
    """Base of all hisbridge errors."""


class ConfigError(HisbridgeError):
    """An invalid configuration or mapping file.

    Attributes:
        file: the file that holds the error.
        line: 1-based line of the offending key, when it can be located.
        path: dotted key path such as ``channels[2].destinations[0].url``.
    """

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, path: str = ""
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.path = path
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.path:
            where = f"{where} {self.path}" if where else self.path
        return f"{where}: {self.message}" if where else self.message


class TransientError(HisbridgeError):
    """The peer may accept the message later; retry with backoff.

    Attributes:
        retry_after: seconds the peer asked us to wait (HTTP Retry-After), if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InDoubtError(TransientError):
    """A money-moving call whose outcome is unknown (timeout after sending).

    Never retried blindly: the workflow queries the peer first.
    """


class PermanentError(HisbridgeError):
    """The peer will never accept this message as it is; dead-letter it with this reason."""


class MappingError(PermanentError):
    """A message could not be mapped. The text names the mapping, the rule and the path."""


class RejectedInput(HisbridgeError):
    """Input refused at the door, with the reason to send back to the peer.

    Attributes:
        code: HL7 acknowledgement code to answer with: ``AR`` (never resend as is) or ``AE``.
        hl7_error: HL7 table 0357 error code for the ERR segment (e.g. 100 segment sequence,
            101 required field missing, 102 data type error, 200 unsupported message type).
    """

    def __init__(
        self, message: str, *, code: str = "AR", hl7_error: str = "207", partial: object = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.hl7_error = hl7_error
        self.partial = partial  # what could be parsed (e.g. the MSH) to address the answer


class KeyReused(RejectedInput):
    """An HL7 message whose dedup key (sending facility + MSH-10 by default) an earlier,
    different message already holds: not a resend, so neither a duplicate to drop nor a
    message to take (a sender whose control ids restart would otherwise lose every message
    silently). Answered AR with HL7 error 205, HTTP 409."""

    def __init__(self, message: str, *, key: str, earlier_id: str) -> None:
        super().__init__(message, hl7_error="205")
        self.key = key
        self.earlier_id = earlier_id
