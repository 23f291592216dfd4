"""The consumer's write pipeline: one batch being written while the next is gathered.

While writer threads write the *in-flight* batch (its tables two at a time), the loop polls and
adds what it decodes to the *gathered* batch. Once the writes are done, the loop commits the
written batch and hands the gathered one over whole, so the fixed cost of a write is paid once per
write rather than once per poll. Nothing here calls the Kafka client.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from consumer.batch import Batch
from consumer.table_writer import Letter, StopRequested, TableWriter


@dataclass
class Written:
    """A batch whose every table is written, and its dead letters (to send before its commit)."""

    batch: Batch
    letters: list[Letter]
    seconds: float
    """From hand-over to the last table written."""


class WritePipeline:
    """The in-flight and gathered batches, and the writer threads (``threads`` of them)."""

    def __init__(self, writer: TableWriter, threads: int):
        self.writer = writer
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight: tuple[list[Future], Batch, float] | None = None
        self.gathered: Batch | None = None
        """What was polled and decoded while the in-flight batch was written: the next to write."""

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="writer")

    def shutdown(self) -> None:
        """Wait for the writer threads to end (after :meth:`abandon`: nothing is left to write)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def writing(self) -> bool:
        """Whether a batch is in flight."""
        return self._in_flight is not None

    @property
    def written(self) -> bool:
        """Whether the in-flight batch's writes are all done (False when none is in flight)."""
        return self._in_flight is not None and all(f.done() for f in self._in_flight[0])

    def gather(self, batch: Batch) -> int:
        """Add a polled batch to the gathered one; the events gathered."""
        self.gathered = batch if self.gathered is None else self.gathered.then(batch)
        return self.gathered.events

    def hand_over(self) -> None:
        """When nothing is in flight: hand what was gathered to the writer threads (each table is
        decoded, then pushed online and offline; tables are independent, so two write at once)."""
        if self._in_flight is not None or self.gathered is None:
            return
        assert self._executor is not None, "start() the pipeline first"
        batch, self.gathered = self.gathered, None
        futures = [
            self._executor.submit(self.writer.write_table, name, recs) for name, recs in batch.tables.items()
        ]
        self._in_flight = (futures, batch, time.perf_counter())

    def finish(self) -> Written:
        """Wait for the in-flight batch's writes (every one, even after a stop: no write is left
        running). StopRequested when the consumer was asked to stop while a write was retried or
        split: the batch is abandoned, and what was gathered dropped (both are read again)."""
        assert self._in_flight is not None, "nothing in flight"
        futures, batch, started = self._in_flight
        self._in_flight = None
        letters: list[Letter] = []
        stopped = False
        for future in futures:
            try:
                letters += future.result()
            except StopRequested:
                stopped = True
        if stopped:
            self.gathered = None
            raise StopRequested()
        return Written(batch, letters, time.perf_counter() - started)

    def abandon(self) -> None:
        """Let the in-flight batch finish (its rows are written, idempotently) without returning it,
        and drop what was gathered: both are read again from the committed offsets."""
        self.gathered = None
        if self._in_flight is None:
            return
        futures = self._in_flight[0]
        self._in_flight = None
        for future in futures:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - StopRequested or a write error: not committed either way
                pass

    def drop_gathered(self) -> Batch | None:
        """Take the gathered batch out (to be read again)."""
        gathered, self.gathered = self.gathered, None
        return gathered
