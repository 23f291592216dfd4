"""Prometheus gauges of consumer lag, fed from :class:`~streamflow.lag.monitor.GroupLag` samples.

    metrics = register_lag_metrics(registry)      # once, into the API's registry
    metrics.update(monitor.sample(), status)      # after every sample (status from StatusEvaluator)
    metrics.unreachable(group)                    # after a sample that failed (Kafka away)

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
  2 STALL, 3 STOP, 4 REWIND, 5 NEW, 6 REPLAY; ``streamflow_consumer_group_status`` [group] --
  -1 UNKNOWN, 0 OK, 1 WARN, 2 ERR, 5 NEW, 6 REPLAY (only once a
  :class:`~streamflow.lag.status.GroupStatus` was passed);
* ``streamflow_consumer_drain_seconds`` [group, topic, partition] and
  ``streamflow_consumer_group_drain_seconds`` [group] -- time to drain: lag / the consume rate over
  the status window (0 when caught up, +Inf when a lagging partition consumes nothing; absent
  before the window has two samples); ``streamflow_consumer_group_consume_rate`` [group] -- events
  per second consumed over the window;
* ``streamflow_consumer_lag_sample_timestamp_seconds`` [group] -- when the newest successful
  sample was taken (also while Kafka is away: it tells how old the last known figures are);
* ``streamflow_kafka_up`` -- 1 when the newest sample attempt of every group reached Kafka, 0 when
  one failed (absent before the first attempt); ``streamflow_kafka_up_by_group`` [group] -- the
  same per group.

While a group's newest sample attempt failed, its lag, offset and status series are left out:
the last figures read are not presented as current (only their timestamp is kept). They come
back with the next successful sample.

The gauges are produced by a collector from the newest sample of each group, not kept in
prometheus_client metric objects: importing Feast switches prometheus_client into multiprocess
mode, where same-named metrics share values and labels cannot be removed. So a partition or topic
that leaves the samples simply disappears from the output.
"""

from __future__ import annotations

import math
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
        self._up: dict[str, bool] = {}

    def update(self, sample: GroupLag, status: GroupStatus | None = None) -> None:
        """Replace the group's gauges by those of this sample (and its evaluation, if given)."""
        with self._lock:
            self._samples[sample.group] = (sample, status)
            self._up[sample.group] = True

    def unreachable(self, group: str) -> None:
        """The newest sample attempt of ``group`` failed: Kafka up 0, its lag series left out."""
        with self._lock:
            self._up[group] = False

    def describe(self) -> list[Metric]:
        return []  # the metric names are fixed, but no need to pre-declare them

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples = list(self._samples.values())
            up = dict(self._up)
        f = {
            key: GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=labels)
            for key, name, doc, labels in FAMILIES
        }
        kafka_up = GaugeMetricFamily(
            "streamflow_kafka_up", "1 if the newest lag sample attempt of every group reached Kafka, else 0"
        )
        kafka_up_by_group = GaugeMetricFamily(
            "streamflow_kafka_up_by_group",
            "1 if the newest lag sample attempt of the group reached Kafka, else 0",
            labels=GROUP_LABELS,
        )
        if up:
            kafka_up.add_metric([], 1 if all(up.values()) else 0)
        for g, ok in sorted(up.items()):
            kafka_up_by_group.add_metric([g], 1 if ok else 0)
        for sample, status in samples:
            f["sampled_at"].add_metric([sample.group], sample.timestamp)
            if up.get(sample.group, True):  # else the newest attempt failed: the figures are not current
                _add_sample(f, sample, status)
        yield from f.values()
        yield from (kafka_up, kafka_up_by_group)


