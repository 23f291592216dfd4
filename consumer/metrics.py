"""In-process metrics of a consumer, exposed to Prometheus by a collector of its own.

Counters: events consumed (per topic), written (per table), dead-lettered (per topic); batches;
write retries. Histograms: write latency per batch, event-to-online freshness (time from the
record's produce timestamp to the moment its value is readable online).

The values live in plain Python objects, not in prometheus_client's metric classes: importing
Feast switches prometheus_client into multiprocess mode (it sets PROMETHEUS_MULTIPROC_DIR), where
metrics of the same name share their values across every instance in the process.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)


class Histogram:
    """Cumulative-bucket histogram with quantile estimates (thread-safe)."""

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def observe_many(self, values) -> None:
        """Observe every value of an array at once (a batch's per-event freshness)."""
        values = np.asarray(values, dtype=float)
        if not len(values):
            return
        per_bucket = np.bincount(
            np.searchsorted(self.buckets, values, side="left"), minlength=len(self.counts)
        ).tolist()
        with self._lock:
            self.counts = [a + b for a, b in zip(self.counts, per_bucket)]
            self.sum += float(values.sum())
            self.count += len(values)

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None when empty)."""
        if not self.count:
            return None
        rank, total = q * self.count, 0
        for bound, n in zip([*self.buckets, float("inf")], self.counts):
            total += n
            if total >= rank:
                return bound
        return float("inf")


class ConsumerMetrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.consumed: Counter[str] = Counter()
        self.written: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()
        self.batches = 0
        self.write_retries = 0
        self.last_commit: float | None = None
        self.write_latency = Histogram(LATENCY_BUCKETS)
        self.freshness = Histogram(FRESHNESS_BUCKETS)

    def count(self, counter: Counter, label: str, n: int = 1) -> None:
        with self._lock:
            counter[label] += n

    def committed(self) -> None:
        with self._lock:
            self.batches += 1
            self.last_commit = time.time()

    def retried(self) -> None:
        with self._lock:
            self.write_retries += 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {
                "consumed": sum(self.consumed.values()),
                "written": sum(self.written.values()),
                "dead_lettered": sum(self.dead_lettered.values()),
                "batches": self.batches,
                "write_retries": self.write_retries,
            }

    # -- Prometheus -----------------------------------------------------------------------------

    def collect(self):
        with self._lock:
            for name, doc, label, counter in (
                ("streamflow_events_consumed", "Events polled from Kafka", "topic", self.consumed),
                ("streamflow_events_written", "Events written online and offline", "table", self.written),
                (
                    "streamflow_events_dead_lettered",
                    "Invalid or poison events sent to the dead-letter topic",
                    "topic",
                    self.dead_lettered,
                ),
            ):
                family = CounterMetricFamily(name, doc, labels=[label])
                for key, value in sorted(counter.items()):
                    family.add_metric([key], value)
                yield family
            yield CounterMetricFamily("streamflow_batches", "Batches committed", value=self.batches)
            yield CounterMetricFamily(
                "streamflow_write_retries", "Failed batch writes that were retried", value=self.write_retries
            )
            if self.last_commit is not None:
                yield GaugeMetricFamily(
                    "streamflow_last_commit_timestamp_seconds",
                    "Unix time of the last commit",
                    value=self.last_commit,
                )
        for name, doc, hist in (
            ("streamflow_write_latency_seconds", "Time to write one batch (all tables)", self.write_latency),
            (
                "streamflow_event_to_online_seconds",
                "Time from the record's produce timestamp to its online write",
                self.freshness,
            ),
        ):
            yield HistogramMetricFamily(name, doc, buckets=hist.cumulative(), sum_value=hist.sum)

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(self)
        return registry

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry())
