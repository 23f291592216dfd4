"""Logging set-up shared by every command: one readable line per event, to stderr."""

from __future__ import annotations

import logging
import os
import sys
import time


LIBRARIES = ("feast", "kafka", "urllib3", "sqlalchemy", "psycopg")
"""Loggers of the libraries we run on."""


class OperatorFormatter(logging.Formatter):
    """One line per record; a library's exception is summed up on that line, not as a traceback.

    kafka-python, for one, logs a full traceback when the broker drops a connection, which it then
    handles itself (reconnects): an expected event for an operator, not a crash. At DEBUG level
    every traceback is shown.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.name.split(".")[0] in LIBRARIES and logging.getLogger().level > logging.DEBUG:
            exc = record.exc_info[1]
            summary = f"{type(exc).__name__}: {exc}" if exc is not None else ""
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
            line = super().format(record)
            return f"{line} ({summary})" if summary else line
        return super().format(record)


class RepeatFilter(logging.Filter):
    """A library's line that repeats (kafka-python logs every failed reconnect, several times, while
    a broker is away) is shown once per ``window`` seconds; the next one says how many were
    held back. Our own lines are never held back."""

    def __init__(self, window: float = 30.0, clock=time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._last: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in LIBRARIES or logging.getLogger().level <= logging.DEBUG:
            return True
        key = (record.name, record.msg)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} [{held} more like this in the last {self.window:.0f} s]"
        return True


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("STREAMFLOW_LOG_LEVEL", "INFO")).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OperatorFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler])
    # Feast and kafka-python are chatty at INFO; their warnings still show.
    for noisy in ("feast", "kafka", "urllib3", "sqlalchemy", "psycopg.pool"):  # not psycopg itself
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def progress_enabled() -> bool:
    """Progress bars only on a terminal (not in CI logs or pipes)."""
    return sys.stderr.isatty() and os.environ.get("STREAMFLOW_NO_PROGRESS") is None
