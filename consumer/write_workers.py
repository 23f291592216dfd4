"""Decoding and pushing a table's events, in worker processes: outside the consumer loop's
interpreter lock.

The consumer loop spends its CPU in kafka-python's pure-Python record parsing; decoding the events
and pushing them spend theirs in orjson, Arrow, pandas, Feast and our stores' encoding. In one
process all of it needs the one interpreter lock, and the loop waited for it. :class:`WriteWorkers`
runs that work in a few worker processes (each imports Feast and opens the feature store once); the
consumer's writer threads only wait for the answers (docs/explanation/consumer.md).

A table's write is a :class:`TableWrite` session on one worker: ``decode`` sends the table's raw
records (topic, keys, values) and gets back which became rows of the push frame and which are
invalid (with their reasons); ``push(start, stop)`` pushes a range of that frame, which stays in
the worker. :class:`LocalWrite` does the same in the calling thread (``write_processes=0``).

A failed push comes back as :class:`RemoteWriteError`: the verdict (transient or permanent,
decided in the worker, where the whole exception chain is) and the database's error as
``consumer.write_errors.describe`` shows it. A worker that dies during a session raises
:class:`WorkerLost` (transient: the table's write is retried on a worker started in its place).
A worker is a ``python -c`` process that runs :func:`_serve` (not ``multiprocessing``'s spawn, which
would import the caller's main module again), talking over a socket pair with ``multiprocessing``'s
framing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from streamflow.errors import ServiceUnavailable
from streamflow.topics import topic_of

if TYPE_CHECKING:  # imported where used: starting the workers needs neither pandas nor the decoder
    import pandas as pd

    from streamflow import schema

log = logging.getLogger("consumer.write_workers")

READY = "ready"
NICENESS = 10
"""Workers run at a lower priority than the loop (``os.nice``): on a busy machine the loop, which
reads ahead and gathers, keeps polling, and the writes catch up in larger batches."""


class RemoteWriteError(Exception):
    """A push that failed in a worker process, as the worker classified and described it.

    ``verdict`` is ``write_errors.TRANSIENT`` or ``PERMANENT``; ``type_name``, ``message`` (the
    first line) and ``sqlstate`` are those of the exception ``write_errors.describe`` shows."""

    def __init__(self, verdict: str, type_name: str, message: str, sqlstate: str | None = None):
        super().__init__(message)
        self.verdict = verdict
        self.type_name = type_name
        self.message = message
        self.sqlstate = sqlstate

    def __reduce__(self):
        return (RemoteWriteError, (self.verdict, self.type_name, self.message, self.sqlstate))

    @classmethod
    def of(cls, exc: BaseException) -> RemoteWriteError:
        from consumer.write_errors import chain, classify, sqlstate_of

        shown = next((e for e in chain(exc) if sqlstate_of(e)), exc)
        lines = str(shown).strip().splitlines()
        name = getattr(shown, "type_name", None) or type(shown).__name__
        return cls(classify(exc), name, lines[0].strip() if lines else "", sqlstate_of(shown))


class WorkerLost(ConnectionError):
    """A worker process ended during a table's write (killed, out of memory), or none was free:
    transient, the write is retried."""


@dataclass
class Decoded:
    """What decoding a table's records gave: the push frame's rows, the position in the records of
    each row's event (of several events of one user and time, the last one), and the invalid
    events as (position, reason, field)."""

    rows: int
    index: list[int]
    bad: list[tuple[int, str, str | None]]


class _Raw(NamedTuple):
    """A record as decoding reads it (the worker gets no more of it)."""

    topic: str
    key: bytes | None
    value: bytes | None


def decode(table: schema.Table, records: list, now: datetime) -> tuple[Decoded, pd.DataFrame]:
    """Decode a table's records (``event_batch``); the summary and the push frame."""
    from streamflow import event_batch

    batch = event_batch.decode_table_batch(table, records, now)
    position = {id(rec): i for i, rec in enumerate(records)}
    good = [position[id(rec)] for rec in batch.good]
    frame = batch.frame.reset_index(drop=True)
    index = [good[i] for i in batch.frame.index]
    bad = [(position[id(rec)], exc.reason, exc.field) for rec, exc in batch.bad]
    return Decoded(len(frame), index, bad), frame


