"""`streamflow consume --processes N`: N members of one consumer group, each its own OS process.

This parent process consumes nothing. It starts member i (i = 0 .. N-1) as
``python -m consumer.cli <the same options> --member i``, with ``--metrics-port P+i`` and
``--instance-id ID-i`` when a port or an id is given (two members can share neither), and:

* forwards SIGTERM and SIGINT to every member: each finishes its batch, commits and leaves the
  group, as a single process does, and the supervisor exits once all of them have;
* a member that exits with code 0 is done (``--until-drained``: its partitions are drained;
  ``--max-idle``: it was idle); with ``--until-drained`` the supervisor exits once all are done;
* a member that crashes (any other non-zero exit, or killed by a signal) is restarted after a
  backoff (1 s, doubling up to 30 s): a long-running consumer should heal, as under systemd's
  ``Restart=on-failure``; it rejoins the group at the committed offsets. A member that ran 60 s
  before failing starts its count again; one that fails 5 times in a row, each within 60 s of
  its start, is given up (a crash loop is a bug or a setting to fix, not bad luck);
* a member that exits with an expected error (code 3 or 4: the Kafka outage budget of
  ``--max-outage`` ran out, PostgreSQL unreachable at start), or is given up, stops the command:
  the supervisor stops the other members and exits with that member's code, as one process
  would have exited.

Exit code: 0 when every member's last exit was 0; else the code of the FIRST member failure that
was not followed by a restart (128 + the signal number for a member killed by a signal).

Members start with SIGTERM and SIGINT blocked and accept them once their handlers are set
(``accept_signals``), so a stop requested while they import is not lost nor a traceback.
SIGUSR1 to the supervisor is passed on: each member prints its threads' stacks. On
Linux a member gets SIGTERM when the supervisor dies (even by SIGKILL): no orphan keeps consuming.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamflow import config

log = logging.getLogger("consumer.supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HELD_SIGNALS = (*STOP_SIGNALS, signal.SIGUSR1)
"""Blocked in a member until its handlers are set (SIGUSR1: its stack dump, consumer.cli)."""
EXPECTED_ERRORS = (2, 3, 4)
"""Exit codes of ``StreamflowError``s a member reports with a message (no traceback): restarting
would meet the same error (2: a bad setting, or credentials Kafka refused)."""
PR_SET_PDEATHSIG = 1


# --- the member side (called by consumer.cli when it runs with --member) -----------------------


def accept_signals() -> None:
    """Unblock SIGTERM/SIGINT/SIGUSR1 in a member once its handlers are set (the supervisor started
    it with them blocked: one sent earlier is pending, and handled now)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def ignore_stop_signals() -> None:
    """A member on its way out ignores SIGTERM/SIGINT: Python's shutdown restores their default
    action, and one forwarded late (Ctrl-C reaches a member from the terminal and again from its
    supervisor) would kill it mid-exit and turn its exit code into 'killed by SIGTERM'."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class MemberTag(logging.Filter):
    """Prefixes every log line of a member with ``[member i]``: N processes write to one stream."""

    def __init__(self, index: int):
        super().__init__()
        self.prefix = f"[member {index}] "

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = f"{self.prefix}{record.msg}"
        return True


def tag_member_logs(index: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(MemberTag(index))


# --- the supervisor ------------------------------------------------------------------------------


@dataclass
class Member:
    index: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    starts: int = 0
    failures: int = 0
    """Failures in a row, each within ``stable_after`` seconds of the member's start."""
    start_at: float | None = 0.0
    """When to start it (again); None: not to be started."""


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:  # a signal without a name (real-time signals)
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def exit_code(returncode: int) -> int:
    """A process's exit status as a shell reports it (128 + signal number when killed)."""
    return 128 - returncode if returncode < 0 else returncode


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return None


