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
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError

from consumer.dead_letter import DeadLetterError, DeadLetterQueue
from consumer.metrics import ConsumerMetrics
from consumer.outage import Outage, OutageExceeded, Watchdog
from consumer.write_errors import Refused, describe, isolate
from consumer.write_workers import Decoded, LocalWrite, WriteWorkers
from streamflow import config, db_roles, kafka_clients, schema
from streamflow.feature_store import database_errors, get_store, push

log = logging.getLogger("consumer")

WRITING_POLL_MS = 20
"""Milliseconds a poll waits for records while a batch is being written."""


@dataclass
class ConsumerSettings:
    group_id: str = config.DEFAULT_CONSUMER_GROUP
    bootstrap: str = ""
    max_batch: int = 5000
    """Records one poll returns at most (``max_poll_records``)."""
    max_write_batch: int = 50_000
    """Events gathered from several polls while a batch is being written, at most: the loop waits
    for the write before it polls more (what is polled but not written is held in memory)."""
    poll_timeout_ms: int = 500
    """Milliseconds a poll waits for records (longer while the member joins its group:
    ``kafka_clients.poll_timeout_ms``)."""
    retry_initial: float = 0.5
    retry_max: float = 15.0
    until_drained: bool = False
    max_idle_seconds: float | None = None
    instance_id: str | None = None
    """Static group membership (KIP-345): a consumer restarted with the same instance id takes its
    partitions back at once, without waiting for the dead one's session to expire."""
    max_outage: float | None = None
    """Seconds Kafka may stay unreachable before the consumer gives up (None: wait forever)."""
    probe_interval: float = 2.0
    """While no records come, seconds between two checks that the broker still answers."""
    join_timeout: float = 30.0
    """Seconds a member may stay outside the group (not joined, no partition) before its client
    is replaced (a join that never completes, e.g. one sent just before a broker restart)."""
    hang_limit: float | None = None
    """Seconds a single client call may run before the watchdog closes the client (None: the
    request timeout plus 30 s)."""
    commit_timeout: float | None = None
    """Seconds one commit may retry inside the client before it counts as failed (None: the request
    timeout, 30 s, so that a commit sent during a short broker restart is made once the broker is
    back). A client whose commits keep failing for ``join_timeout`` is replaced."""
    write_processes: int = 2
    """Worker processes that push the batches' tables (``consumer.push_workers``), so that two
    tables are written at once outside the loop's interpreter lock; 0: the pushes run in two
    threads of the loop's own process."""
    switch_interval: float = 0.0005
    """Seconds a thread may hold Python's interpreter lock while another waits for it
    (``sys.setswitchinterval``, set while the loop runs; Python's default is 0.005): the loop's
    thread parses records in pure Python most of the time, and a writer thread gives the lock up
    and takes it back on every Arrow kernel and PostgreSQL round trip (docs/explanation/consumer.md)."""
    leave_timeout: float = 10.0
    """Seconds a stopping consumer keeps trying to commit the written batches whose commit failed
    (the group was rebalancing), back in its group, before it leaves; what stays uncommitted is
    read again by the partitions' next owner."""
    stall_timeout: float = 20.0
    """Seconds without records while assigned partitions lag before the client counts as stuck
    and is replaced (kafka-python 3.0 was seen to stop fetching after a broker restart without
    raising anything)."""


@dataclass
class Batch:
    """Records polled and not written yet: per table (in the order read), and the next offset of
    every partition they cover (committed once written)."""

    records: dict[TopicPartition, list]
    tables: dict[str, list]
    next_offsets: dict[TopicPartition, int]

    @property
    def events(self) -> int:
        return sum(len(recs) for recs in self.records.values())

    def then(self, later: Batch) -> Batch:
        """This batch followed by one polled after it, as one batch (the later's records after this
        one's in each table, so newest-wins sees them in the order they were read)."""
        records = {tp: list(recs) for tp, recs in self.records.items()}
        for tp, recs in later.records.items():
            records.setdefault(tp, []).extend(recs)
        tables = {name: list(recs) for name, recs in self.tables.items()}
        for name, recs in later.tables.items():
            tables.setdefault(name, []).extend(recs)
        offsets = dict(self.next_offsets)
        for tp, offset in later.next_offsets.items():
            offsets[tp] = max(offset, offsets.get(tp, offset))
        return Batch(records, tables, offsets)


