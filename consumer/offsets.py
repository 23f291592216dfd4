"""The commit protocol of one consumer client: which offsets are written, which are committed.

1. A batch is written (every table, every dead letter acknowledged); then its next offsets are
   committed (:meth:`Offsets.commit`), for the partitions the member still holds.
2. A commit that fails (the group rebalanced, the coordinator is away) leaves its offsets
   *pending*: they go with the next batch's commit, or on their own while no records come
   (:meth:`Offsets.retry`), so that a commit lost at the end of a stream is still made.
3. An offset never moves back: a batch read again after a rejoin (the client restarts at the
   group's offsets) commits at least what this client committed before.
4. A stopping member with pending offsets polls itself back into its group and commits them, for
   ``leave_timeout`` seconds at most (:meth:`Offsets.settle_before_leaving`); what stays pending
   is read again by the partitions' next owner.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError

from consumer.health import ClientHealth
from consumer.metrics import ConsumerMetrics
from consumer.outage import Outage, OutageExceeded
from consumer.settings import ConsumerSettings
from streamflow import kafka_clients

log = logging.getLogger("consumer")


class Offsets:
    """The written and committed offsets of one client (a new client starts with new ones)."""

    def __init__(
        self,
        client: KafkaConsumer,
        settings: ConsumerSettings,
        outage: Outage,
        health: ClientHealth,
        metrics: ConsumerMetrics,
    ):
        self.client = client
        self.settings = settings
        self.outage = outage
        self.health = health
        self.metrics = metrics
        self.pending: dict[TopicPartition, int] = {}
        """Next offsets of written batches whose commit failed."""
        self.committed: dict[TopicPartition, int] = {}
        """What this client has committed (no commit moves an offset below it)."""
        self.last_try = 0.0

    def _held(self) -> set[TopicPartition]:
        return self.outage.call("assignment", self.client.assignment, default=set()) or set()

    def commit(self, next_offsets: dict[TopicPartition, int]) -> bool:
        """Commit the next offsets of a written batch, with the pending ones of the partitions this
        member still holds (a partition that moved is read again by its new owner, whose commits
        stand). False when the commit failed: the offsets stay pending."""
        offsets = {}
        if self.pending:
            held = self._held()
            offsets = {tp: off for tp, off in self.pending.items() if tp in held}
        for tp, off in next_offsets.items():
            offsets[tp] = max(off, offsets.get(tp, off), self.committed.get(tp, off))
        if not offsets:
            self.pending = {}
            return True
        self.last_try = time.monotonic()
        timeout = self.settings.commit_timeout
        try:
            with self.outage.watching("commit"):
                self.client.commit(
                    {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
                    timeout_ms=None if timeout is None else int(timeout * 1000),
                )
        except CommitFailedError as exc:
            # The group rebalanced while we wrote: the new owner re-reads these (idempotent) events.
            log.warning("commit failed after a rebalance; events will be redelivered: %s", exc)
            return self._failed(offsets)
        except OutageExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - the offsets stay pending and are committed later
            self.outage.failed("commit (the offsets stay pending and are committed later)", exc)
            return self._failed(offsets)
        self.pending = {}
        self.committed.update(offsets)
        self.health.uncommitted.clear()
        self.outage.ok()
        self.metrics.committed()
        return True

    def _failed(self, offsets: dict[TopicPartition, int]) -> bool:
        self.pending = offsets
        self.health.commit_failed(self.client)
        return False

    def retry(self) -> None:
        """While no records come: commit the pending offsets (every ``probe_interval`` at most, and
        only while the member is in its group: a rejoining member's commit is refused anyway)."""
        if not self.pending or time.monotonic() - self.last_try < self.settings.probe_interval:
            return
        if not kafka_clients.joined(self.client):
            return
        if self.commit({}):
            log.info(
                "pending offsets settled: written batches whose commit had failed are committed "
                "(or their partitions moved to another member)"
            )

    def settle_before_leaving(self) -> None:
        """Stopping with pending offsets: poll the member back into its group and commit them, for
        ``leave_timeout`` seconds at most. Records polled meanwhile are dropped (not committed:
        read again); the partitions are paused so that none are fetched."""
        deadline = time.monotonic() + self.settings.leave_timeout
        while self.pending and time.monotonic() < deadline:
            if kafka_clients.joined(self.client) and self.commit({}):
                log.info("stopping: the written batches whose commit had failed are committed")
                return
            assigned = self._held()
            if assigned:
                self.outage.call("pause", self.client.pause, *assigned, default=None)
            timeout = kafka_clients.poll_timeout_ms(self.client, 200)
            timeout = max(1, min(timeout, int((deadline - time.monotonic()) * 1000)))
            self.outage.call("poll", self.client.poll, timeout_ms=timeout, default={})
        if self.pending:
            log.warning(
                "stopping with written events not committed (partitions %s): their next owner reads "
                "them again",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(self.pending)),
            )
