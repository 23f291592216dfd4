"""Operator logs (no I/O): a library's handled exception is one line, our own keeps its traceback."""

from __future__ import annotations

import logging

from streamflow.logs import OperatorFormatter


def formatted(name: str, level: int = logging.INFO) -> str:
    import sys

    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        try:
            raise ConnectionResetError(104, "Connection reset by peer")
        except ConnectionResetError:
            record = logging.getLogger(name).makeRecord(name, logging.ERROR, __file__, 1, "connection lost", None,
                                                        sys.exc_info())
        return OperatorFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    finally:
        root.setLevel(before)


def test_library_exception_is_one_line():
    text = formatted("kafka.net.connection")
    assert "Traceback" not in text and "\n" not in text
    assert text == "ERROR kafka.net.connection: connection lost (ConnectionResetError: [Errno 104] Connection reset by peer)"


def test_own_exception_keeps_its_traceback_and_debug_shows_all():
    assert "Traceback" in formatted("consumer")
    assert "Traceback" in formatted("kafka.net.connection", level=logging.DEBUG)
