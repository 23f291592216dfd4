"""The consumer loop: poll a batch, validate, write online and offline, then commit.

Guarantees (shared/DESIGN.md):
* at-least-once: offsets are committed only after the batch's writes and its dead-letter
  records are acknowledged; a failed write is retried with backoff, never committed past;
* idempotent and newest-wins writes come from our Feast store classes, so a redelivered batch
  changes nothing and an older event never overwrites a newer value;
* an invalid event goes to the dead-letter topic with its reason and source offset, is counted,
  and the events around it are written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from consumer.dead_letter import DeadLetterError, DeadLetterQueue
from consumer.metrics import ConsumerMetrics
from streamflow import config, events, schema
from streamflow.errors import ServiceUnavailable
from streamflow.feature_store import database_errors, get_store, push
from streamflow.push_validation import PushValidationError, push_columns

log = logging.getLogger("consumer")


@dataclass
class ConsumerSettings:
    group_id: str = "streamflow-consumer"
    bootstrap: str = ""
    max_batch: int = 5000
    poll_timeout_ms: int = 500
    retry_initial: float = 0.5
    retry_max: float = 15.0
    until_drained: bool = False
    max_idle_seconds: float | None = None
    instance_id: str | None = None
    """Static group membership (KIP-345): a consumer restarted with the same instance id takes its
    partitions back at once, without waiting for the dead one's session to expire."""


_NAT = np.iinfo(np.int64).min
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def utc_times(values: list[datetime | None]) -> pd.Series:
    """UTC datetimes (None = NaT) as a datetime64[ns, UTC] column, converting each distinct value once.

    The events of a snapshot share their event time and dates repeat, so this is a lookup per
    event instead of pandas' per-object datetime inference.
    """
    nanos: dict[datetime | None, int] = {None: _NAT}
    for value in values:
        if value not in nanos:
            nanos[value] = (value - _EPOCH) // _MICROSECOND * 1_000
    stamps = np.fromiter((nanos[v] for v in values), dtype=np.int64, count=len(values))
    return pd.Series(pd.to_datetime(stamps.view("datetime64[ns]"), utc=True))


def events_frame(table: schema.Table, batch: list[events.Event]) -> pd.DataFrame:
    """A push frame for one table; of several events of one user and time, the last one.

    Every column is built in its registry dtype straight from the decoded (already type-checked)
    values.
    """
    columns = {
        schema.KEY: pd.Series(pd.array([e.user_id for e in batch], dtype="string")),
        schema.SNAPSHOT_TIME: utc_times([e.event_time for e in batch]),
    }
    for col in table.columns:
        values = [e.values[col.name] for e in batch]
        columns[col.name] = utc_times(values) if col.kind == "date" else pd.Series(pd.array(values, dtype=col.pandas_dtype))
    columns[schema.EVENT_SNAPSHOT] = pd.Series(pd.array([e.snapshot for e in batch], dtype="string"))
    frame = pd.DataFrame(columns, columns=push_columns(table))
    return frame.drop_duplicates([schema.KEY, schema.SNAPSHOT_TIME], keep="last")


