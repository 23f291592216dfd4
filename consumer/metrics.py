"""In-process metrics of a consumer, in a Prometheus registry of its own.

Counters: events consumed, written, dead-lettered; batches; write retries. Histograms: write
latency per batch, event-to-online freshness (time from the record's produce timestamp to the
moment its value is readable online). Exposed on a metrics port by the consumer's CLI.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("streamflow_events_consumed", "Events polled from Kafka", ["topic"], registry=r)
        self.written = Counter("streamflow_events_written", "Events written online and offline", ["table"], registry=r)
        self.dead_lettered = Counter("streamflow_events_dead_lettered", "Invalid events sent to the dead-letter topic",
                                     ["topic"], registry=r)
        self.batches = Counter("streamflow_batches", "Batches committed", registry=r)
        self.write_retries = Counter("streamflow_write_retries", "Failed batch writes that were retried", registry=r)
        self.write_latency = Histogram("streamflow_write_latency_seconds", "Time to write one batch (all tables)",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.freshness = Histogram("streamflow_event_to_online_seconds",
                                   "Time from the record's produce timestamp to its online write",
                                   buckets=FRESHNESS_BUCKETS, registry=r)
        self.last_commit = Gauge("streamflow_last_commit_timestamp_seconds", "Unix time of the last commit",
                                 registry=r)

    def total(self, counter: Counter) -> float:
        return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))

    def snapshot(self) -> dict[str, float]:
        return {
            "consumed": self.total(self.consumed),
            "written": self.total(self.written),
            "dead_lettered": self.total(self.dead_lettered),
            "batches": self.total(self.batches),
            "write_retries": self.total(self.write_retries),
        }

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
