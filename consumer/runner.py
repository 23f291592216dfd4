"""The consumer loop: poll a batch, validate, write online and offline, then commit.

While writer threads write one batch into PostgreSQL (its tables two at a time; the waits and
Arrow's CSV writer release the GIL), the loop keeps polling and decoding, and gathers what it
decodes into the next batch. Once the writes are done it commits the written batch and hands the
gathered one over whole: the longer a write takes, the larger the next one, so the fixed cost of
a write (a push per table, its statements and transactions) is paid once per write rather than
once per poll. The gathered batch is bounded (``ConsumerSettings.max_write_batch``): beyond it the
loop waits for the writes. The Kafka client is only ever called from the loop's thread.

Guarantees (docs/explanation/guarantees.md):
* at-least-once: offsets are committed only after the batch's writes and its dead-letter
  records are acknowledged; a write that fails for a transient reason (the database away,
  overloaded, a timeout, a deadlock: ``consumer.write_errors``) is retried with backoff, never
  committed past;
* idempotent and newest-wins writes come from our Feast store classes, so a redelivered batch
  changes nothing and an older event never overwrites a newer value;
* an invalid event goes to the dead-letter topic with its reason and source offset, is counted,
  and the events around it are written. So does a poison event: one the database refuses for
  good (a data exception, a violated constraint, a bug in its encoding): a table's write that
  fails permanently is split in halves until the refused events stand alone
  (``write_errors.isolate``); they are dead-lettered with the database's error, the rest is
  written, and the batch is committed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time

from kafka import TopicPartition

from consumer.batch import Batch
from consumer.dead_letter_queue import DeadLetterError, DeadLetterQueue
from consumer.group_client import GroupClient
from consumer.metrics import ConsumerMetrics
from consumer.outage import Outage, Watchdog
from consumer.pipeline import WritePipeline
from consumer.settings import ConsumerSettings
from consumer.table_writer import Letter, StopRequested, TableWriter
from consumer.write_workers import WriteWorkers
from streamflow import db_roles, kafka_clients
from streamflow.feature_store import database_errors, get_store

log = logging.getLogger("consumer")

WRITING_POLL_MS = 20
"""Milliseconds a poll waits for records while a batch is being written."""

__all__ = ["ConsumerSettings", "StopRequested", "StreamConsumer"]


class StreamConsumer:
    """One member of the consumer group: :meth:`run` polls, writes and commits until stopped,
    drained or idle (as its settings say), and returns its counts."""

    def __init__(
        self,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics | None = None,
        stopping: threading.Event | None = None,
        workers: WriteWorkers | None = None,
    ):
        """Connects to Kafka (waiting out an outage within ``max_outage``), checks the database
        role and opens the feature store, then subscribes. ``workers``: write workers already
        starting (this consumer closes them), else started here when ``settings.write_processes``
        > 0."""
        self.settings = settings
        self.kafka = kafka_clients.settings(settings.bootstrap or None)
        self.settings.bootstrap = self.kafka.bootstrap_servers
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.stopping = stopping if stopping is not None else threading.Event()
        self.outage = Outage(self.kafka.bootstrap_servers, self.stopping, max_outage=settings.max_outage)
        self._giving_up = threading.Event()
        """Set when the loop ends for another reason than a stop request (an outage beyond its
        budget): a write still retrying stops, as on a stop request."""
        # The write workers import Feast and open the store while this process connects to Kafka.
        if workers is None and settings.write_processes > 0:
            workers = WriteWorkers(settings.write_processes)
        self.writer = TableWriter(settings, self.metrics, self.stopping, self._giving_up, workers)
        self.pipeline = WritePipeline(self.writer, settings.write_processes or 2)
        try:
            self.client = GroupClient(settings, self.kafka, self.outage, self.metrics)
            self.dead_letters = self.outage.connect(
                "connecting the dead-letter producer", lambda: DeadLetterQueue(kafka=self.kafka)
            )
            self._ready(workers)
        except BaseException:
            if workers is not None:
                workers.close()
            raise
        self.client.start()

    @staticmethod
    def _ready(workers: WriteWorkers | None) -> None:
        """The role may write what the consumer writes (one line saying to run `streamflow apply`
        if not); then the feature store is open before joining, not in the first batch."""
        db_roles.check_ready("the consumer")
        if workers is not None:
            workers.wait_ready()
        else:
            with database_errors("opening the feature store"):
                get_store().list_feature_views()

    # -- dead letters -----------------------------------------------------------------------------

    def batch_of(self, records: dict[TopicPartition, list]) -> Batch:
        """A polled batch's records by table; records of a topic of no table go to the dead-letter
        topic (sent and acknowledged here: DeadLetterError when they cannot be)."""
        for tp, recs in records.items():
            self.metrics.count(self.metrics.consumed, tp.topic, len(recs))
        batch, unknown = Batch.of(records)
        self._send_letters(
            [
                (rec, f"unknown table: topic {rec.topic!r} belongs to no table of the registry", None)
                for rec in unknown
            ]
        )
        return batch

    def _send_letters(self, letters: list[Letter]) -> None:
        """Send dead letters and wait for their acknowledgement (DeadLetterError when they cannot be)."""
        for rec, reason, field in letters:
            self.dead_letters.send(rec, reason, field)
            self.metrics.count(self.metrics.dead_lettered, rec.topic)
        if letters:
            self.dead_letters.flush()

    def _read_again(self, exc: DeadLetterError, *batches: dict[TopicPartition, list]) -> None:
        log.warning("%s: re-reading the batch", exc)
        self.dead_letters.reset()
        self.client.rewind(*batches)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> dict[str, float]:
        """Poll, write and commit until stopped, drained (``until_drained``) or idle for
        ``max_idle_seconds``; then write and commit what was polled, and close. Returns the counts."""
        log.info(
            "consumer of group %s joining, topics: %s", self.settings.group_id, ", ".join(self.client.topics)
        )
        self._idle_since = self._last_probe = self._last_report = time.monotonic()
        with self._running() as watchdog:
            while not self.stopping.is_set() and self._turn():
                pass
            if not self.outage.rebuild_wanted:  # stopping: what was polled is written and committed
                self._write_the_rest()
        stats = self.metrics.snapshot()
        stats["kafka_errors"] = self.outage.total_errors
        stats["client_rebuilds"] = self.client.rebuilds
        stats["client_hangs"] = watchdog.hangs
        log.info("stopped: %s", stats)
        return stats

    def _turn(self) -> bool:
        """One turn of the loop: replace a stuck client, commit a written batch, hand the gathered
        one over, poll. False when the loop must end."""
        self.outage.check_budget()
        if self.outage.rebuild_wanted:
            self.pipeline.abandon()  # the new client reads it again from the committed offsets
            self.client.rebuild()
            return True
        if self.pipeline.written and not self._commit_written():
            return False
        self.pipeline.hand_over()
        wanted = self.settings.poll_timeout_ms
        records = self.client.poll(min(wanted, WRITING_POLL_MS) if self.pipeline.writing else wanted)
        if not records:
            return self._idle()
        return self._received(records)

    def _received(self, records: dict[TopicPartition, list]) -> bool:
        """Gather a poll's records; wait for the writes when enough is gathered."""
        self._idle_since = self._last_probe = time.monotonic()
        self.client.health.stalled.clear()
        try:
            batch = self.batch_of(records)
        except DeadLetterError as exc:
            self._read_again(exc, records)
            return True
        gathered = self.pipeline.gather(batch)
        if self.pipeline.writing and gathered >= self.settings.max_write_batch:
            if not self._commit_written():  # enough gathered: wait for the writes
                return False
        if self.outage.rebuild_wanted:  # the next turn replaces the client: it re-reads the batch
            return True
        self.pipeline.hand_over()
        if time.monotonic() - self._last_report > 10:
            self._last_report = time.monotonic()
            log.info("progress: %s", self.metrics.snapshot())
        return True

    def _idle(self) -> bool:
        """A poll brought nothing: commit what is being written, else check the client, retry the
        pending commits, and end the loop when drained or idle for long enough."""
        if self.pipeline.writing:
            return self._commit_written()  # the next turn hands over what was gathered
        now = time.monotonic()
        if not self.client.joined():
            self._idle_since = now  # idle means nothing to do, which only a member can tell
        if now - self._last_probe > self.settings.probe_interval:
            self._last_probe = now
            self.client.health.probe(self.client.consumer)
        self.client.offsets.retry()
        if self.settings.until_drained and self.outage.since is None and self.client.drained():
            log.info("drained: every assigned partition is consumed up to its end")
            return False
        if self.settings.max_idle_seconds and now - self._idle_since > self.settings.max_idle_seconds:
            log.info("idle for %.0f s: stopping", self.settings.max_idle_seconds)
            return False
        return True

    def _commit_written(self) -> bool:
        """Wait for the batch being written, send its dead letters, then commit it; False when the
        loop must stop (asked to stop while its writes were retried: abandoned, not committed).

        When its dead letters cannot be sent, it is read again, and so is what was gathered
        meanwhile (whose partitions may be ahead of it): neither is committed."""
        try:
            written = self.pipeline.finish()
        except StopRequested:
            log.warning("stop requested while a write was retried or split: batch abandoned, not committed")
            return False
        self.metrics.write_latency.observe(written.seconds)
        try:
            self._send_letters(written.letters)  # invalid events, and those the database refused for good
        except DeadLetterError as exc:
            gathered = self.pipeline.drop_gathered()
            self._read_again(exc, written.batch.records, *([gathered.records] if gathered else []))
            return True
        self.client.offsets.commit(written.batch.next_offsets)
        return True

    def _write_the_rest(self) -> None:
        """Stopping: write and commit what is in flight and what was gathered, then settle the
        pending commits."""
        if not self.pipeline.writing or self._commit_written():
            if self.pipeline.gathered is not None:
                self.pipeline.hand_over()
                self._commit_written()
        self.client.offsets.settle_before_leaving()

    @contextlib.contextmanager
    def _running(self):
        """While the loop runs: the watchdog, the writer threads and the loop's switch interval;
        after it, every write ended and the clients closed (the interval restored even when
        closing raises)."""
        hang_limit = self.settings.hang_limit or self.kafka.request_timeout_ms / 1000 + 30
        watchdog = Watchdog(self.outage, hang_limit, self.client.close_hung).start()
        self.pipeline.start()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.settings.switch_interval)
        try:
            yield watchdog
        finally:
            self._giving_up.set()  # a write still retrying gives up: this member is done
            self.pipeline.abandon()
            try:
                self.pipeline.shutdown()
                watchdog.stop()
                self.close()
            finally:
                sys.setswitchinterval(switch_interval)  # also when closing raises

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        """Close the dead-letter producer and the client (leaving the group), then the write workers."""
        try:
            self.dead_letters.close()
        finally:
            try:
                self.client.close()  # leaves the group
            finally:
                if self.writer.workers is not None:
                    self.writer.workers.close()
