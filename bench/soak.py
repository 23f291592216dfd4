"""Soak run: a steady stream of events for a while; the consumer's lag and memory, as figures.

    .venv/bin/python bench/soak.py                                  # 200 events/s for 120 s
    .venv/bin/python bench/soak.py --rate 500 --duration 1800 --users 2000

Not a test (it runs for as long as it is told). What it does:

1. Works in a database of its own (``--database``, default ``streamflow_soak``, created when
   missing; emptied at the start) and on fresh topics (prefix ``soak<random>``), so it never
   touches the demo's or the tests' data. PostgreSQL and Kafka must be on 127.0.0.1.
2. Generates ``--users`` users (one snapshot), applies the Feast definitions, starts one consumer
   process (``python -m consumer.cli``) and waits until it has joined its group.
3. Produces a steady, open-loop stream of ``--rate`` events/s for ``--duration`` s: the snapshot's
   rows, cycle after cycle, each cycle one day later in event time, so every event is a real
   write (a newer value online, a new row offline).
4. Every ``--sample`` s, from a thread of its own: the group's lag (messages, and seconds since the
   oldest unconsumed event was produced) with the project's ``LagMonitor``, and the consumer's
   resident memory (RSS, psutil).
5. When the stream ends: waits (at most ``--drain-timeout`` s) until the lag is 0, stops the
   consumer, prints a markdown summary and writes ``bench/results/soak.json``.

"Lag stays bounded" reads as: the largest lag after the warm-up (``--warmup`` s) is a few
batches, and it falls to 0 once the stream stops. "Memory stays flat" reads as: the RSS slope
over the samples after the warm-up (MB per 10 minutes) is close to 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from streamflow.topics import topic_of

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "soak.json"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default %(default).0f)")
    p.add_argument(
        "--duration", type=float, default=120.0, help="seconds of streaming (default %(default).0f)"
    )
    p.add_argument("--users", type=int, default=500, help="users of the snapshot (6 events each per cycle)")
    p.add_argument(
        "--sample", type=float, default=5.0, help="seconds between samples (default %(default).0f)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=20.0,
        help="seconds of streaming left out of the bounds (start-up, first writes)",
    )
    p.add_argument("--max-batch", type=int, default=500, help="the consumer's --max-batch")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=180.0,
        help="longest wait for the lag to reach 0 after the stream (default %(default).0f)",
    )
    p.add_argument("--database", default="streamflow_soak", help="PostgreSQL database of the run")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON results (default %(default)s)")
    args = p.parse_args(argv)
    for name in ("rate", "duration", "sample"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    if args.users < 1:
        p.error("--users must be at least 1")
    return args


def configure(args: argparse.Namespace) -> None:
    """Environment of the run (before streamflow.config fills in its defaults)."""
    os.environ["POSTGRES_DB"] = args.database
    os.environ.setdefault("FEAST_PROJECT", "streamflow_soak")
    os.environ["STREAMFLOW_TOPIC_PREFIX"] = f"soak{uuid.uuid4().hex[:8]}"
    os.environ.setdefault("STREAMFLOW_NO_PROGRESS", "1")
    sys.path.insert(0, str(REPO))


def check_loopback() -> None:
    from streamflow import config

    hosts = {config.postgres().host}
    hosts |= {server.rsplit(":", 1)[0].strip("[]") for server in config.kafka_bootstrap().split(",")}
    outside = sorted(h for h in hosts if h not in LOOPBACK)
    if outside:
        raise SystemExit(f"the soak run only talks to 127.0.0.1; configured: {', '.join(outside)}")


# --- set-up --------------------------------------------------------------------------------------


def prepare_database() -> None:
    """Create the run's database when missing, empty its tables, apply the Feast definitions."""
    import psycopg

    from feature_repo import definitions
    from streamflow import config, warehouse
    from streamflow.feast_stores.online import table_name
    from streamflow.feature_store import apply

    settings = config.postgres()
    warehouse.ensure_database(settings)
    with psycopg.connect(settings.conninfo, autocommit=True, connect_timeout=5) as conn:
        warehouse.drop_schema(conn)
        for view in definitions.FEATURE_VIEWS.values():
            conn.execute(f'DROP TABLE IF EXISTS "{table_name(os.environ["FEAST_PROJECT"], view)}"')
    apply()


