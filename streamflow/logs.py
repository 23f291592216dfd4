"""Logging set-up shared by every command: one readable line per event, to stderr."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
import warnings

from streamflow import config

LIBRARIES = ("feast", "kafka", "urllib3", "sqlalchemy", "psycopg")
"""Loggers of the libraries we run on."""


class OperatorFormatter(logging.Formatter):
    """One line per record; a library's exception is summed up on that line, not as a traceback.

    kafka-python, for one, logs a full traceback when the broker drops a connection, which it then
    handles itself (reconnects): an expected event for an operator, not a crash. At DEBUG level
    every traceback is shown.
    """

    def format(self, record: logging.LogRecord) -> str:
        if (
            record.exc_info
            and record.name.split(".")[0] in LIBRARIES
            and logging.getLogger().level > logging.DEBUG
        ):
            exc = record.exc_info[1]
            summary = f"{type(exc).__name__}: {exc}" if exc is not None else ""
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
            line = super().format(record)
            return f"{line} ({summary})" if summary else line
        return super().format(record)


NOISE: tuple[tuple[str, str], ...] = (
    # kafka-python 3.0 times its own event-loop tasks and warns when one took > 0.1 s: a note for
    # its developers (a loaded machine, a large fetch), nothing an operator can act on.
    ("kafka.net.selector", "ran for"),
    # kafka-python 3.0 closing a consumer can race its reader coroutine: a traceback about a
    # socket it has just closed itself.
    ("kafka.net.transport", "Error receiving network data"),
    # kafka-python 3.0 warns on every SCRAM login over SASL_PLAINTEXT; SCRAM never sends the
    # password itself (a salted proof), so there is nothing to act on. PLAIN's warning stays.
    ("kafka.net.sasl.scram", "Exchanging credentials in the clear"),
)
"""(logger, message start or part) of library lines dropped below DEBUG."""

WARNINGS_HIDDEN = (
    # Feast reads offline tables with pandas.read_sql on a psycopg connection (it works).
    "pandas only supports SQLAlchemy",
)


class NoiseFilter(logging.Filter):
    """Drops the library lines of ``NOISE`` unless the root logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().level <= logging.DEBUG:
            return True
        for name, text in NOISE:
            if record.name == name and text in str(record.msg):
                return False
        return True


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


def configured_level(default: str = "INFO") -> str:
    """STREAMFLOW_LOG_LEVEL, else the command's default."""
    return config.settings().logs.level or default.upper()


_SET_UP = False
_PROGRESS_OFF = False


def disable_progress() -> None:
    """No progress bars in this process (``streamflow --no-progress`` / ``<command> --no-progress``)."""
    global _PROGRESS_OFF
    _PROGRESS_OFF = True


def setup(level: str | None = None) -> None:
    """Set up logging for the process, once: ``streamflow`` does it before any command, so a
    command's own call (kept for ``python -m <module>``) changes nothing then."""
    global _SET_UP
    if _SET_UP:
        return
    _SET_UP = True
    level = (level or configured_level()).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OperatorFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(NoiseFilter())
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)  # Python warnings become log lines (logger py.warnings)
    if level != "DEBUG":
        for text in WARNINGS_HIDDEN:
            warnings.filterwarnings("ignore", message=text)
    # Feast and kafka-python are chatty at INFO; their warnings still show.
    for noisy in ("feast", "kafka", "urllib3", "sqlalchemy", "psycopg.pool"):  # not psycopg itself
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _PlainText(io.TextIOBase):
    """A text stream that writes to ``out`` without ANSI escape codes (colours, bold)."""

    def __init__(self, out):
        self.out = out

    def write(self, text: str) -> int:
        self.out.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def plain_stdout():
    """Library output on stdout (Feast's materialize colours its lines) without escape codes when
    stdout is not a terminal (a log file, a pipe, CI)."""
    if sys.stdout.isatty():
        yield
        return
    with contextlib.redirect_stdout(_PlainText(sys.stdout)):
        yield


def progress_enabled() -> bool:
    """Progress bars only on a terminal (not in CI logs or pipes) and unless STREAMFLOW_NO_PROGRESS."""
    return sys.stderr.isatty() and not _PROGRESS_OFF and not config.settings().logs.no_progress
