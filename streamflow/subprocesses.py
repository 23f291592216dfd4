"""Stopping the processes that the tests and the benchmarks start (servers, consumers)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def stop_processes(procs: Iterable[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM to every process, then wait for each up to ``timeout`` seconds; one still running
    then is killed (and reaped). Processes that have ended are left as they are."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """:func:`stop_processes` for one."""
    stop_processes([proc], timeout)