FAMILIES = [
    ("lag_messages", "lag_messages", "Unconsumed messages per partition", PARTITION_LABELS),
    (
        "lag_seconds",
        "lag_seconds",
        "Age of the oldest unconsumed event (produce time), seconds",
        PARTITION_LABELS,
    ),
    ("committed", "committed_offset", "Committed offset of the group", PARTITION_LABELS),
    ("log_end", "log_end_offset", "Log-end offset of the partition", PARTITION_LABELS),
    (
        "status",
        "lag_status",
        "Partition lag status: -1 UNKNOWN, 0 OK, 1 WARN, 2 STALL, 3 STOP, 4 REWIND, 5 NEW, 6 REPLAY",
        PARTITION_LABELS,
    ),
    (
        "drain",
        "drain_seconds",
        "Seconds until the partition is caught up at the window's consume rate (+Inf: it consumes nothing)",
        PARTITION_LABELS,
    ),
    ("topic_messages", "topic_lag_messages", "Unconsumed messages per topic", TOPIC_LABELS),
    (
        "topic_seconds",
        "topic_lag_seconds",
        "Age of the oldest unconsumed event of the topic, seconds",
        TOPIC_LABELS,
    ),
    ("group_messages", "group_lag_messages", "Unconsumed messages of the group", GROUP_LABELS),
    (
        "group_seconds",
        "group_lag_seconds",
        "Age of the oldest unconsumed event of the group, seconds",
        GROUP_LABELS,
    ),
    (
        "group_status",
        "group_status",
        "Group lag status: -1 UNKNOWN, 0 OK, 1 WARN, 2 ERR, 5 NEW, 6 REPLAY",
        GROUP_LABELS,
    ),
    (
        "group_drain",
        "group_drain_seconds",
        "Seconds until the group is caught up at the window's consume rate "
        "(+Inf: some lagging partition consumes nothing)",
        GROUP_LABELS,
    ),
    (
        "group_rate",
        "group_consume_rate",
        "Events per second the group consumed over the status window",
        GROUP_LABELS,
    ),
    (
        "sampled_at",
        "lag_sample_timestamp_seconds",
        "Unix time of the last successful lag sample",
        GROUP_LABELS,
    ),
]
"""The lag gauges, in the order they are collected: (key, name after the prefix, help, labels)."""


def _add_sample(f: dict[str, GaugeMetricFamily], sample: GroupLag, status: GroupStatus | None) -> None:
    """One group's current figures into the families ``f`` (by their FAMILIES key)."""
    g = sample.group
    for t in sample.topics:
        f["topic_messages"].add_metric([g, t.topic], t.lag)
        if t.lag_seconds is not None:
            f["topic_seconds"].add_metric([g, t.topic], t.lag_seconds)
        for p in t.partitions:
            labels = [g, p.topic, str(p.partition)]
            f["lag_messages"].add_metric(labels, p.lag)
            f["log_end"].add_metric(labels, p.log_end_offset)
            if p.lag_seconds is not None:
                f["lag_seconds"].add_metric(labels, p.lag_seconds)
            if p.committed_offset is not None:
                f["committed"].add_metric(labels, p.committed_offset)
            ps = status.partitions.get((p.topic, p.partition)) if status is not None else None
            if ps is not None:
                f["status"].add_metric(labels, STATUS_CODES[ps.status])
                if ps.consume_rate is not None:
                    f["drain"].add_metric(labels, _drain(ps.drain_seconds))
    f["group_messages"].add_metric([g], sample.lag)
    if sample.lag_seconds is not None:
        f["group_seconds"].add_metric([g], sample.lag_seconds)
    if status is not None:
        f["group_status"].add_metric([g], STATUS_CODES[status.status])
        if status.consume_rate is not None:
            f["group_rate"].add_metric([g], status.consume_rate)
            f["group_drain"].add_metric([g], _drain(status.drain_seconds))


def _drain(seconds: float | None) -> float:
    """Drain time as a gauge value: with a known rate, None means "never at this rate"."""
    return math.inf if seconds is None else seconds


def register_lag_metrics(registry: CollectorRegistry, prefix: str = "streamflow_consumer") -> LagMetrics:
    """Register the lag gauges into ``registry``; feed them with ``LagMetrics.update(sample, status)``."""
    metrics = LagMetrics(prefix)
    registry.register(metrics)
    return metrics
