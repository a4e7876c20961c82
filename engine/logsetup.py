"""Logging: one line per event, text or JSON, never patient data at INFO or above.

Loggers name ids and control numbers only; message bodies and field values are logged
nowhere (the admin API shows them to token holders).
"""

from __future__ import annotations

import logging
import sys
import time

import orjson


def log_failure(logger: logging.Logger, exc: BaseException, message: str, *args: object
                ) -> None:
    """An unexpected error: its class at ERROR, its text and traceback only at DEBUG.

    An exception's text can quote the message or the field values it choked on (a parser's
    complaint, a peer's error page, a database value), so above DEBUG a line names ids and
    the error's class, never what it said.
    """
    # The caller's format and arguments stay as they are, like any other log line's: only
    # the error's class is added, never its text.
    with_class, with_detail = message + " (%s)", message + ": detail"
    logger.error(with_class, *args, type(exc).__name__)
    logger.debug(with_detail, *args, exc_info=exc)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
