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
            record = logging.getLogger(name).makeRecord(
                name, logging.ERROR, __file__, 1, "connection lost", None, sys.exc_info()
            )
        return OperatorFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    finally:
        root.setLevel(before)


def test_library_exception_is_one_line():
    text = formatted("kafka.net.connection")
    assert "Traceback" not in text and "\n" not in text
    assert (
        text == "ERROR kafka.net.connection: connection lost "
        "(ConnectionResetError: [Errno 104] Connection reset by peer)"
    )


def test_own_exception_keeps_its_traceback_and_debug_shows_all():
    assert "Traceback" in formatted("consumer")
    assert "Traceback" in formatted("kafka.net.connection", level=logging.DEBUG)


def test_a_repeating_library_line_is_shown_once_per_window_and_counts_what_it_held_back():
    from streamflow.logs import RepeatFilter

    now = [0.0]
    repeat = RepeatFilter(window=30, clock=lambda: now[0])
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:

        def record(name: str, msg: str = "Connection failed: %s"):
            return logging.getLogger(name).makeRecord(
                name, logging.ERROR, __file__, 1, msg, ("refused",), None
            )

        shown = [repeat.filter(record("kafka.net.manager")) for _ in range(5)]
        assert shown == [True, False, False, False, False]
        assert all(repeat.filter(record("consumer")) for _ in range(3))  # our own lines: always
        assert repeat.filter(record("kafka.cluster"))  # another logger: its own count
        now[0] = 31.0
        again = record("kafka.net.manager")
        assert repeat.filter(again)
        assert again.getMessage() == "Connection failed: refused [4 more like this in the last 30 s]"
    finally:
        root.setLevel(before)


def test_library_noise_is_dropped_below_debug_and_shown_at_debug():
    from streamflow.logs import NoiseFilter

    noise = NoiseFilter()
    root = logging.getLogger()
    before = root.level

    def record(name: str, msg: str):
        return logging.getLogger(name).makeRecord(name, logging.WARNING, __file__, 1, msg, None, None)

    slow = "Task %s ran for 0.101s (>0.100s threshold). It is blocking the event loop"
    try:
        root.setLevel(logging.INFO)
        assert not noise.filter(record("kafka.net.selector", slow))
        assert not noise.filter(
            record("kafka.net.transport", "%s: Error receiving network data closing socket")
        )
        assert noise.filter(record("kafka.net.selector", "something else"))  # only the known lines
        assert noise.filter(record("consumer", slow))  # never our own
        root.setLevel(logging.DEBUG)
        assert noise.filter(record("kafka.net.selector", slow))
    finally:
        root.setLevel(before)


def test_library_colours_are_stripped_when_stdout_is_not_a_terminal(capsys):
    from streamflow.logs import plain_stdout

    with plain_stdout():
        print("Materializing \x1b[1m\x1b[32m6\x1b[0m feature views")
    assert capsys.readouterr().out == "Materializing 6 feature views\n"
