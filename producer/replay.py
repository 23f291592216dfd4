"""Replay snapshot folders as Kafka events: one JSON event per row, keyed by user_id.

Snapshots are replayed in event-time order, table by table; every file is validated against
the registry before the first event of its snapshot is sent. The producer is idempotent with
acks=all; every send is tracked, and the summary says how many events each topic acknowledged
and how many failed.

Memory does not grow with the snapshot. A snapshot is read twice: a validating pass over every
file, chunk by chunk (``validate.check_snapshot``: a bad file sends nothing, its error names the
file, line and column), then a sending pass that reads each file again a chunk at a time
(``validate.read_chunks``: each chunk checked again and compared with the one validated, typed,
encoded, sent).

The work per event is kept to the send itself: the events of a chunk of rows are encoded column by
column (``events.encode_frame``, the same bytes as ``events.encode_value`` row by row), their
partitions are computed for the whole chunk (``producer.partitioning``, the default partitioner's
choice) and every send of a topic shares one pair of delivery callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.partitioner import DefaultPartitioner
from tqdm import tqdm

from producer.pacing import RateLimiter, event_time_gap
from producer.partitioning import key_partitions
from streamflow import events, kafka_clients, schema
from streamflow.batch.validate import CheckedFile, check_snapshot, read_chunks
from streamflow.errors import ServiceUnavailable
from streamflow.kafka_clients import DELIVERY_TIMEOUT
from streamflow.kafka_topics import ensure_topics
from streamflow.topics import table_topics, topic_of

log = logging.getLogger("producer")

CHUNK_ROWS = 20_000
"""Rows encoded at once."""

SEND_BLOCK = 500
"""Events sent between two progress updates."""

MAX_PENDING = 100_000
"""Events sent but neither acknowledged nor failed yet, above which the replay waits for the
broker (down to half of it): kafka-python 3 does not bound its send buffer, so without it a
broker slower than the replay would let the backlog, and the memory, grow with the snapshot."""


@dataclass
class ReplayStats:
    sent: Counter = field(default_factory=Counter)
    acked: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ack(self, topic: str) -> None:
        with self._lock:
            self.acked[topic] += 1

    def fail(self, topic: str, error: BaseException | str) -> None:
        with self._lock:
            self.failed[topic] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{topic}: {error}")

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_acked(self) -> int:
        return sum(self.acked.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def unacknowledged(self) -> int:
        return self.total_sent - self.total_acked

    @property
    def pending(self) -> int:
        """Sent and still waiting for the broker's answer."""
        return self.total_sent - self.total_acked - self.total_failed

    def summary(self) -> str:
        rate = self.total_acked / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{'topic':40} {'sent':>10} {'acked':>10} {'failed':>8}"]
        for topic in sorted(self.sent):
            lines.append(f"{topic:40} {self.sent[topic]:>10} {self.acked[topic]:>10} {self.failed[topic]:>8}")
        lines.append(
            f"{'total':40} {self.total_sent:>10} {self.total_acked:>10} {self.total_failed:>8}"
            f"   ({self.seconds:.1f} s, {rate:,.0f} events/s)"
        )
        return "\n".join(lines)


def make_producer(
    bootstrap: str | None = None, delivery_timeout: float = DELIVERY_TIMEOUT, **overrides
) -> KafkaProducer:
    """The replay's producer (idempotent, acks=all), from the one Kafka module."""
    return kafka_clients.producer(
        "producer", delivery_timeout=delivery_timeout, kafka=kafka_clients.settings(bootstrap), **overrides
    )


def snapshot_order(folders: list[Path]) -> list[tuple[Path, str, date]]:
    """(folder, snapshot id, as_of) in event-time order."""
    items = [(f, f.name, schema.snapshot_as_of(f.name)) for f in folders]
    return sorted(items, key=lambda item: item[2])


def _records(frame: pd.DataFrame):
    """Rows of a typed frame as dicts of plain Python values (None for nulls), chunk by chunk: the
    input of the per-row reference encoding, events.encode_value."""
    for chunk in _chunks(frame):
        yield from chunk.astype(object).where(chunk.notna(), None).to_dict("records")


def _chunks(frame: pd.DataFrame):
    for start in range(0, len(frame), CHUNK_ROWS):
        yield frame.iloc[start : start + CHUNK_ROWS]


def _frames(checked: CheckedFile):
    """The typed rows of a validated file, CHUNK_ROWS at a time, read again from the file chunk by
    chunk (``read_chunks`` raises DataValidationError should the file have changed since)."""
    for chunk in read_chunks(checked, frame=True):
        yield from _chunks(chunk.frame)


