"""Prometheus gauges of consumer lag, fed from :class:`~streamflow.lag.monitor.GroupLag` samples.

    metrics = register_lag_metrics(registry)      # once, into the API's registry
    metrics.update(monitor.sample(), status)      # after every sample (status from StatusEvaluator)

Gauges (labels in brackets):

* ``streamflow_consumer_lag_messages`` [group, topic, partition] -- unconsumed messages;
* ``streamflow_consumer_lag_seconds`` [group, topic, partition] -- age of the oldest unconsumed
  event by its produce time (0 when caught up; absent while its record could not be read);
* ``streamflow_consumer_committed_offset`` (absent while the group never committed) and
  ``streamflow_consumer_log_end_offset`` [group, topic, partition];
* ``streamflow_consumer_topic_lag_messages`` / ``streamflow_consumer_topic_lag_seconds``
  [group, topic] and ``streamflow_consumer_group_lag_messages`` /
  ``streamflow_consumer_group_lag_seconds`` [group] -- totals (seconds: the oldest event);
* ``streamflow_consumer_lag_status`` [group, topic, partition] -- -1 UNKNOWN, 0 OK, 1 WARN,
  2 STALL, 3 STOP, 4 REWIND; ``streamflow_consumer_group_status`` [group] -- -1 UNKNOWN, 0 OK,
  1 WARN, 2 ERR (only once a :class:`~streamflow.lag.status.GroupStatus` was passed);
* ``streamflow_consumer_lag_sample_timestamp_seconds`` [group] -- when the sample was taken.

The gauges are produced by a collector from the newest sample of each group, not kept in
prometheus_client metric objects: importing Feast switches prometheus_client into multiprocess
mode, where same-named metrics share values and labels cannot be removed. So a partition or topic
that leaves the samples simply disappears from the output.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from streamflow.lag.status import STATUS_CODES, GroupStatus

if TYPE_CHECKING:
    from streamflow.lag.monitor import GroupLag

PARTITION_LABELS = ["group", "topic", "partition"]
TOPIC_LABELS = ["group", "topic"]
GROUP_LABELS = ["group"]


class LagMetrics:
    """A Prometheus collector of the newest lag sample (and status) of each group."""

    def __init__(self, prefix: str = "streamflow_consumer"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._samples: dict[str, tuple[GroupLag, GroupStatus | None]] = {}

    def update(self, sample: GroupLag, status: GroupStatus | None = None) -> None:
        """Replace the group's gauges by those of this sample (and its evaluation, if given)."""
        with self._lock:
            self._samples[sample.group] = (sample, status)

    def forget(self, group: str) -> None:
        with self._lock:
            self._samples.pop(group, None)

    def describe(self) -> list[Metric]:
        return []  # the metric names are fixed, but no need to pre-declare them

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples = list(self._samples.values())

        def family(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=labels)

        lag_messages = family("lag_messages", "Unconsumed messages per partition", PARTITION_LABELS)
        lag_seconds = family("lag_seconds", "Age of the oldest unconsumed event (produce time), seconds",
                             PARTITION_LABELS)
        committed = family("committed_offset", "Committed offset of the group", PARTITION_LABELS)
        log_end = family("log_end_offset", "Log-end offset of the partition", PARTITION_LABELS)
        status_g = family("lag_status", "Partition lag status: -1 UNKNOWN, 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND",
                          PARTITION_LABELS)
        topic_messages = family("topic_lag_messages", "Unconsumed messages per topic", TOPIC_LABELS)
        topic_seconds = family("topic_lag_seconds", "Age of the oldest unconsumed event of the topic, seconds",
                               TOPIC_LABELS)
        group_messages = family("group_lag_messages", "Unconsumed messages of the group", GROUP_LABELS)
        group_seconds = family("group_lag_seconds", "Age of the oldest unconsumed event of the group, seconds",
                               GROUP_LABELS)
        group_status = family("group_status", "Group lag status: -1 UNKNOWN, 0 OK, 1 WARN, 2 ERR", GROUP_LABELS)
        sampled_at = family("lag_sample_timestamp_seconds", "Unix time of the last lag sample", GROUP_LABELS)

        for sample, status in samples:
            g = sample.group
            for t in sample.topics:
                topic_messages.add_metric([g, t.topic], t.lag)
                if t.lag_seconds is not None:
                    topic_seconds.add_metric([g, t.topic], t.lag_seconds)
                for p in t.partitions:
                    labels = [g, p.topic, str(p.partition)]
                    lag_messages.add_metric(labels, p.lag)
                    log_end.add_metric(labels, p.log_end_offset)
                    if p.lag_seconds is not None:
                        lag_seconds.add_metric(labels, p.lag_seconds)
                    if p.committed_offset is not None:
                        committed.add_metric(labels, p.committed_offset)
                    ps = status.partitions.get((p.topic, p.partition)) if status is not None else None
                    if ps is not None:
                        status_g.add_metric(labels, STATUS_CODES[ps.status])
            group_messages.add_metric([g], sample.lag)
            if sample.lag_seconds is not None:
                group_seconds.add_metric([g], sample.lag_seconds)
            if status is not None:
                group_status.add_metric([g], STATUS_CODES[status.status])
            sampled_at.add_metric([g], sample.timestamp)

        yield from (lag_messages, lag_seconds, committed, log_end, status_g, topic_messages, topic_seconds,
                    group_messages, group_seconds, group_status, sampled_at)


def register_lag_metrics(registry: CollectorRegistry, prefix: str = "streamflow_consumer") -> LagMetrics:
    """Register the lag gauges into ``registry``; feed them with ``LagMetrics.update(sample, status)``."""
    metrics = LagMetrics(prefix)
    registry.register(metrics)
    return metrics