def _member_preexec(parent: int, prctl) -> Callable[[], None]:
    """Runs in the forked member before exec: stop signals blocked until the member's handlers are
    set; SIGTERM when the supervisor dies (and at once if it already has)."""

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class Supervisor:
    """Starts ``count`` members (``command(i)`` is member i's command line), restarts those that
    crash, forwards stop requests, and returns an exit code (see the module docstring)."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        count: int,
        *,
        restart_initial: float = 1.0,
        restart_max: float = 30.0,
        stable_after: float = 60.0,
        max_failures: int = 5,
        tick: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.command = command
        self.members = [Member(i) for i in range(count)]
        self.restart_initial, self.restart_max = restart_initial, restart_max
        self.stable_after, self.max_failures = stable_after, max_failures
        self.tick, self.clock = tick, clock
        self.stopping: int | None = None
        """The signal forwarded to the members once a stop is under way."""
        self.code: int | None = None
        self.restarts = 0
        self._requests: list[int] = []
        self._preexec = _member_preexec(os.getpid(), _libc_prctl())

    def request_stop(self, signum: int, _frame=None) -> None:
        """Signal handler (also callable from another thread): only queues, the loop acts. SIGUSR1
        is passed on to the running members (each prints its threads' stacks)."""
        self._requests.append(signum)

    def run(self) -> int:
        while True:
            while self._requests:
                self._signalled(self._requests.pop(0))
            self._reap()
            if all(m.proc is None and m.start_at is None for m in self.members):
                break
            self._start_due()
            time.sleep(self.tick)
        code = self.code or 0
        log.info("all %d members stopped (%d restarts); exit code %d", len(self.members), self.restarts, code)
        return code

    def _signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            log.info("signal SIGUSR1: passed on to the running members (each prints its threads' stacks)")
            for m in self.members:
                if m.proc is not None:
                    self._send(m, signum)
                    time.sleep(0.3)  # one after the other: dumps written at once interleave
            return
        if self.stopping is None:
            log.info(
                "signal %s: stopping the members (each finishes its batch, commits and leaves the group)",
                name,
            )
        else:
            log.info("signal %s again: forwarded to the members still running", name)
        self.stop(signum)

    def stop(self, signum: int) -> None:
        """Forward ``signum`` to every running member; start none any more."""
        self.stopping = signum
        for m in self.members:
            m.start_at = None
            if m.proc is not None:
                self._send(m, signum)

    def _send(self, m: Member, signum: int) -> None:
        assert m.proc is not None  # callers send only to a running member
        try:
            m.proc.send_signal(signum)
        except ProcessLookupError:  # it has just exited; the loop reaps it
            pass

    def _start_due(self) -> None:
        now = self.clock()
        for m in self.members:
            if m.proc is None and m.start_at is not None and m.start_at <= now:
                self._start(m)

    def _start(self, m: Member) -> None:
        m.start_at = None
        try:
            m.proc = subprocess.Popen(self.command(m.index), preexec_fn=self._preexec)
        except OSError as exc:
            log.error("cannot start member %d: %s; stopping the other members", m.index, exc)
            self._failed(1)
            self.stop(signal.SIGTERM)
            return
        m.started = self.clock()
        self.restarts += m.starts > 0
        m.starts += 1
        log.info("member %d started (pid %d)", m.index, m.proc.pid)
        if self.stopping is not None:  # a stop came while it was being started
            self._send(m, self.stopping)

    def _reap(self) -> None:
        for m in self.members:
            if m.proc is not None and (rc := m.proc.poll()) is not None:
                self._exited(m, rc)

    def _exited(self, m: Member, rc: int) -> None:
        assert m.proc is not None  # _reap polled it
        ran, pid = self.clock() - m.started, m.proc.pid
        m.proc = None
        what = f"member {m.index} (pid {pid}) {describe_exit(rc)} after {ran:.0f} s"
        if rc == 0:
            log.info("%s: done", what)
        elif self.stopping is not None:
            log.warning("%s, while stopping", what)
            self._failed(exit_code(rc))
        elif rc in EXPECTED_ERRORS:
            log.error("%s (an expected error: its last lines say why): stopping the other members", what)
            self._failed(rc)
            self.stop(signal.SIGTERM)
        else:
            self._crashed(m, rc, ran, what)

    def _crashed(self, m: Member, rc: int, ran: float, what: str) -> None:
        m.failures = 1 if ran >= self.stable_after else m.failures + 1
        if m.failures >= self.max_failures:
            log.error(
                "%s: %d failures in a row, each within %.0f s of its start: giving up on it, "
                "stopping the other members",
                what,
                m.failures,
                self.stable_after,
            )
            self._failed(exit_code(rc))
            self.stop(signal.SIGTERM)
            return
        delay = min(self.restart_initial * 2 ** (m.failures - 1), self.restart_max)
        m.start_at = self.clock() + delay
        log.warning(
            "%s: restarting it in %g s (failure %d in a row; it rejoins the group at the committed offsets)",
            what,
            delay,
            m.failures,
        )

    def _failed(self, code: int) -> None:
        if self.code is None:
            self.code = code


# --- the command -----------------------------------------------------------------------------------


def member_command(argv: list[str], args: argparse.Namespace, index: int) -> list[str]:
    """Member ``index``'s command line: the supervisor's own options (a later option wins in
    argparse) plus its index, metrics port and instance id. Unless the write workers' count was
    given (flag or variable), the members share the default's: ``write_processes // processes``
    each, at least one (every member's workers run on the same host)."""
    extra = ["--member", str(index)]
    if "--write-processes" not in argv and config.source("STREAMFLOW_WRITE_PROCESSES") == "default":
        extra += ["--write-processes", str(max(1, args.write_processes // args.processes))]
    if args.metrics_port:
        extra += ["--metrics-port", str(args.metrics_port + index)]
    if args.instance_id:
        extra += ["--instance-id", f"{args.instance_id}-{index}"]
    return [sys.executable, "-m", "consumer.cli", *argv, *extra]


def plan(args: argparse.Namespace) -> str:
    """One line for the operator: what each member gets."""
    n = args.processes
    parts = [f"members 0-{n - 1} of group {args.group}"]
    if args.metrics_port:
        parts.append(f"metrics ports {args.metrics_port}-{args.metrics_port + n - 1}")
    if args.instance_id:
        parts.append(f"instance ids {args.instance_id}-0 .. {args.instance_id}-{n - 1}")
    if args.until_drained:
        parts.append("each until its partitions are drained")
    return ", ".join(parts)


def main(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.processes`` members (``argv``: the command's options, passed on to each)."""
    supervisor = Supervisor(lambda i: member_command(argv, args, i), args.processes)
    for signum in HELD_SIGNALS:
        signal.signal(signum, supervisor.request_stop)
    log.info("supervisor (pid %d) starting %s", os.getpid(), plan(args))
    return supervisor.run()