class _Delivery:
    """The delivery callbacks of every send to one topic (one object per topic, not a closure
    per send)."""

    __slots__ = ("replayer", "stats", "topic")

    def __init__(self, replayer: Replayer, topic: str):
        self.replayer, self.stats, self.topic = replayer, replayer.stats, topic

    def ack(self, _metadata) -> None:
        self.stats.ack(self.topic)

    def fail(self, error: BaseException) -> None:
        self.stats.fail(self.topic, error)
        if not getattr(error, "retriable", False):
            self.replayer.producer_failed(error)


MAX_REPLACEMENTS = 10
"""Producer objects replaced in one replay before it gives up (the rest is reported unsent)."""


class Replayer:
    """Sends snapshot rows to Kafka with pacing and delivery tracking."""

    def __init__(
        self,
        producer: KafkaProducer,
        rate: float | None = None,
        speedup: float | None = None,
        progress: bool = False,
        factory=None,
    ):
        self.producer = producer
        delivery = producer.config["delivery_timeout_ms"] / 1000
        self.factory = factory or (lambda: make_producer(delivery_timeout=delivery))
        """Builds a replacement when the producer object has gone bad."""
        self.replacements = 0
        self._broken: BaseException | None = None
        self.limiter = RateLimiter(rate)
        self.speedup = speedup
        self.progress = progress
        self.stats = ReplayStats()
        self.stopped = threading.Event()
        self._deliveries: dict[str, _Delivery] = {}

    def _partitions(self, topic: str, keys: list[bytes]) -> Sequence[int | None]:
        """The partition of each key, as the producer's default partitioner would choose it; None
        (the producer chooses) when it has another partitioner or no metadata for the topic."""
        if type(self.producer.config.get("partitioner")) is DefaultPartitioner:
            try:
                partitions = self.producer.partitions_for(topic)
            except KafkaError:
                partitions = None
            if partitions:
                return key_partitions(keys, partitions)
        return [None] * len(keys)

    def _send(self, topic: str, keys: list[bytes], values: list[bytes], headers, bar) -> None:
        """Send one chunk of encoded events in order, paced, every send tracked."""
        send = self.producer.send
        stats = self.stats
        stopped = self.stopped
        wait = self.limiter.wait if self.limiter.rate else None
        delivery = self._deliveries.get(topic)
        if delivery is None:
            delivery = self._deliveries[topic] = _Delivery(self, topic)
        ack, fail = delivery.ack, delivery.fail
        partitions = self._partitions(topic, keys)
        for start in range(0, len(keys), SEND_BLOCK):
            end = start + SEND_BLOCK
            sent = 0
            if stats.pending > MAX_PENDING:
                self._wait_for_broker()
            try:
                for key, value, partition in zip(keys[start:end], values[start:end], partitions[start:end]):
                    if self._broken is not None:
                        self._replace_producer()
                        send = self.producer.send
                    if stopped.is_set():
                        break
                    sent += 1
                    try:
                        future = send(topic, key=key, value=value, headers=headers, partition=partition)
                    except KafkaTimeoutError as exc:  # buffer full and the broker is not taking data
                        stats.fail(topic, exc)
                    except KafkaError as exc:  # refused by the client (too large) or a broken producer
                        stats.fail(topic, exc)
                        if not isinstance(exc, MessageSizeTooLargeError):
                            self.producer_failed(exc)
                    else:
                        future.add_callback(ack)
                        future.add_errback(fail)
                    if wait is not None:
                        wait()
            finally:  # counted also when a send raises something else
                stats.sent[topic] += sent
                bar.update(sent)
            if stopped.is_set():
                return

    def _wait_for_broker(self) -> None:
        """Wait until the broker has answered for all but MAX_PENDING / 2 events. Every event is
        answered within the delivery timeout (acknowledged or failed); should none be answered for
        longer than that and a minute, the replay goes on (what stays unanswered is reported)."""
        stats = self.stats
        delivery = self.producer.config["delivery_timeout_ms"] / 1000
        answered, since = stats.total_sent - stats.pending, time.monotonic()
        while stats.pending > MAX_PENDING // 2 and self._broken is None and not self.stopped.is_set():
            time.sleep(0.005)
            now_answered = stats.total_sent - stats.pending
            if now_answered != answered:
                answered, since = now_answered, time.monotonic()
            elif time.monotonic() - since > delivery + 60:
                log.warning(
                    "no answer from the broker for %.0f s with %d events pending: sending on",
                    time.monotonic() - since,
                    stats.pending,
                )
                return

    def producer_failed(self, error: BaseException) -> None:
        """A send failed for a reason that retries do not cure: kafka-python 3.0 then fails every
        later send of the same producer object (seen after a broker refused a record), so the next
        send goes through a new one. Called from the producer's I/O thread."""
        if self._broken is None:
            self._broken = error

    def _replace_producer(self) -> None:
        error, old = self._broken, self.producer
        if self.replacements >= MAX_REPLACEMENTS:
            log.error(
                "the producer failed again (%s: %s) after %d replacements: stopping; the events "
                "not sent are reported",
                type(error).__name__,
                error,
                self.replacements,
            )
            self.stopped.set()
            return
        log.warning(
            "producer failed (%s: %s): replacing it; the events it did not deliver are counted as failed",
            type(error).__name__,
            error,
        )
        try:
            fresh = self.factory()
        except Exception as exc:  # noqa: BLE001 - the broker is away: keep the old one; its next
            log.warning("no new producer yet: %s", exc)  # failure asks again
            self._broken = None
            return
        kafka_clients.close_quietly(old, 10)
        self.producer = fresh
        self.replacements += 1
        self._broken = None

    def load_metadata(self, topics: list[str]) -> None:
        """Partitions of every topic before the first event: should the broker go away later, a
        send to a topic without metadata would block for max_block_ms, event after event."""

        def partitions(topic: str):
            try:
                return self.producer.partitions_for(topic)
            except KafkaError as exc:
                raise ServiceUnavailable(f"Kafka: no metadata for topic {topic} ({exc})") from None

        # All topics at once (the producer is thread-safe): their metadata comes in one or two
        # requests instead of one request per topic, each after the producer's retry backoff.
        with ThreadPoolExecutor(max_workers=max(1, len(topics)), thread_name_prefix="metadata") as pool:
            for _ in pool.map(partitions, topics):
                pass

    @staticmethod
    def _validate(folder: Path) -> dict[str, CheckedFile]:
        """The validating pass over a snapshot: raises DataValidationError (nothing of it sent)."""
        started = time.perf_counter()
        files = check_snapshot(folder)
        log.info(
            "validated %s: %d files, %s rows in %.1f s",
            folder,
            len(files),
            f"{sum(f.rows for f in files.values()):,}",
            time.perf_counter() - started,
        )
        return files

    def replay(
        self,
        folders: list[Path],
        tables: list[schema.Table] | None = None,
        flush_timeout: float | None = None,
    ) -> ReplayStats:
        tables = tables or list(schema.TABLES)
        if flush_timeout is None:
            # Every event has failed or been acknowledged after the delivery timeout; the margin is
            # for kafka-python, which stops expiring batches while it waits for a new producer id
            # (after an expired retry) from a broker that is away. What is still unacknowledged at
            # the end is reported (exit code 1).
            delivery = self.producer.config["delivery_timeout_ms"] / 1000
            flush_timeout = delivery + min(60.0, delivery)
        started = time.perf_counter()
        replay_id = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.load_metadata([topic_of(t) for t in tables])
        previous: date | None = None
        for folder, snapshot_id, as_of in snapshot_order(folders):
            files = self._validate(folder)  # every file, before the first event of the snapshot
            gap = event_time_gap(previous, as_of, self.speedup)
            if gap:
                log.info("pacing by event time: waiting %.1f s before %s", gap, snapshot_id)
                if self.stopped.wait(gap):
                    break
            previous = as_of
            total = sum(files[t.name].rows for t in tables)
            log.info("replaying %s (as_of %s): %d events", snapshot_id, as_of, total)
            with tqdm(total=total, unit="ev", desc=snapshot_id, disable=not self.progress) as bar:
                for table in tables:
                    hdrs = events.headers(table, as_of, replay=f"{snapshot_id}@{replay_id}")
                    topic = topic_of(table)  # read once per table, not per event
                    for chunk in _frames(files[table.name]):
                        if self.stopped.is_set():
                            break
                        keys, values = events.encode_frame(table, chunk, as_of, snapshot_id)
                        self._send(topic, keys, values, hdrs, bar)
            if self.stopped.is_set():
                log.warning("stopped before the end of %s", snapshot_id)
                break
        log.info("flushing %d unacknowledged events", self.stats.unacknowledged)
        try:
            self.producer.flush(timeout=flush_timeout)
        except KafkaTimeoutError:
            log.error("flush timed out after %.0f s", flush_timeout)
        self.stats.seconds = time.perf_counter() - started
        return self.stats


def prepare_topics(partitions: int | None = None) -> None:
    ensure_topics(table_topics(), partitions=partitions)
