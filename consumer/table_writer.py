"""One table's part of a batch, written to the online and offline stores until it is written.

Runs in a writer thread of the loop: no Kafka client call here (the loop sends the dead letters,
then commits).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from consumer.metrics import ConsumerMetrics
from consumer.settings import ConsumerSettings
from consumer.write_errors import Refused, describe, isolate
from consumer.write_workers import Decoded, LocalWrite, WriteWorkers
from streamflow import schema
from streamflow.feature_store import push
from streamflow.topics import topic_of

log = logging.getLogger("consumer")

Letter = tuple[Any, str, "str | None"]
"""A dead letter: the record, the reason, the field (None: the whole event)."""


class StopRequested(Exception):
    """Raised inside a retry loop when the consumer is asked to stop."""


class TableWriter:
    """Decodes and writes tables' records, retrying transient failures with backoff (between
    ``retry_initial`` and ``retry_max`` seconds) until ``stopping`` or ``giving_up`` is set.

    ``workers``: the worker processes that decode and push (None: both run in the calling thread).
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics,
        stopping: threading.Event,
        giving_up: threading.Event,
        workers: WriteWorkers | None = None,
    ):
        self.settings = settings
        self.metrics = metrics
        self.stopping = stopping
        self.giving_up = giving_up
        self.workers = workers

    def write_table(self, name: str, records: list) -> list[Letter]:
        """Decode and write one table's records of a batch, retrying until they are written
        (StopRequested when asked to stop meanwhile); returns the dead letters: the invalid events
        (``event_batch``) and those the database refused for good.

        A write that fails for a transient reason is retried whole, with backoff. One that fails
        permanently is written in halves, and so on, until the refused rows stand alone
        (``write_errors.isolate``); the halves go through the same push, so newest-wins and
        idempotence hold, and what was written before a transient error is written again,
        unchanged."""
        table = schema.table(name)
        delay = self.settings.retry_initial
        attempt = 0
        while True:
            try:
                decoded, refused = self._write_once(table, records)
                break
            except StopRequested:
                raise
            except Exception as exc:  # noqa: BLE001 - transient (write_errors.classify): retried, never committed
                attempt += 1
                self._retrying(name, attempt, delay, exc)
                if self._wait_or_stop(delay):
                    raise StopRequested() from None
                delay = min(delay * 2, self.settings.retry_max)
        if attempt:
            log.info("write succeeded after %d retries (%s)", attempt, name)
        letters: list[Letter] = [
            (records[position], reason, field) for position, reason, field in decoded.bad
        ]
        letters += self._poison(name, records, decoded, refused)
        self._written(name, records, {id(rec) for rec, _, _ in letters})
        return letters

    def _retrying(self, name: str, attempt: int, delay: float, exc: Exception) -> None:
        self.metrics.retried()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning(
            "write failed (attempt %d) for %s, retrying in %.1f s: %s: %s",
            attempt,
            name,
            delay,
            getattr(exc, "type_name", None) or type(exc).__name__,
            first[:300],
        )

    @staticmethod
    def _poison(name: str, records: list, decoded: Decoded, refused: list[Refused]) -> list[Letter]:
        """The dead letters of the rows the database refused for good."""
        letters: list[Letter] = []
        for row in refused:
            rec = records[decoded.index[row.row]]
            reason = f"write failed: {describe(row.error)}"
            log.warning(
                "poison event dead-lettered: table %s, %s partition %d offset %d: %s",
                name,
                rec.topic,
                rec.partition,
                rec.offset,
                reason,
            )
            letters.append((rec, reason, None))
        return letters

    def _write_once(self, table: schema.Table, records: list) -> tuple[Decoded, list[Refused]]:
        """One attempt at a table's write: decode its records, then push the frame, in halves
        around the rows the database refuses for good."""
        where = f"batch of {topic_of(table)}"
        with self._session() as writing:
            decoded = writing.decode(table, records, datetime.now(timezone.utc))
            rows = decoded.rows

            def write(start: int, stop: int) -> None:
                if (start, stop) != (0, rows) and (self.stopping.is_set() or self.giving_up.is_set()):
                    raise StopRequested()  # isolating poison events: the batch is read again after a restart
                writing.push(start, stop, where)

            refused = isolate(
                write,
                rows,
                on_permanent=lambda start, stop, exc: self._failed_for_good(
                    table.name, rows, start, stop, exc
                ),
            )
        return decoded, refused

    def _session(self):
        """A table's write session: on a worker process, or in this thread."""
        if self.workers is not None:
            return self.workers.session()
        return contextlib.nullcontext(LocalWrite(push))

    @staticmethod
    def _failed_for_good(name: str, rows: int, start: int, stop: int, exc: BaseException) -> None:
        if stop - start == rows:
            log.warning(
                "write of %d rows of %s failed for good (%s)%s",
                rows,
                name,
                describe(exc, limit=300),
                ": writing it in halves to isolate the events the database refuses" if rows > 1 else "",
            )
        else:
            log.debug(
                "rows %d..%d of %d of %s refused: %s", start, stop - 1, rows, name, describe(exc, limit=300)
            )

    def _written(self, name: str, records: list, dead: set[int]) -> None:
        """Count a table's written events (every record but the dead-lettered ones: of several
        events of one user and time only the last is pushed, and stands for them) and their
        freshness."""
        done = time.time()
        written = [rec for rec in records if id(rec) not in dead] if dead else records
        self.metrics.count(self.metrics.written, name, len(written))
        log.debug("wrote %d events of %s", len(written), name)
        stamps = np.fromiter((rec.timestamp or 0 for rec in written), dtype=float, count=len(written))
        stamps = stamps[stamps > 0]
        self.metrics.freshness.observe_many(np.maximum(0.0, done - stamps / 1000))

    def _wait_or_stop(self, seconds: float) -> bool:
        """Sleep between two write attempts; True as soon as the loop stops or gives up."""
        deadline = time.monotonic() + seconds
        while not self.giving_up.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.stopping.wait(min(left, 0.5)):
                return True
        return True
