"""A background sampler of one consumer group's lag, for the API, its metrics and dashboard.

Every ``interval`` seconds it takes a :class:`~streamflow.lag.monitor.GroupLag` sample, feeds the
Burrow-style :class:`~streamflow.lag.status.StatusEvaluator`, updates the Prometheus gauges and
keeps a short history per topic (lag in messages and seconds) plus the consumer's
event-to-online freshness, read from the consumer's own metrics endpoint when it is reachable.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamflow import config
from streamflow.errors import StreamflowError
from streamflow.lag.metrics import LagMetrics
from streamflow.lag.monitor import GroupLag, LagMonitor
from streamflow.lag.status import GroupStatus, StatusEvaluator

log = logging.getLogger(__name__)

FRESHNESS_METRIC = "streamflow_event_to_online_seconds"


def consumer_metrics_url() -> str:
    return config.settings().lag.consumer_metrics_url


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
    topics: dict[str, dict[str, float | None]]
    freshness_p50: float | None = None
    freshness_p99: float | None = None
    drain_seconds: float | None = None
    """The group's time to drain at the window's consume rate (None: unknown, or it does not drain)."""
    consume_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "topics": self.topics,
            "freshness_p50": self.freshness_p50,
            "freshness_p99": self.freshness_p99,
            "drain_seconds": self.drain_seconds,
            "consume_rate": self.consume_rate,
        }


@dataclass
class LagSampler:
    """Samples one group every ``interval`` seconds on a thread of its own (``start``/``stop``).

    ``error`` is the message of the newest sample attempt when it failed (None after a successful
    one): ``GET /lag`` answers 503 with it, and the metrics show ``streamflow_kafka_up 0`` without
    the stale lag series. While samples fail, the thread waits ``interval``, then twice as long
    after each further failure, at most ``max_backoff`` seconds; the first success resets it.
    ``timeout`` bounds connecting and each Kafka request of one sample (the monitor's timeout).

    Thread-safe: the thread is the only one that samples (``sample_once`` runs under a lock, for
    tests); requests only read its results (``snapshot``, ``history_dict``, ``wait_first``) and
    wait for the short update of the results, never for a sample in progress.
    """

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
    timeout: float = 10.0
    max_backoff: float = 30.0
    failures: int = 0
    """Sample attempts that failed in a row (0 after a success)."""
    attempts: int = 0
    """Sample attempts finished, successful or not."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        """Guards the results (latest, status, error, history, counters)."""
        self._sampling = threading.Lock()
        """One sample at a time: the monitor and the evaluator are not thread-safe."""
        self._stop = threading.Event()
        self._attempted = threading.Event()
        """Set once the first sample attempt has finished (successful or not)."""
        self._thread: threading.Thread | None = None
        self._monitor: LagMonitor | None = None
        self.evaluator = StatusEvaluator(window_seconds=self.window_seconds)
        self.freshness_url = self.freshness_url or consumer_metrics_url()

    def _failed(self, message: str) -> None:
        with self._lock:
            self.error = message
            self.failures += 1
            self.attempts += 1
        self._attempted.set()
        if self.metrics is not None:
            self.metrics.unreachable(self.group)

    def sample_once(self) -> bool:
        """Take one sample and publish it (True), or record why it failed (False). Never raises."""
        with self._sampling:
            return self._sample_locked()

    def wait_first(self, timeout: float) -> bool:
        """Wait until the thread has finished its first sample attempt (True), at most ``timeout``
        seconds. Requests never sample themselves: the thread is the monitor's one user."""
        return self._attempted.wait(timeout)

    def _sample_locked(self) -> bool:
        try:
            if self._monitor is None:
                self._monitor = LagMonitor(
                    bootstrap=self.bootstrap,
                    group=self.group,
                    timeout=self.timeout,
                    read_timeout=min(3.0, self.timeout),
                )
            sample = self._monitor.sample()
        except StreamflowError as exc:
            # "Kafka unreachable at ...": the monitor dropped its broken clients itself, the next
            # sample reconnects from scratch.
            self._failed(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - a bug must neither kill the thread nor leave a stale 200
            log.exception("lag sample failed")
            if self._monitor is not None:
                self._monitor.close()
            self._failed(f"lag sample failed ({type(exc).__name__})")
            return False
        try:
            self._publish(sample)
        except Exception as exc:  # noqa: BLE001 - same as above
            log.exception("publishing the lag sample failed")
            self._failed(f"lag sample failed ({type(exc).__name__})")
            return False
        return True

    def _publish(self, sample: GroupLag) -> None:
        with self._lock:
            previous = self.latest
        if previous is not None and sample.sampled_at < previous.sampled_at:
            # Samples are taken one at a time (under the sampling lock), so only a wall clock that
            # stepped back gets here: start the evaluation over instead of raising ValueError
            # (StatusEvaluator wants time order) into the sampler thread or a /lag request.
            log.warning(
                "lag sample at %s is older than the previous one (%s): the clock went back; "
                "restarting the status evaluation",
                sample.sampled_at.isoformat(),
                previous.sampled_at.isoformat(),
            )
            self.evaluator.reset()
            with self._lock:
                self.history = deque(p for p in self.history if p.t <= sample.timestamp)
        status = self.evaluator.add(sample)
        assert self.freshness_url is not None  # __post_init__ sets it
        fresh = read_freshness(self.freshness_url) or {}
        point = HistoryPoint(
            t=sample.timestamp,
            topics={t.topic: {"lag": t.lag, "lag_seconds": t.lag_seconds} for t in sample.topics},
            freshness_p50=fresh.get("p50"),
            freshness_p99=fresh.get("p99"),
            drain_seconds=status.drain_seconds,
            consume_rate=status.consume_rate,
        )
        with self._lock:
            self.latest, self.status, self.error = sample, status, None
            self.failures = 0
            self.attempts += 1
            self.history.append(point)
            while self.history and self.history[0].t < point.t - self.history_seconds:
                self.history.popleft()
        self._attempted.set()
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
            return {
                "group": self.group,
                "interval": self.interval,
                "points": [p.to_dict() for p in self.history],
            }

    def next_delay(self) -> float:
        """Seconds from the start of one attempt to the next: ``interval``, doubled after each
        failure in a row, at most ``max_backoff`` (never below ``interval``)."""
        with self._lock:
            failures = self.failures
        if failures == 0:
            return self.interval
        return max(self.interval, min(self.max_backoff, self.interval * 2 ** (failures - 1)))

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.sample_once()
            except Exception:  # noqa: BLE001 - the sampler must never die; the error is shown
                log.exception("lag sample failed")
            self._stop.wait(max(0.1, self.next_delay() - (time.monotonic() - started)))

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"lag-sampler-{self.group}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(10.0, 3 * self.timeout))
            self._thread = None
        # A sample still running (its Kafka calls are bounded by ``timeout``) keeps its monitor.
        if self._sampling.acquire(timeout=max(10.0, 3 * self.timeout)):
            try:
                if self._monitor is not None:
                    self._monitor.close()
                    self._monitor = None
            finally:
                self._sampling.release()