def start_consumer(group: str, max_batch: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "--group", group, "--max-batch", str(max_batch)],
        cwd=REPO,
        env={**os.environ, "STREAMFLOW_LOG_LEVEL": "INFO"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_joined(monitor, proc: subprocess.Popen, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the consumer exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if monitor.sample().members > 0:
                return
        except Exception:  # noqa: BLE001 - the group may not exist yet
            pass
        time.sleep(0.5)
    raise SystemExit(f"the consumer did not join within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def delete_topics(topics: list[str]) -> None:
    """The run's topics are of no use afterwards: delete them (best effort)."""
    from streamflow.kafka_topics import admin_client

    try:
        admin = admin_client()
        try:
            admin.delete_topics(topics)
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"soak: could not delete the topics ({exc})", file=sys.stderr)


# --- sampling ------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples lag and the consumer's RSS every `interval` seconds until stopped."""

    def __init__(self, monitor, pid: int, interval: float, t0: float):
        super().__init__(name="soak-sampler", daemon=True)
        import psutil

        self.monitor = monitor
        self.process = psutil.Process(pid)
        self.interval = interval
        self.t0 = t0
        self.samples: list[dict] = []
        self.errors = 0
        self.halt = threading.Event()

    def take(self) -> dict | None:
        t = time.monotonic() - self.t0
        try:
            rss = self.process.memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - the consumer is gone
            rss = None
        try:
            lag = self.monitor.sample()
        except Exception:  # noqa: BLE001 - count it, keep sampling
            self.errors += 1
            return None
        sample = {
            "t": round(t, 1),
            "lag": lag.lag,
            "lag_seconds": lag.lag_seconds,
            "rss_mb": round(rss, 1) if rss is not None else None,
        }
        self.samples.append(sample)
        return sample

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.take()


# --- the stream ----------------------------------------------------------------------------------


def rows_of(folder: Path) -> dict[str, list[dict]]:
    from streamflow import schema
    from streamflow.batch.validate import read_snapshot

    frames = read_snapshot(folder)
    out = {}
    for table in schema.TABLES:
        frame = frames[table.name]
        out[table.name] = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return out


def stream(rows: dict[str, list[dict]], rate: float, duration: float) -> dict:
    """Send events at `rate` per second for `duration` seconds; returns counts."""
    from kafka.errors import KafkaError

    from producer.pacing import RateLimiter
    from producer.replay import make_producer
    from streamflow import events, schema

    producer = make_producer()
    limiter = RateLimiter(rate)
    counts = {"sent": 0, "acked": 0, "failed": 0, "cycles": 0}
    lock = threading.Lock()

    def ack(_md):
        with lock:
            counts["acked"] += 1

    def fail(_exc):
        with lock:
            counts["failed"] += 1

    base = date(2024, 1, 31)
    last_day = datetime.now(timezone.utc).date()
    span = max(1, (last_day - base).days)
    started = time.monotonic()
    end = started + duration
    cycle = 0
    while time.monotonic() < end:
        day = base + timedelta(days=cycle % span)  # one day later each cycle (wraps at today)
        snapshot = f"soak_{cycle:05d}"
        for table in schema.TABLES:
            headers = events.headers(table, day)
            for row in rows[table.name]:
                if time.monotonic() >= end:
                    break
                value = events.encode_value(table, row, day, snapshot)
                try:
                    future = producer.send(
                        topic_of(table), key=row[schema.KEY].encode(), value=value, headers=headers
                    )
                except KafkaError:
                    fail(None)
                else:
                    future.add_callback(ack)
                    future.add_errback(fail)
                counts["sent"] += 1
                limiter.wait()
        cycle += 1
    counts["cycles"] = cycle
    counts["seconds"] = round(time.monotonic() - started, 1)
    try:
        producer.flush(timeout=120)
    finally:
        try:
            producer.close(timeout=10)
        except KafkaError:
            pass
    return counts


# --- report --------------------------------------------------------------------------------------


def slope_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) points, per 10 minutes."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / var * 600


def summarize(args, samples: list[dict], counts: dict, drained_after: float | None, consumer: dict) -> dict:
    steady = [s for s in samples if args.warmup <= s["t"] <= counts["seconds"]] or samples
    lags = [s["lag"] for s in steady]
    lag_secs = [s["lag_seconds"] for s in steady if s["lag_seconds"] is not None]
    rss = [(s["t"], s["rss_mb"]) for s in steady if s["rss_mb"] is not None]
    return {
        "rate_events_per_s": args.rate,
        "duration_s": args.duration,
        "users": args.users,
        "max_batch": args.max_batch,
        "events_sent": counts["sent"],
        "events_acked": counts["acked"],
        "events_failed": counts["failed"],
        "cycles": counts["cycles"],
        "achieved_rate": round(counts["sent"] / counts["seconds"], 1) if counts["seconds"] else None,
        "consumer": consumer,
        "samples": len(samples),
        "max_lag_messages": max(lags) if lags else None,
        "mean_lag_messages": round(sum(lags) / len(lags), 1) if lags else None,
        "max_lag_seconds": round(max(lag_secs), 2) if lag_secs else 0.0,
        "drained_after_stream_s": round(drained_after, 1) if drained_after is not None else None,
        "rss_after_warmup_mb": rss[0][1] if rss else None,
        "rss_end_mb": rss[-1][1] if rss else None,
        "rss_max_mb": max(v for _, v in rss) if rss else None,
        "rss_growth_mb": round(rss[-1][1] - rss[0][1], 1) if rss else None,
        "rss_slope_mb_per_10min": (round(slope, 2) if (slope := slope_per_10min(rss)) is not None else None),
        "timeline": samples,
        "machine": {
            "host": socket.gethostname(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def markdown(result: dict) -> str:
    rows = [
        (
            "stream",
            f"{result['events_sent']:,} events at {result['achieved_rate']} events/s "
            f"({result['duration_s']:.0f} s, {result['users']} users)",
        ),
        ("acknowledged / failed", f"{result['events_acked']:,} / {result['events_failed']:,}"),
        (
            "consumed / written / dead-lettered",
            f"{result['consumer'].get('consumed', '?')} / {result['consumer'].get('written', '?')} / "
            f"{result['consumer'].get('dead_lettered', '?')}",
        ),
        ("max lag after warm-up", f"{result['max_lag_messages']} messages, {result['max_lag_seconds']} s"),
        ("mean lag after warm-up", f"{result['mean_lag_messages']} messages"),
        ("lag 0 after the stream", f"{result['drained_after_stream_s']} s"),
        (
            "consumer RSS after warm-up / end / max",
            f"{result['rss_after_warmup_mb']} / {result['rss_end_mb']} / {result['rss_max_mb']} MB",
        ),
        (
            "RSS growth (slope)",
            f"{result['rss_growth_mb']} MB ({result['rss_slope_mb_per_10min']} MB per 10 min)",
        ),
    ]
    return "| soak | figure |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args)
    check_loopback()

    from streamflow import config
    from streamflow.datagen.generate import generate
    from streamflow.kafka_topics import ensure_topics
    from streamflow.lag.monitor import LagMonitor
    from streamflow.topics import dead_letter_topic, table_topics

    work = Path(tempfile.mkdtemp(prefix="streamflow-soak-"))
    consumer_log = work / "consumer.log"
    group = f"{config.topic_prefix()}-group"
    print(
        f"soak: {args.rate:.0f} events/s for {args.duration:.0f} s, {args.users} users; database "
        f"{config.postgres().describe()}, topics {config.topic_prefix()}.*; logs in {work}",
        file=sys.stderr,
    )

    folder = generate(work / "data", users=args.users, snapshots=["month_000"], progress=False)["month_000"]
    rows = rows_of(folder)
    prepare_database()
    ensure_topics(table_topics() + [dead_letter_topic()])

    monitor = LagMonitor(group=group, topics=table_topics())
    consumer = start_consumer(group, args.max_batch, consumer_log)
    sampler = None
    stats: dict = {}
    try:
        wait_joined(monitor, consumer, consumer_log)
        t0 = time.monotonic()
        sampler = Sampler(monitor, consumer.pid, args.sample, t0)
        sampler.take()
        sampler.start()
        counts = stream(rows, args.rate, args.duration)
        stream_end = time.monotonic()
        drained_after = None
        deadline = stream_end + args.drain_timeout
        while time.monotonic() < deadline and consumer.poll() is None:
            try:
                if monitor.sample().lag == 0:
                    drained_after = time.monotonic() - stream_end
                    break
            except Exception:  # noqa: BLE001 - keep waiting (bounded)
                pass
            time.sleep(1.0)
        sampler.halt.set()
        sampler.join(timeout=args.sample + 30)
        sampler.take()
    finally:
        if sampler is not None:
            sampler.halt.set()
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGTERM)
            try:
                consumer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                consumer.kill()
                consumer.wait(timeout=30)
        monitor.close()
        delete_topics(table_topics() + [dead_letter_topic()])
    text = consumer_log.read_text(errors="replace")
    found = re.findall(
        r"^consumed (\d+), written (\d+), dead-lettered (\d+), batches (\d+), write retries (\d+)", text, re.M
    )
    if found:
        stats = dict(
            zip(("consumed", "written", "dead_lettered", "batches", "write_retries"), map(int, found[-1]))
        )
    stats["exit_code"] = consumer.returncode

    result = summarize(args, sampler.samples, counts, drained_after, stats)
    result["topics"] = f"{config.topic_prefix()}.*"
    result["sampling_errors"] = sampler.errors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwrote {args.out}", file=sys.stderr)
    ok = drained_after is not None and counts["failed"] == 0 and stats.get("exit_code") == 0
    if not ok:
        print(
            "soak: the consumer did not drain, events failed, or the consumer did not exit cleanly; "
            f"see {consumer_log}",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
