"""The consumer's Kafka client as the loop sees it: one member of the group, replaced when stuck.

Every call goes through the :class:`~consumer.outage.Outage` (a failure is a log line and a
backoff, and too many in a row ask for a new client). A new client joins the group again and
starts at the committed offsets, with new :class:`~consumer.health.ClientHealth` clocks and new
:class:`~consumer.offsets.Offsets`.
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer, TopicPartition

from consumer.batch import first_offsets
from consumer.health import ClientHealth
from consumer.metrics import ConsumerMetrics
from consumer.offsets import Offsets
from consumer.outage import Outage
from consumer.settings import ConsumerSettings
from streamflow import kafka_clients
from streamflow.topics import table_topics

log = logging.getLogger("consumer")


class GroupClient:
    """A member of ``settings.group_id`` subscribed to every table's topic. The constructor
    connects (waiting out an outage within the outage's budget) and subscribes."""

    def __init__(
        self,
        settings: ConsumerSettings,
        kafka: kafka_clients.KafkaSettings,
        outage: Outage,
        metrics: ConsumerMetrics,
    ):
        self.settings = settings
        self.kafka = kafka
        self.outage = outage
        self.metrics = metrics
        self.topics = table_topics()
        self.rebuilds = 0
        self.consumer = outage.connect("connecting the consumer", self._new_consumer)

    def start(self) -> None:
        """Subscribe (once whatever else the consumer needs is ready)."""
        self._client_state()
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

    def _client_state(self) -> None:
        """What the loop tracks about the current client (a new client starts afresh)."""
        s = self.settings
        self.health = ClientHealth(self.outage, s.group_id, s.join_timeout, s.stall_timeout)
        self.offsets = Offsets(self.consumer, s, self.outage, self.health, self.metrics)

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
        self.close()
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

    def close_hung(self) -> None:
        """From the watchdog's thread: the hung call returns or raises, and the loop builds a new
        client (no commit from the old one)."""
        self.outage.rebuild_wanted = True
        self.close()

    def close(self) -> None:
        """Close the client without a commit; it leaves the group."""
        kafka_clients.close_quietly(self.consumer, timeout=2)

    def joined(self) -> bool:
        return kafka_clients.joined(self.consumer)

    def poll(self, wanted_ms: int) -> dict:
        """Poll for records, ``wanted_ms`` at most (longer while the member joins its group:
        ``kafka_clients.poll_timeout_ms``); {} when the call failed."""
        timeout = kafka_clients.poll_timeout_ms(self.consumer, wanted_ms)
        records = self.outage.call("poll", self.consumer.poll, timeout_ms=timeout, default={})
        if records:
            self.outage.ok()
        return records

    def drained(self) -> bool:
        """Whether every assigned partition is consumed to its end and committed; False when Kafka
        does not say."""
        if self.offsets.pending:
            return False
        assigned = self.outage.call("assignment", self.consumer.assignment, default=set())
        if not assigned:
            return False
        timeout_ms = self.kafka.request_timeout_ms
        ends = self.outage.call(
            "end_offsets", self.consumer.end_offsets, list(assigned), timeout_ms=timeout_ms
        )
        if ends is None:
            return False
        for tp in assigned:
            position = self.outage.call("position", self.consumer.position, tp, timeout_ms=timeout_ms)
            if position is None or position < ends[tp]:
                return False
        self.outage.ok()
        return True

    def rewind(self, *batches: dict[TopicPartition, list]) -> None:
        """Read batches again (not committed) from their first offset per partition; when seeking
        fails, a new client starts at the committed offsets, which is the same."""
        for tp, offset in first_offsets(*batches).items():
            if self.outage.call("seek", self.consumer.seek, tp, offset, default=False) is False:
                self.outage.rebuild_wanted = True
                return
