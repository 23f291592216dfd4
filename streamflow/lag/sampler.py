"""A background sampler of one consumer group's lag, for the API, its metrics and dashboard.

Every ``interval`` seconds it takes a :class:`~streamflow.lag.monitor.GroupLag` sample, feeds the
Burrow-style :class:`~streamflow.lag.status.StatusEvaluator`, updates the Prometheus gauges and
keeps a short history per topic (lag in messages and seconds) plus the consumer's
event-to-online freshness, read from the consumer's own metrics endpoint when it is reachable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamflow.errors import StreamflowError
from streamflow.lag.metrics import LagMetrics
from streamflow.lag.monitor import GroupLag, LagMonitor
from streamflow.lag.status import GroupStatus, StatusEvaluator

log = logging.getLogger(__name__)

FRESHNESS_METRIC = "streamflow_event_to_online_seconds"


def consumer_metrics_url() -> str:
    return os.environ.get("STREAMFLOW_CONSUMER_METRICS_URL", "http://127.0.0.1:9108/metrics")


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """q-quantile estimate from cumulative (upper bound, count) buckets, linear inside a bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def read_freshness(url: str, timeout: float = 1.0) -> dict[str, float | None] | None:
    """p50/p99 event-to-online seconds from a consumer's /metrics (None when unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local metrics URL
            text = resp.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == FRESHNESS_METRIC:
            buckets = sorted(
                (float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")
            )
            return {"p50": histogram_quantile(buckets, 0.5), "p99": histogram_quantile(buckets, 0.99)}
    return None


@dataclass
class HistoryPoint:
    t: float
    topics: dict[str, dict[str, float]]
    freshness_p50: float | None = None
    freshness_p99: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"t": self.t, "topics": self.topics, "freshness_p50": self.freshness_p50,
                "freshness_p99": self.freshness_p99}


@dataclass
class LagSampler:
    group: str
    interval: float = 5.0
    history_seconds: float = 900.0
    window_seconds: float = 60.0
    metrics: LagMetrics | None = None
    bootstrap: str | None = None
    freshness_url: str | None = None
    latest: GroupLag | None = None
    status: GroupStatus | None = None
    error: str | None = None
    history: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._monitor: LagMonitor | None = None
        self.evaluator = StatusEvaluator(window_seconds=self.window_seconds)
        self.freshness_url = self.freshness_url or consumer_metrics_url()

    def sample_once(self) -> None:
        try:
            if self._monitor is None:
                self._monitor = LagMonitor(bootstrap=self.bootstrap, group=self.group)
            sample = self._monitor.sample()
        except StreamflowError as exc:
            with self._lock:
                self.error = str(exc)
            if self._monitor is not None:
                self._monitor.close()
                self._monitor = None
            return
        status = self.evaluator.add(sample)
        fresh = read_freshness(self.freshness_url) or {}
        point = HistoryPoint(
            t=sample.timestamp,
            topics={t.topic: {"lag": t.lag, "lag_seconds": t.lag_seconds} for t in sample.topics},
            freshness_p50=fresh.get("p50"),
            freshness_p99=fresh.get("p99"),
        )
        with self._lock:
            self.latest, self.status, self.error = sample, status, None
            self.history.append(point)
            while self.history and self.history[0].t < point.t - self.history_seconds:
                self.history.popleft()
        if self.metrics is not None:
            self.metrics.update(sample, status)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "group": self.group,
                "error": self.error,
                "sample": self.latest.to_dict() if self.latest else None,
                "status": self.status.to_dict() if self.status else None,
            }

    def history_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"group": self.group, "interval": self.interval, "points": [p.to_dict() for p in self.history]}

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:  # noqa: BLE001 - the sampler must never die; the error is shown
                log.exception("lag sample failed")
            self._stop.wait(max(0.1, self.interval - (time.monotonic() - started)))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"lag-sampler-{self.group}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