class LocalWrite:
    """A table's write in the calling thread (no worker process): ``push`` is
    ``streamflow.feature_store.push`` or a stand-in with its signature."""

    def __init__(self, push) -> None:
        self._push = push
        self._frame: pd.DataFrame | None = None
        self._table: schema.Table | None = None

    def decode(self, table: schema.Table, records: list, now: datetime) -> Decoded:
        decoded, self._frame = decode(table, records, now)
        self._table = table
        return decoded

    def push(self, start: int, stop: int, where: str) -> None:
        assert self._frame is not None and self._table is not None  # decode first
        whole = start == 0 and stop == len(self._frame)
        frame = self._frame if whole else self._frame.iloc[start:stop]
        self._push(self._table, frame, where=where, validated=True)  # decode checked every event


def _serve(conn: Connection, level: int) -> None:
    """A worker process: open the feature store, then decode and push what it is sent, until ``None``
    or the consumer is gone (its end of the socket closed: the worker ends quietly, after the push
    it was running)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the consumer stops it (``None``), not Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICENESS)
    from streamflow import logs

    logs.setup(logging.getLevelName(level))
    from streamflow import event_batch  # noqa: F401 - loaded before READY, not in the first decode
    from streamflow.feature_store import database_errors, get_store, push

    try:
        try:
            with database_errors("opening the feature store"):
                get_store().list_feature_views()
        except Exception as exc:  # noqa: BLE001 - sent to the consumer, which ends with it
            conn.send(("failed", f"{exc}"))
            return
        conn.send((READY, None))
        local = LocalWrite(push)
        while (message := conn.recv()) is not None:
            conn.send(_answer(local, message))
    except (EOFError, OSError):  # the consumer is gone
        return


def _answer(local: LocalWrite, message: tuple):
    """A worker's answer to one message: the Decoded of a decode, None for a push done, or the
    RemoteWriteError of either."""
    try:
        if message[0] == "decode":
            _, name, topic, keys, values, now = message
            records = [_Raw(topic, key, value) for key, value in zip(keys, values)]
            from streamflow import schema

            return local.decode(schema.table(name), records, now)
        _, start, stop, where = message
        local.push(start, stop, where)
        return None
    except Exception as exc:  # noqa: BLE001 - sent back: the consumer classifies and retries
        return RemoteWriteError.of(exc)


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection


class TableWrite:
    """A table's write on one worker process: ``decode``, then ``push`` ranges of its frame."""

    def __init__(self, worker: _Worker):
        self._worker = worker
        self.lost = False

    def _ask(self, message: tuple):
        try:
            self._worker.conn.send(message)
            answer = self._worker.conn.recv()
        except (EOFError, OSError) as exc:
            self.lost = True
            raise WorkerLost(
                f"the write worker process (pid {self._worker.process.pid}) ended: {type(exc).__name__}"
            ) from None
        if isinstance(answer, RemoteWriteError):
            raise answer
        return answer

    def decode(self, table: schema.Table, records: list, now: datetime) -> Decoded:
        topic = records[0].topic if records else topic_of(table)
        return self._ask(
            ("decode", table.name, topic, [r.key for r in records], [r.value for r in records], now)
        )

    def push(self, start: int, stop: int, where: str) -> None:
        self._ask(("push", start, stop, where))