class StreamConsumer:
    """One member of the consumer group."""

    _workers: WriteWorkers | None = None
    """The worker processes that decode and push (None: both run in this process's writer threads)."""

    def __init__(
        self,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics | None = None,
        stopping: threading.Event | None = None,
        workers: WriteWorkers | None = None,
    ):
        """``workers``: write workers already starting (this consumer closes them), else started
        here when ``settings.write_processes`` > 0."""
        self.settings = settings
        self.kafka = kafka_clients.settings(settings.bootstrap or None)
        self.settings.bootstrap = self.kafka.bootstrap_servers
        self.metrics = metrics if metrics is not None else ConsumerMetrics()
        self.stopping = stopping if stopping is not None else threading.Event()
        self.topics = [t.topic for t in schema.TABLES]
        self.outage = Outage(self.kafka.bootstrap_servers, self.stopping, max_outage=settings.max_outage)
        self.rebuilds = 0
        self._in_flight: tuple[list[Future], Batch, float] | None = None
        """The batch the writer threads are writing (its futures, the batch, when handed over), not
        committed yet."""
        self._gathered: Batch | None = None
        """What was polled and decoded while ``_in_flight`` was written: the next batch to write."""
        self._giving_up = threading.Event()
        """Set when the loop ends for another reason than a stop request (an outage beyond its
        budget): a write still retrying stops, as on a stop request."""
        self._client_state()
        self._last_waiting = 0.0
        # The write workers import Feast and open the store while this process connects to Kafka.
        if workers is None and settings.write_processes > 0:
            workers = WriteWorkers(settings.write_processes)
        self._workers = workers
        try:
            self.consumer = self.outage.connect("connecting the consumer", self._new_consumer)
            self.dead_letters = self.outage.connect(
                "connecting the dead-letter producer", lambda: DeadLetterQueue(kafka=self.kafka)
            )
            # The role may write what the consumer writes (one line saying to run `streamflow apply`
            # if not); then the feature store is open before joining, not in the first batch.
            db_roles.check_ready("the consumer")
            if self._workers is not None:
                self._workers.wait_ready()
            else:
                with database_errors("opening the feature store"):
                    get_store().list_feature_views()
        except BaseException:
            if self._workers is not None:
                self._workers.close()
            raise
        self._subscribe()

    def _new_consumer(self) -> KafkaConsumer:
        return kafka_clients.group_consumer(
            self.settings.group_id,
            kafka=self.kafka,
            group_instance_id=self.settings.instance_id,
            max_poll_records=self.settings.max_batch,
        )

    def _subscribe(self) -> None:
        for topic in self.topics:  # load topic metadata first, so the first assignment sees partitions
            self.consumer.partitions_for_topic(topic)
        self.consumer.subscribe(self.topics)

    def rebuild(self) -> bool:
        """Close a client that keeps failing and build a new one, which joins the group again and
        starts at the group's committed offsets (what was not committed is read again)."""
        self.outage.rebuild_wanted = False
        log.warning(
            "replacing the Kafka consumer client (%d failed calls in a row); the new one rejoins "
            "group %s at the committed offsets",
            self.outage.failures,
            self.settings.group_id,
        )
        self._close_consumer()
        try:
            self.consumer = self._new_consumer()
            self._subscribe()
        except Exception as exc:  # noqa: BLE001 - not reachable yet: try again after the backoff
            self.outage.failed("building a new consumer", exc)
            self.outage.rebuild_wanted = True
            return False
        self.rebuilds += 1
        self._client_state()  # the new client starts at the group's committed offsets
        return True

    def _client_state(self) -> None:
        """What the loop tracks about its current client (a new client starts afresh)."""
        self._stalled_since: float | None = None
        self._unjoined_since: float | None = None
        self._uncommitted_since: float | None = None
        self._pending: dict[TopicPartition, int] = {}
        """Next offsets of written batches whose commit failed: committed with the next batch, or
        retried on their own while no records come (else a commit lost to a broker restart at the
        end of a stream would never be made, and the group would never catch up)."""
        self._last_commit_try = 0.0
        self._committed: dict[TopicPartition, int] = {}
        """What this client has committed: a batch read again after a rejoin (the client restarts at
        the group's offsets, which may be below offsets committed from ``_pending`` since) never moves
        a committed offset back."""

    def _close_hung_consumer(self) -> None:
        """From the watchdog's thread: the hung call returns or raises, and the loop builds a new
        client (no commit from the old one)."""
        self.outage.rebuild_wanted = True
        self._close_consumer()

    def _close_consumer(self) -> None:
        kafka_clients.close_quietly(self.consumer, timeout=2)  # no commit; leaves the group

    # -- one batch ------------------------------------------------------------------------------

    def batch_of(self, records: dict[TopicPartition, list]) -> Batch:
        """A polled batch's records by table (decoded with the table's write); records of a topic of
        no table go to the dead-letter topic (sent and acknowledged here: DeadLetterError when they
        cannot be)."""
        tables: dict[str, list] = defaultdict(list)
        next_offsets: dict[TopicPartition, int] = {}
        unknown: list = []
        for tp, recs in records.items():
            self.metrics.count(self.metrics.consumed, tp.topic, len(recs))
            table = schema.table_for_topic(tp.topic)
            (tables[table.name] if table else unknown).extend(recs)
            next_offsets[tp] = recs[-1].offset + 1
        for rec in unknown:  # a topic of no table (the subscription names only the registry's)
            self._dead_letter(rec, f"unknown table: topic {rec.topic!r} belongs to no table of the registry")
        if unknown:
            self.dead_letters.flush()
        return Batch(records, dict(tables), next_offsets)

    def _dead_letter(self, rec, reason: str, field: str | None = None) -> None:
        self.dead_letters.send(rec, reason, field)
        self.metrics.count(self.metrics.dead_lettered, rec.topic)

    def write_table(self, name: str, records: list) -> list[tuple[object, str, str | None]]:
        """Decode and write one table's records of a batch, retrying until they are written
        (StopRequested when asked to stop meanwhile); returns the dead letters ``(record, reason,
        field)``: the invalid events (``event_batch``) and those the database refused for good.

        A write that fails for a transient reason is retried whole, with backoff. One that fails
        permanently is written in halves, and so on, until the refused rows stand alone
        (``write_errors.isolate``); the halves go through the same push, so newest-wins and
        idempotence hold, and what was written before a transient error is written again,
        unchanged. Runs in a writer thread: no Kafka client call here (the loop sends the dead
        letters, then commits)."""
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
                if self._wait_or_stop(delay):
                    raise StopRequested() from None
                delay = min(delay * 2, self.settings.retry_max)
        if attempt:
            log.info("write succeeded after %d retries (%s)", attempt, name)
        letters: list[tuple[object, str, str | None]] = [
            (records[position], reason, field) for position, reason, field in decoded.bad
        ]
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
        self._written(name, records, {id(rec) for rec, _, _ in letters})
        return letters

    def _write_once(self, table: schema.Table, records: list) -> tuple[Decoded, list[Refused]]:
        """One attempt at a table's write: decode its records, then push the frame, in halves
        around the rows the database refuses for good."""
        where = f"batch of {table.topic}"
        with self._table_write() as writing:
            decoded = writing.decode(table, records, datetime.now(timezone.utc))
            rows = decoded.rows

            def write(start: int, stop: int) -> None:
                if (start, stop) != (0, rows) and (self.stopping.is_set() or self._giving_up.is_set()):
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

    def _table_write(self):
        """A table's write session: on a worker process, or in this thread."""
        if self._workers is not None:
            return self._workers.session()
        return contextlib.nullcontext(LocalWrite(push))

    def _failed_for_good(self, name: str, rows: int, start: int, stop: int, exc: BaseException) -> None:
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
        while not self._giving_up.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.stopping.wait(min(left, 0.5)):
                return True
        return True

    def commit(self, next_offsets: dict[TopicPartition, int]) -> bool:
        """Commit the next offsets of a written batch, with those of earlier written batches whose
        commit failed (every offset below them is written), for the partitions this member still
        holds (a partition that moved is read again by its new owner, whose commits stand)."""
        offsets = {}
        if self._pending:
            held = self.outage.call("assignment", self.consumer.assignment, default=set()) or set()
            offsets = {tp: off for tp, off in self._pending.items() if tp in held}
        for tp, off in next_offsets.items():
            offsets[tp] = max(off, offsets.get(tp, off), self._committed.get(tp, off))
        if not offsets:
            self._pending = {}
            return True
        self._last_commit_try = time.monotonic()
        try:
            with self.outage.watching("commit"):
                self.consumer.commit(
                    {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                    timeout_ms=None
                    if self.settings.commit_timeout is None
                    else int(self.settings.commit_timeout * 1000),
                )
        except CommitFailedError as exc:
            # The group rebalanced while we wrote: the new owner re-reads these (idempotent) events.
            log.warning("commit failed after a rebalance; events will be redelivered: %s", exc)
            self._pending = offsets
            self._commit_failed()
            return False
        except OutageExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - the offsets stay pending and are committed later
            self._pending = offsets
            self.outage.failed("commit (the offsets stay pending and are committed later)", exc)
            self._commit_failed()
            return False
        self._pending = {}
        self._committed.update(offsets)
        self._uncommitted_since = None
        self.outage.ok()
        self.metrics.committed()
        return True

    def _commit_failed(self) -> None:
        """Commits that keep failing while records still come (a member whose group state never
        recovers from a broker restart: it fetches, but every commit is refused) mean a stuck client."""
        now = time.monotonic()
        if self._uncommitted_since is None:
            self._uncommitted_since = now
        elif now - self._uncommitted_since > self.settings.join_timeout:
            log.warning(
                "no commit has succeeded for %.0f s although batches were written (member %s): "
                "the client is stuck",
                now - self._uncommitted_since,
                kafka_clients.member_state(self.consumer),
            )
            self._uncommitted_since = None
            self.outage.rebuild_wanted = True

    def retry_commit(self) -> None:
        """While no records come: commit what was written but not committed."""
        if not self._pending or time.monotonic() - self._last_commit_try < self.settings.probe_interval:
            return
        if not kafka_clients.joined(self.consumer):  # while it rejoins, a commit is refused anyway
            return
        if self.commit({}):
            log.info(
                "pending offsets settled: written batches whose commit had failed are committed "
                "(or their partitions moved to another member)"
            )

    # -- the loop -------------------------------------------------------------------------------

    def drained(self) -> bool:
        """Whether every assigned partition is consumed to its end and committed; False when Kafka
        does not say."""
        if self._pending:
            return False
        assigned = self.outage.call("assignment", self.consumer.assignment, default=set())
        if not assigned:
            return False
        ends = self.outage.call(
            "end_offsets", self.consumer.end_offsets, list(assigned), timeout_ms=self.kafka.request_timeout_ms
        )
        if ends is None:
            return False
        for tp in assigned:
            position = self.outage.call(
                "position", self.consumer.position, tp, timeout_ms=self.kafka.request_timeout_ms
            )
            if position is None or position < ends[tp]:
                return False
        self.outage.ok()
        return True

    def probe(self) -> None:
        """While no records come: does the broker still answer (ends or extends an outage), and
        does the client still fetch what the assigned partitions hold?"""
        assigned = self.outage.call("assignment", self.consumer.assignment, default=set())
        if not assigned:
            # Nothing to ask about (a member of a large group may own no partition). No metadata
            # refresh either: a forced re-bootstrap here kept a joining member from ever getting
            # its assignment. But a member that stays outside the group has a stuck client.
            self._stalled_since = None
            self._waiting("no partition assigned")
            self._check_joined()
            return
        self._check_joined()  # assigned partitions, yet outside the group: commits are refused
        # One request, bounded; positions as the client knows them (asking for them would block
        # while the group rebalances and keep this member from rejoining).
        ends = self.outage.call("end_offsets", self.consumer.end_offsets, list(assigned), timeout_ms=3_000)
        if ends is None:
            return
        self.outage.ok()
        behind = unknown = 0
        for tp in assigned:
            position = kafka_clients.known_position(self.consumer, tp)
            if position is None:  # resolved within a moment when the coordinator works
                unknown += 1
            else:
                behind += max(0, ends.get(tp, 0) - position)
        now = time.monotonic()
        if behind or unknown:
            self._waiting(
                f"{len(assigned)} partitions assigned, {behind} records behind, "
                f"{unknown} without a known position"
            )
        if not behind and not unknown:
            self._stalled_since = None
        elif self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since > self.settings.stall_timeout:
            log.warning(
                "no records for %.0f s although the assigned partitions hold %d more (%d without a "
                "known position): the client is stuck",
                now - self._stalled_since,
                behind,
                unknown,
            )
            self._stalled_since = None
            self.outage.rebuild_wanted = True

    def _check_joined(self) -> None:
        now = time.monotonic()
        if kafka_clients.joined(self.consumer):
            self._unjoined_since = None
        elif self._unjoined_since is None:
            self._unjoined_since = now
        elif now - self._unjoined_since > self.settings.join_timeout:
            log.warning(
                "not in group %s for %.0f s (member %s): the client is stuck joining",
                self.settings.group_id,
                now - self._unjoined_since,
                kafka_clients.member_state(self.consumer),
            )
            self._unjoined_since = None
            self.outage.rebuild_wanted = True

    def _waiting(self, why: str) -> None:
        """While no records come: one line per 30 s with what the client knows of its group."""
        now = time.monotonic()
        if now - self._last_waiting < 30:
            return
        self._last_waiting = now
        log.info("waiting for records: %s; member %s", why, kafka_clients.member_state(self.consumer))

    def poll(self) -> dict:
        """Poll for records: ``poll_timeout_ms`` at most when idle; while a batch is written, a few
        milliseconds at a time, so that a finished write is committed and what was gathered is
        handed over at once (a poll waits for its timeout when no records come). The member's join
        still gets a long poll (``kafka_clients.poll_timeout_ms``)."""
        wanted = self.settings.poll_timeout_ms
        if self._in_flight is not None:
            wanted = min(wanted, WRITING_POLL_MS)
        timeout = kafka_clients.poll_timeout_ms(self.consumer, wanted)
        records = self.outage.call("poll", self.consumer.poll, timeout_ms=timeout, default={})
        if records:
            self.outage.ok()
        return records

    def run(self) -> dict[str, float]:
        log.info("consumer of group %s joining, topics: %s", self.settings.group_id, ", ".join(self.topics))
        idle_since = time.monotonic()
        last_report = last_probe = time.monotonic()
        hang_limit = self.settings.hang_limit or self.kafka.request_timeout_ms / 1000 + 30
        watchdog = Watchdog(self.outage, hang_limit, self._close_hung_consumer).start()
        writers = ThreadPoolExecutor(
            max_workers=self.settings.write_processes or 2, thread_name_prefix="writer"
        )
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(self.settings.switch_interval)
        try:
            while not self.stopping.is_set():
                self.outage.check_budget()
                if self.outage.rebuild_wanted:
                    self._abandon_in_flight()  # the new client reads it again from the committed offsets
                    self.rebuild()
                    continue
                if self._in_flight is not None and all(f.done() for f in self._in_flight[0]):
                    if not self._finish_in_flight():  # written: committed before the next poll
                        break
                if self._in_flight is None and self._gathered is not None:
                    self._hand_over(writers)
                records = self.poll()
                if not records:
                    if self._in_flight is not None:
                        if not self._finish_in_flight():
                            break
                        continue  # the next loop hands over what was gathered
                    now = time.monotonic()
                    if not kafka_clients.joined(self.consumer):
                        idle_since = now  # idle means nothing to do, which only a member can tell
                    if now - last_probe > self.settings.probe_interval:
                        last_probe = now
                        self.probe()
                    self.retry_commit()
                    if self.settings.until_drained and self.outage.since is None and self.drained():
                        log.info("drained: every assigned partition is consumed up to its end")
                        break
                    if self.settings.max_idle_seconds and now - idle_since > self.settings.max_idle_seconds:
                        log.info("idle for %.0f s: stopping", self.settings.max_idle_seconds)
                        break
                    continue
                idle_since = last_probe = time.monotonic()
                self._stalled_since = None
                try:
                    batch = self.batch_of(records)
                except DeadLetterError as exc:
                    log.warning("%s: re-reading the batch", exc)
                    self.dead_letters.reset()
                    self.rewind(records)
                    continue
                self._gathered = batch if self._gathered is None else self._gathered.then(batch)
                if self._in_flight is not None and self._gathered.events >= self.settings.max_write_batch:
                    if not self._finish_in_flight():  # enough gathered: wait for the writes
                        break
                if self.outage.rebuild_wanted:  # the next loop replaces the client: it re-reads the batch
                    continue
                if self._in_flight is None and self._gathered is not None:
                    self._hand_over(writers)
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    log.info("progress: %s", self.metrics.snapshot())
            if not self.outage.rebuild_wanted:  # stopping: what was polled is written and committed
                if self._in_flight is None or self._finish_in_flight():
                    if self._gathered is not None:
                        self._hand_over(writers)
                        self._finish_in_flight()
                self._commit_before_leaving()
        finally:
            self._giving_up.set()  # a write still retrying gives up: this member is done
            self._abandon_in_flight()
            try:
                writers.shutdown(wait=True)
                watchdog.stop()
                self.close()
            finally:
                sys.setswitchinterval(switch_interval)  # also when closing raises
        stats = self.metrics.snapshot()
        stats["kafka_errors"] = self.outage.total_errors
        stats["client_rebuilds"] = self.rebuilds
        stats["client_hangs"] = watchdog.hangs
        log.info("stopped: %s", stats)
        return stats

    def _commit_before_leaving(self) -> None:
        """Stopping with written batches whose commit failed: poll the member back into its group
        and commit them, for ``leave_timeout`` seconds at most. Records polled meanwhile are
        dropped (not committed: read again)."""
        deadline = time.monotonic() + self.settings.leave_timeout
        while self._pending and time.monotonic() < deadline:
            if kafka_clients.joined(self.consumer) and self.commit({}):
                log.info("stopping: the written batches whose commit had failed are committed")
                return
            assigned = self.outage.call("assignment", self.consumer.assignment, default=set()) or set()
            if assigned:
                self.outage.call("pause", self.consumer.pause, *assigned, default=None)
            timeout = kafka_clients.poll_timeout_ms(self.consumer, 200)
            timeout = max(1, min(timeout, int((deadline - time.monotonic()) * 1000)))
            self.outage.call("poll", self.consumer.poll, timeout_ms=timeout, default={})
        if self._pending:
            log.warning(
                "stopping with written events not committed (partitions %s): their next owner reads "
                "them again",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(self._pending)),
            )

    def _hand_over(self, writers: ThreadPoolExecutor) -> None:
        """Hand what was gathered to the writer threads (each table is decoded, then pushed online
        and offline; tables are independent, so two write at once). Each returns its dead letters."""
        batch, self._gathered = self._gathered, None
        assert batch is not None  # callers check it
        futures = [writers.submit(self.write_table, name, recs) for name, recs in batch.tables.items()]
        self._in_flight = (futures, batch, time.perf_counter())

    def _finish_in_flight(self) -> bool:
        """Wait for the batch being written, then commit it; False when the loop must stop (asked
        to stop while its writes were retried: abandoned, not committed).

        When its poison events cannot be dead-lettered, it is read again, and so is what was
        gathered meanwhile (whose partitions may be ahead of it): neither is committed."""
        assert self._in_flight is not None  # callers check it
        futures, batch, started = self._in_flight
        self._in_flight = None
        try:
            stopped = False
            letters = []
            for future in futures:  # every one, even after a stop: no write left running
                try:
                    letters += future.result()
                except StopRequested:
                    stopped = True
            if stopped:
                log.warning(
                    "stop requested while a write was retried or split: batch abandoned, not committed"
                )
                self._gathered = None  # read again after a restart, as the abandoned batch
                return False
            self.metrics.write_latency.observe(time.perf_counter() - started)
            for rec, reason, field in letters:  # invalid events, and those the database refused for good
                self._dead_letter(rec, reason, field)
            if letters:
                self.dead_letters.flush()
        except DeadLetterError as exc:
            log.warning("%s: re-reading the batch", exc)
            self.dead_letters.reset()
            gathered, self._gathered = self._gathered, None
            self.rewind(batch.records, *([gathered.records] if gathered else []))
            return True
        self.commit(batch.next_offsets)
        return True

    def _abandon_in_flight(self) -> None:
        """Let the batch being written finish (its rows are written, idempotently) without
        committing it, and drop what was gathered: both are read again from the committed offsets."""
        self._gathered = None
        if self._in_flight is None:
            return
        futures = self._in_flight[0]
        self._in_flight = None
        for future in futures:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - StopRequested or a write error: not committed either way
                pass

    def rewind(self, *batches: dict[TopicPartition, list]) -> None:
        """Read batches again (not committed) from their first offset per partition; when seeking
        fails, a new client starts at the committed offsets, which is the same."""
        first: dict[TopicPartition, int] = {}
        for records in batches:
            for tp, recs in records.items():
                first[tp] = min(recs[0].offset, first.get(tp, recs[0].offset))
        for tp, offset in first.items():
            if self.outage.call("seek", self.consumer.seek, tp, offset, default=False) is False:
                self.outage.rebuild_wanted = True
                return

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        try:
            self.dead_letters.close()
        finally:
            try:
                self._close_consumer()  # leaves the group
            finally:
                if self._workers is not None:
                    self._workers.close()


class StopRequested(Exception):
    """Raised inside a retry loop when the consumer is asked to stop."""
