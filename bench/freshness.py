"""4. Freshness: event-to-online latency at a steady event rate (default 2,000 events/s for 15 s).

Method: a consumer runs as its own process (``python -m consumer.main``, as in production). This
process sends usage_agg_30d events at a steady rate, each for a user of its own and with its event
time set to its send time (wall clock, taken just before ``producer.send``). A poller thread
queries the online table every ~10 ms (``SELECT entity_key, event_ts ... WHERE event_ts >=`` the
oldest send time still unseen); an event is visible at the start of the first query whose result
holds its user with its event time. Latency = that query's start - send time: an upper bound,
late by at most one poll period. Baseline: none (the goal is absolute); the consumer's own
histogram (``streamflow_event_to_online_seconds``, record timestamp to write, bucketed) is shown
as a cross-check.
"""

from __future__ import annotations

from bench import common  # noqa: I001  (first: sets the benchmark environment)

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

import orjson
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from producer.replay import make_producer
from streamflow import schema
from streamflow.datagen.generate import user_ids

NAME = "freshness"
TABLE = schema.table("usage_agg_30d")
POLL_SECONDS = 0.01


def entity_key(user: str) -> bytes:
    key = EntityKeyProto(join_keys=[schema.KEY], entity_values=[ValueProto(string_val=user)])
    return serialize_entity_key(key, entity_key_serialization_version=3)


def event(user: str, i: int, sent: float) -> bytes:
    return orjson.dumps({
        schema.KEY: user, "watch_hours_30d": float(i % 700), "avg_session_mins_7d": 30.5,
        "unique_devices_30d": 1 + i % 5, "skips_7d": i, "rebuffer_events_7d": i % 7,
        schema.EVENT_TIME: datetime.fromtimestamp(sent, timezone.utc).isoformat(),
        schema.EVENT_SNAPSHOT: "bench_freshness",
    })


class Poller(threading.Thread):
    """Finds when each sent event becomes readable in the online table."""

    def __init__(self):
        super().__init__(daemon=True)
        self.lock = threading.Lock()
        self.pending: dict[bytes, float] = {}  # entity key -> send time (wall clock)
        self.latency: dict[bytes, float] = {}
        self.polls = 0
        self.stopping = threading.Event()
        self.table = f"{os.environ['FEAST_PROJECT']}_{TABLE.feature_view}"

    def expect(self, key: bytes, sent: float) -> None:
        with self.lock:
            self.pending[key] = sent

    def run(self) -> None:
        watermark = time.time()
        query = f'SELECT entity_key, event_ts FROM "{self.table}" WHERE event_ts >= %s'
        with common.connect(autocommit=True) as conn:
            while not self.stopping.is_set():
                with self.lock:
                    if self.pending:
                        watermark = min(self.pending.values())
                start = time.time()
                rows = conn.execute(query, (datetime.fromtimestamp(watermark, timezone.utc),)).fetchall()
                self.polls += 1
                with self.lock:
                    for key, ts in rows:
                        sent = self.pending.get(bytes(key))
                        if sent is not None and ts.timestamp() >= sent - 1e-6:
                            self.latency[bytes(key)] = start - sent
                            del self.pending[bytes(key)]
                self.stopping.wait(max(0.0, POLL_SECONDS - (time.time() - start)))

    def wait_seen(self, timeout: float, consumer: subprocess.Popen) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    return True
            if consumer.poll() is not None:
                return False
            time.sleep(0.05)
        return False


def send_steady(producer, poller: Poller, users: list[str], rate: float, offset: int) -> float:
    """Send one event per user at a steady rate; returns the seconds it took."""
    topic = TABLE.topic
    headers = [(schema.EVENT_TABLE_HEADER, TABLE.name.encode())]
    t0 = time.perf_counter()
    for i, user in enumerate(users):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent = time.time()
        poller.expect(entity_key(user), sent)
        producer.send(topic, key=user.encode(), value=event(user, offset + i, sent), headers=headers)
    return time.perf_counter() - t0


def scrape(port: int) -> dict[str, float]:
    """The consumer's freshness histogram: cumulative count per bucket bound."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    out = {}
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith("streamflow_event_to_online_seconds_bucket{"):
            out[line.split('le="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def bucket_quantile(before: dict, after: dict, q: float) -> float | None:
    """Upper bound (s) of the bucket holding the q-quantile of what was observed between scrapes."""
    bounds = sorted(after, key=lambda b: float("inf") if b == "+Inf" else float(b))
    total = after.get("+Inf", 0) - before.get("+Inf", 0)
    if total <= 0:
        return None
    for b in bounds:
        if after[b] - before.get(b, 0) >= q * total:
            return float(b)
    return None


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * len(v) + 0.5)) - 1))] if v else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args) -> dict:
    common.use_topics("freshness")
    count, warmup = int(args.rate * args.duration), 200
    users = list(user_ids(11, 0, count + warmup))
    port = free_port()
    log_path = common.data_dir() / "freshness-consumer.log"
    consumer = subprocess.Popen(
        [sys.executable, "-m", "consumer.main", "--group", f"bench-{uuid.uuid4().hex[:8]}",
         "--metrics-port", str(port), "--max-idle", "300"],
        cwd=common.REPO, env=os.environ.copy(), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    poller, producer = Poller(), make_producer()
    poller.start()
    try:
        send_steady(producer, poller, users[:warmup], 200, 0)  # warm-up: the consumer has joined and writes
        if not poller.wait_seen(180, consumer):
            raise RuntimeError(f"warm-up events never became visible; consumer log:\n{log_path.read_text()[-2000:]}")
        before = scrape(port)
        poller.latency.clear()
        sending = send_steady(producer, poller, users[warmup:], args.rate, warmup)
        producer.flush()
        all_seen = poller.wait_seen(60, consumer)
        time.sleep(0.5)  # the consumer's histogram is updated right after its write
        after = scrape(port)
    finally:
        poller.stopping.set()
        producer.close()
        consumer.terminate()
        try:
            consumer.wait(30)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
    ms = [x * 1000 for x in poller.latency.values()]
    p50, p99 = percentile(ms, 0.50), percentile(ms, 0.99)
    hist50, hist99 = bucket_quantile(before, after, 0.5), bucket_quantile(before, after, 0.99)
    common.say(f"  {len(ms):,}/{count:,} events seen, sent at {count / sending:,.0f}/s: p50 {p50:.0f} ms, "
               f"p99 {p99:.0f} ms, max {max(ms, default=float('nan')):.0f} ms; consumer histogram "
               f"p50 <= {hist50} s, p99 <= {hist99} s")
    hist_note = (f"Consumer's own histogram (record timestamp→write, bucket upper bounds): p50 ≤ {hist50} s, "
                 f"p99 ≤ {hist99} s.")
    return {
        "rows": [
            common.row("4 freshness", f"event→online p50 at {count / sending:,.0f} events/s", p50, None, "ms"),
            common.row("4 freshness", f"event→online p99 at {count / sending:,.0f} events/s", p99, None, "ms",
                       "p99 < 1 s", p99 < 1000 and all_seen, higher_is_better=False, note=hist_note),
        ],
        "details": {"events": count, "seen": len(ms), "all_seen": all_seen, "target_rate": args.rate,
                    "achieved_rate": count / sending, "polls": poller.polls,
                    "latency_ms": {"p50": p50, "p90": percentile(ms, 0.9), "p99": p99, "max": max(ms, default=None)},
                    "consumer_histogram_s": {"p50_bucket": hist50, "p99_bucket": hist99},
                    "method": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip()},
    }