class WriteWorkers:
    """``count`` worker processes that decode and push tables' events (:meth:`session`).

    Workers start in the background, one after the other (two Feast imports at once would take
    both cores from the first one); :meth:`wait_ready` waits for the first by default, and
    ``wait_ready(every=True)`` for all of them. A session borrows an idle worker (waiting for one)
    for one table's write; the calling thread holds no interpreter lock while it waits for the
    worker's answers. A worker that ends is replaced (tried again every ``restart_delay`` seconds
    while it cannot start). Thread-safe."""

    def __init__(self, count: int, *, restart_delay: float = 2.0, borrow_timeout: float = 30.0):
        if count < 1:
            raise ValueError("WriteWorkers needs at least one worker")
        self.restart_delay = restart_delay
        self.borrow_timeout = borrow_timeout
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()  # guards _workers
        self._first = threading.Event()
        self._every = threading.Event()
        self._start_failure: str | None = None
        self._closed = threading.Event()
        threading.Thread(
            target=self._start_all, args=(count,), name="write-workers-start", daemon=True
        ).start()

    def _spawn(self) -> _Worker | str:
        """Start one worker and wait until it has opened the store; why not, when it could not."""
        ours, theirs = socket.socketpair()
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno()), str(logging.getLogger().level)],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        conn = Connection(ours.detach())
        try:
            kind, detail = conn.recv()
        except (EOFError, OSError):
            kind, detail = "failed", "the write worker process ended while starting"
        if kind != READY:
            _wait(process, 5)
            conn.close()
            return str(detail)
        worker = _Worker(process, conn)
        with self._lock:
            if self._closed.is_set():
                self._stop(worker)
                return "closed"
            self._workers.append(worker)
        self._idle.put(worker)
        return worker

    def _start_all(self, count: int) -> None:
        try:
            started = self._spawn()
            if isinstance(started, str):
                self._start_failure = started
                return
            self._first.set()
            for _ in range(count - 1):
                if self._closed.is_set():
                    return
                if isinstance(self._spawn(), str):  # the first works: keep trying this one
                    self._respawn()
        finally:
            self._first.set()
            self._every.set()

    def _respawn(self) -> None:
        while not self._closed.is_set():
            started = self._spawn()
            if not isinstance(started, str):
                log.info("write worker process %s started", started.process.pid)
                return
            log.warning(
                "a write worker process could not start (%s): trying again in %.0f s",
                started,
                self.restart_delay,
            )
            self._closed.wait(self.restart_delay)

    def wait_ready(self, timeout: float = 120.0, *, every: bool = False) -> None:
        """Wait until the first worker (``every``: all of them) has opened the feature store;
        ServiceUnavailable when the first could not (its reason), or not within ``timeout`` s."""
        if not (self._every if every else self._first).wait(timeout):
            raise ServiceUnavailable(f"the write worker processes were not ready within {timeout:.0f} s")
        if self._start_failure is not None:
            raise ServiceUnavailable(self._start_failure)

    @contextlib.contextmanager
    def session(self) -> Iterator[TableWrite]:
        """A worker for one table's write (WorkerLost when none is free within ``borrow_timeout``)."""
        self.wait_ready()
        try:
            worker = self._idle.get(timeout=self.borrow_timeout)
        except queue.Empty:
            raise WorkerLost(f"no write worker process free within {self.borrow_timeout:.0f} s") from None
        session = TableWrite(worker)
        try:
            yield session
        finally:
            if session.lost:
                self._replace(worker)
            else:
                self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        _wait(worker.process, 1)
        worker.conn.close()
        log.warning(
            "write worker process %s ended (exit code %s): starting another",
            worker.process.pid,
            worker.process.returncode,
        )
        if not self._closed.is_set():
            threading.Thread(target=self._respawn, name="write-worker-restart", daemon=True).start()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and operators)."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    @staticmethod
    def _stop(worker: _Worker) -> None:
        try:
            worker.conn.send(None)
        except OSError:
            pass
        if not _wait(worker.process, 10):
            worker.process.kill()
            _wait(worker.process, 5)
        worker.conn.close()

    def close(self) -> None:
        """Stop every worker (each finishes the push it runs first). Idempotent."""
        with self._lock:
            self._closed.set()
            workers, self._workers = self._workers, []
        for worker in workers:
            self._stop(worker)


def _wait(process: subprocess.Popen, timeout: float) -> bool:
    """Whether the process ended within ``timeout`` seconds."""
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


_WORKER_MAIN = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); "
    "from multiprocessing.connection import Connection; from consumer.write_workers import _serve; "
    "_serve(Connection(int(sys.argv[1])), int(sys.argv[2]))"
)
"""A worker process's program (``python -c``: this project's folder first on its path, whatever the
caller's; arguments: the socket's descriptor and the log level)."""