class StreamConsumer:
    """One member of the consumer group."""

    def __init__(self, settings: ConsumerSettings, metrics: ConsumerMetrics | None = None):
        self.settings = settings
        self.settings.bootstrap = settings.bootstrap or config.kafka_bootstrap()
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.stopping = threading.Event()
        self.topics = [t.topic for t in schema.TABLES]
        try:
            self.consumer = KafkaConsumer(
                bootstrap_servers=self.settings.bootstrap,
                group_id=settings.group_id,
                client_id=f"streamflow-consumer-{settings.group_id}",
                group_instance_id=settings.instance_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=settings.max_batch,
                max_poll_interval_ms=600_000,
                session_timeout_ms=15_000,
                heartbeat_interval_ms=3_000,
                fetch_max_bytes=32 * 1024 * 1024,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                # kafka-python backs off up to 30 s between reconnects (Java clients: 1 s), which
                # kept the consumer away for half a minute after a broker restart.
                reconnect_backoff_max_ms=2_000,
            )
            self.dead_letters = DeadLetterQueue(self.settings.bootstrap)
        except KafkaError as exc:
            raise ServiceUnavailable(f"Kafka at {self.settings.bootstrap} is not reachable ({exc})") from None
        # Open the feature store (Feast import, registry) before joining, not in the first batch.
        with database_errors("opening the feature store"):
            get_store().list_feature_views()
        for topic in self.topics:  # load topic metadata first, so the first assignment sees partitions
            self.consumer.partitions_for_topic(topic)
        self.consumer.subscribe(self.topics)

    # -- one batch ------------------------------------------------------------------------------

    def process(self, records: dict[TopicPartition, list]) -> dict[TopicPartition, int]:
        """Validate and write one polled batch; returns the next offset per partition."""
        good: dict[str, list[events.Event]] = defaultdict(list)
        good_records: dict[str, list] = defaultdict(list)
        next_offsets: dict[TopicPartition, int] = {}
        now = datetime.now(timezone.utc)
        for tp, recs in records.items():
            self.metrics.count(self.metrics.consumed, tp.topic, len(recs))
            table = schema.table_for_topic(tp.topic)
            for rec in recs:
                try:
                    event = events.decode(rec.topic, rec.key, rec.value, now=now, table=table)
                except events.InvalidEvent as exc:
                    self.dead_letters.send(rec, exc.reason, exc.field)
                    self.metrics.count(self.metrics.dead_lettered, rec.topic)
                    continue
                good[event.table.name].append(event)
                good_records[event.table.name].append(rec)
            next_offsets[tp] = recs[-1].offset + 1
        self._write_with_retry(good, good_records)
        self.dead_letters.flush()
        return next_offsets

    def _write(self, good: dict[str, list[events.Event]], good_records: dict[str, list]) -> None:
        started = time.perf_counter()
        for name, batch in good.items():
            table = schema.table(name)
            try:
                written = push(table, events_frame(table, batch), where=f"batch of {table.topic}")
            except PushValidationError as exc:
                # Cannot happen for decoded events; if it does, keep the flow and the evidence.
                log.error("batch of %s rejected by push validation: %s", name, exc)
                for rec in good_records[name]:
                    self.dead_letters.send(rec, f"push validation: {exc}")
                    self.metrics.count(self.metrics.dead_lettered, rec.topic)
                continue
            self.metrics.count(self.metrics.written, name, len(batch))
            log.debug("wrote %d rows (%d events) of %s", written, len(batch), name)
        done = time.time()
        self.metrics.write_latency.observe(time.perf_counter() - started)
        for recs in good_records.values():
            for rec in recs:
                if rec.timestamp and rec.timestamp > 0:
                    self.metrics.freshness.observe(max(0.0, done - rec.timestamp / 1000))

    def _write_with_retry(self, good, good_records) -> None:
        delay = self.settings.retry_initial
        attempt = 0
        while True:
            try:
                self._write(good, good_records)
                if attempt:
                    log.info("write succeeded after %d retries", attempt)
                return
            except Exception as exc:  # noqa: BLE001 - any failed write is retried, never committed
                attempt += 1
                self.metrics.retried()
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("write failed (attempt %d), retrying in %.1f s: %s: %s",
                            attempt, delay, type(exc).__name__, first[:300])
                if self.stopping.wait(delay):
                    raise StopRequested() from None
                delay = min(delay * 2, self.settings.retry_max)

    def commit(self, next_offsets: dict[TopicPartition, int]) -> bool:
        if not next_offsets:
            return True
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()})
        except CommitFailedError as exc:
            # The group rebalanced while we wrote: the new owner re-reads these (idempotent) events.
            log.warning("commit failed after a rebalance; events will be redelivered: %s", exc)
            return False
        except KafkaError as exc:
            # Commits are cumulative: the next successful one covers these offsets too.
            log.warning("commit failed (%s); the next commit will cover these offsets", exc)
            return False
        self.metrics.committed()
        return True

    # -- the loop -------------------------------------------------------------------------------

    def drained(self) -> bool:
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        ends = self.consumer.end_offsets(list(assigned))
        return all(self.consumer.position(tp) >= ends[tp] for tp in assigned)

    def run(self) -> dict[str, float]:
        log.info("consumer of group %s joining, topics: %s", self.settings.group_id, ", ".join(self.topics))
        idle_since = time.monotonic()
        last_report = time.monotonic()
        try:
            while not self.stopping.is_set():
                records = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
                if not records:
                    if self.settings.until_drained and self.drained():
                        log.info("drained: every assigned partition is consumed up to its end")
                        break
                    if self.settings.max_idle_seconds and time.monotonic() - idle_since > self.settings.max_idle_seconds:
                        log.info("idle for %.0f s: stopping", self.settings.max_idle_seconds)
                        break
                    continue
                idle_since = time.monotonic()
                try:
                    next_offsets = self.process(records)
                except StopRequested:
                    log.warning("stop requested during retries: batch abandoned, not committed")
                    break
                except DeadLetterError as exc:
                    log.warning("%s: re-reading the batch", exc)
                    for tp, recs in records.items():
                        self.consumer.seek(tp, recs[0].offset)
                    continue
                self.commit(next_offsets)
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    log.info("progress: %s", self.metrics.snapshot())
        finally:
            self.close()
        stats = self.metrics.snapshot()
        log.info("stopped: %s", stats)
        return stats

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        try:
            self.dead_letters.close()
        finally:
            self.consumer.close()  # leaves the group


class StopRequested(Exception):
    """Raised inside a retry loop when the consumer is asked to stop."""
