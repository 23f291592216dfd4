"""3. Producer: ``producer.replay.Replayer`` vs a bare kafka-python send loop of the same events.

Both use ``producer.replay.make_producer()`` (acks=all, idempotent, linger 10 ms, 64 KiB batches)
and send month_000 of N users (6 events per user) to the same fresh topics. The Replayer's time
is its own (``stats.seconds``): reading and validating the CSVs, encoding, sending with delivery
callbacks, flushing. The bare loop sends events serialized beforehand (not timed) and flushes.
"""

from __future__ import annotations

import time

from bench import common  # noqa: I001  (first: sets the benchmark environment)
from producer.replay import Replayer, _records, make_producer
from streamflow import events, schema
from streamflow.batch.validate import read_snapshot
from streamflow.topics import topic_of

NAME = "producer"


def serialized(folder) -> list[tuple]:
    """(topic, key, value, headers) of every event of a snapshot, as the Replayer builds them."""
    as_of = schema.snapshot_as_of(folder.name)
    frames = read_snapshot(folder)
    out = []
    for table in schema.TABLES:
        hdrs = events.headers(table, as_of)
        for row in _records(frames[table.name]):
            out.append(
                (
                    topic_of(table),
                    row[schema.KEY].encode(),
                    events.encode_value(table, row, as_of, folder.name),
                    hdrs,
                )
            )
    return out


def bare_loop(messages: list[tuple]) -> float:
    producer = make_producer()
    try:
        producer.send(messages[0][0], key=b"warm-up", value=b"{}")  # metadata, connection
        producer.flush()
        started = time.perf_counter()
        for topic, key, value, hdrs in messages:
            producer.send(topic, key=key, value=value, headers=hdrs)
        producer.flush(timeout=300)
        return time.perf_counter() - started
    finally:
        producer.close()


def replayer(folder) -> tuple[int, float, int]:
    producer = make_producer()
    try:
        producer.send(topic_of(schema.TABLES[0]), key=b"warm-up", value=b"{}")
        producer.flush()
        with common.profiled(NAME):
            stats = Replayer(producer).replay([folder])
    finally:
        producer.close()
    return stats.total_acked, stats.seconds, stats.total_failed


def run(args) -> dict:
    common.use_topics("producer")
    folder = common.snapshots(args.users)["month_000"]
    started = time.perf_counter()
    messages = serialized(folder)
    prepare = time.perf_counter() - started
    bare_seconds = bare_loop(messages)
    common.say(
        f"  bare loop: {len(messages):,} events in {bare_seconds:.2f} s "
        f"(serialized beforehand in {prepare:.2f} s)"
    )
    acked, seconds, failed = replayer(folder)
    common.say(f"  Replayer : {acked:,} events acknowledged in {seconds:.2f} s, {failed} failed")
    ours, bare = common.rate(acked, seconds), common.rate(len(messages), bare_seconds)
    return {
        "rows": [
            common.row(
                "3 producer",
                "events/s (Replayer incl. CSV read + encode; bare: pre-serialized)",
                ours,
                bare,
                "events/s",
                "≥ 0.7×",
                ours >= 0.7 * bare,
            )
        ],
        "details": {
            "users": args.users,
            "events": len(messages),
            "bare_seconds": bare_seconds,
            "serialize_seconds": prepare,
            "replayer_seconds": seconds,
            "acked": acked,
            "failed": failed,
            "method": "same producer settings (make_producer) and topics; the bare loop sends events "
            "serialized beforehand and flushes; the Replayer's own timing (read, validate, "
            "encode, send with callbacks, flush).",
        },
    }
