"""Prometheus gauges of consumer lag, fed from :class:`~streamflow.lag.monitor.GroupLag` samples.

    metrics = register_lag_metrics(registry)          # once, into the API's registry
    metrics.update(monitor.sample(), evaluator_status) # after every sample

Gauges (labels in brackets):

* ``streamflow_consumer_lag_messages`` [group, topic, partition] -- unconsumed messages;
* ``streamflow_consumer_lag_seconds`` [group, topic, partition] -- age of the oldest unconsumed
  event by its produce time (0 when caught up; not set while it could not be read);
* ``streamflow_consumer_committed_offset`` / ``streamflow_consumer_log_end_offset``
  [group, topic, partition] (the committed offset is not set while the group never committed);
* ``streamflow_consumer_topic_lag_messages`` / ``streamflow_consumer_topic_lag_seconds``
  [group, topic] and ``streamflow_consumer_group_lag_messages`` /
  ``streamflow_consumer_group_lag_seconds`` [group] -- totals (seconds: the oldest event);
* ``streamflow_consumer_lag_status`` [group, topic, partition] -- -1 UNKNOWN, 0 OK, 1 WARN,
  2 STALL, 3 STOP, 4 REWIND; ``streamflow_consumer_group_status`` [group] -- -1 UNKNOWN, 0 OK,
  1 WARN, 2 ERR (only when a :class:`~streamflow.lag.status.GroupStatus` is passed);
* ``streamflow_consumer_lag_sample_timestamp_seconds`` [group] -- when the sample was taken.

Label sets of partitions and topics that left the samples are removed, so a deleted topic does
not report its last lag forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge

from streamflow.lag.status import STATUS_CODES, GroupStatus

if TYPE_CHECKING:
    from streamflow.lag.monitor import GroupLag

PARTITION_LABELS = ("group", "topic", "partition")
TOPIC_LABELS = ("group", "topic")
GROUP_LABELS = ("group",)


class LagMetrics:
    """The lag gauges of one registry; ``update`` them from each new sample."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "streamflow_consumer"):
        r = registry

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return Gauge(f"{prefix}_{name}", doc, list(labels), registry=r)

        self.lag_messages = gauge("lag_messages", "Unconsumed messages per partition", PARTITION_LABELS)
        self.lag_seconds = gauge("lag_seconds", "Age of the oldest unconsumed event (produce time), seconds",
                                 PARTITION_LABELS)
        self.committed_offset = gauge("committed_offset", "Committed offset of the group", PARTITION_LABELS)
        self.log_end_offset = gauge("log_end_offset", "Log-end offset of the partition", PARTITION_LABELS)
        self.status = gauge("lag_status", "Partition lag status: -1 UNKNOWN, 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND",
                            PARTITION_LABELS)
        self.topic_lag_messages = gauge("topic_lag_messages", "Unconsumed messages per topic", TOPIC_LABELS)
        self.topic_lag_seconds = gauge("topic_lag_seconds", "Age of the oldest unconsumed event of the topic, seconds",
                                       TOPIC_LABELS)
        self.group_lag_messages = gauge("group_lag_messages", "Unconsumed messages of the group", GROUP_LABELS)
        self.group_lag_seconds = gauge("group_lag_seconds", "Age of the oldest unconsumed event of the group, seconds",
                                       GROUP_LABELS)
        self.group_status = gauge("group_status", "Group lag status: -1 UNKNOWN, 0 OK, 1 WARN, 2 ERR", GROUP_LABELS)
        self.sampled_at = gauge("lag_sample_timestamp_seconds", "Unix time of the last lag sample", GROUP_LABELS)
        self._partition_gauges = (self.lag_messages, self.lag_seconds, self.committed_offset,
                                  self.log_end_offset, self.status)
        self._topic_gauges = (self.topic_lag_messages, self.topic_lag_seconds)
        self._partitions: dict[str, set[tuple[str, str, str]]] = {}
        self._topics: dict[str, set[tuple[str, str]]] = {}

    @staticmethod
    def _drop(gauge: Gauge, labels: tuple[str, ...]) -> None:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass

    def update(self, sample: GroupLag, status: GroupStatus | None = None) -> None:
        """Set every gauge of the sample's group from it (and the statuses, if given)."""
        group = sample.group
        partitions: set[tuple[str, str, str]] = set()
        topics: set[tuple[str, str]] = set()
        for t in sample.topics:
            tl = (group, t.topic)
            topics.add(tl)
            self.topic_lag_messages.labels(*tl).set(t.lag)
            if t.lag_seconds is not None:
                self.topic_lag_seconds.labels(*tl).set(t.lag_seconds)
            else:
                self._drop(self.topic_lag_seconds, tl)
            for p in t.partitions:
                pl = (group, p.topic, str(p.partition))
                partitions.add(pl)
                self.lag_messages.labels(*pl).set(p.lag)
                self.log_end_offset.labels(*pl).set(p.log_end_offset)
                if p.lag_seconds is not None:
                    self.lag_seconds.labels(*pl).set(p.lag_seconds)
                else:
                    self._drop(self.lag_seconds, pl)
                if p.committed_offset is not None:
                    self.committed_offset.labels(*pl).set(p.committed_offset)
                else:
                    self._drop(self.committed_offset, pl)
                if status is not None and (p.topic, p.partition) in status.partitions:
                    code = STATUS_CODES[status.partitions[(p.topic, p.partition)].status]
                    self.status.labels(*pl).set(code)
        for pl in self._partitions.get(group, set()) - partitions:
            for g in self._partition_gauges:
                self._drop(g, pl)
        for tl in self._topics.get(group, set()) - topics:
            for g in self._topic_gauges:
                self._drop(g, tl)
        self._partitions[group] = partitions
        self._topics[group] = topics
        self.group_lag_messages.labels(group).set(sample.lag)
        if sample.lag_seconds is not None:
            self.group_lag_seconds.labels(group).set(sample.lag_seconds)
        if status is not None:
            self.group_status.labels(group).set(STATUS_CODES[status.status])
        self.sampled_at.labels(group).set(sample.timestamp)


def register_lag_metrics(registry: CollectorRegistry, prefix: str = "streamflow_consumer") -> LagMetrics:
    """Register the lag gauges into ``registry``; update them with ``LagMetrics.update(sample, status)``."""
    return LagMetrics(registry, prefix)
