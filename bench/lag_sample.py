"""Lag sample of a backlog on ~200 partitions: our monitor against Kafka's own consumer-group tool.

Six topics of 34 partitions (204) each hold a backlog; a group committed part of every partition.
Ours: ``LagMonitor.sample()`` -- offsets, owners, and the lag in seconds of every lagging partition
(one record read per partition) -- timed over several samples of one monitor (the first builds
its clients). Baseline: ``kafka-consumer-groups --describe`` (kafka-tools' ConsumerGroupCommand on
Java 17, fetched by scripts/services.sh), timed per run including its JVM start: the tool an
operator would run instead, which gives offsets and message lag but no lag in seconds.
Goal: a sample < 2 s with lag seconds on every lagging partition.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from kafka import OffsetAndMetadata, TopicPartition

from bench import common

PARTITIONS = 34
PER_PARTITION = 200
SAMPLES = 5


def _tools() -> Path:
    return Path(os.environ.get("STREAMFLOW_STATE_DIR", common.REPO / ".services")) / "kafka" / "tools"


def run(args) -> dict:
    from streamflow import kafka_clients
    from streamflow.lag.monitor import LagMonitor
    from streamflow.topics import table_topics

    common.use_topics("lag", partitions=PARTITIONS)
    topics = table_topics()
    producer = kafka_clients.producer("bench-lag", linger_ms=20)
    value = json.dumps({"user_id": "0001-ABCDE", "pad": "x" * 200}).encode()
    for topic in topics:
        for p in range(PARTITIONS):
            for _ in range(PER_PARTITION):
                producer.send(topic, key=b"k", value=value, partition=p)
    producer.flush()
    producer.close()
    group = f"bench-lag-{uuid.uuid4().hex[:8]}"
    offsets = {
        TopicPartition(t, p): (i * 7) % PER_PARTITION
        for i, (t, p) in enumerate((t, p) for t in topics for p in range(PARTITIONS))
    }
    committer = kafka_clients.group_consumer(group, role="bench-lag")
    committer.assign(list(offsets))
    committer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
    committer.close(autocommit=False)
    lagging = sum(1 for o in offsets.values() if o < PER_PARTITION)
    common.say(f"  {len(offsets)} partitions, {lagging} lagging, {PER_PARTITION} events each (not timed)")

    ours, complete = [], True
    with LagMonitor(group=group, topics=topics) as monitor:
        for _ in range(SAMPLES):
            started = time.perf_counter()
            sample = monitor.sample()
            ours.append(time.perf_counter() - started)
            with_seconds = sum(1 for p in sample.partitions if p.lag > 0 and p.lag_seconds is not None)
            complete &= with_seconds == lagging
    theirs = []
    tools = _tools()
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [
                "java",
                "-cp",
                f"{tools}/*",
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
                kafka_clients.settings().bootstrap_servers,
                "--describe",
                "--group",
                group,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        theirs.append(time.perf_counter() - started)
    first, steady = ours[0], statistics.median(ours[1:])
    common.say(
        f"  ours: first {first:.2f} s, then median {steady:.2f} s; lag seconds on every lagging "
        f"partition: {complete}; kafka-consumer-groups --describe: median {statistics.median(theirs):.2f} s"
    )
    return {
        "rows": [
            common.row(
                "lag sample, 204 partitions",
                "seconds per sample (ours: median of samples 2-5 of one "
                "monitor; baseline: kafka-consumer-groups --describe incl. JVM start)",
                steady,
                statistics.median(theirs),
                "s",
                goal="< 2 s, lag seconds on every lagging partition",
                met=steady < 2 and complete,
                higher_is_better=False,
                note=f"first sample (clients connect): {first:.2f} s; every lagging partition had its lag "
                f"in seconds: {complete}",
            ),
        ],
        "details": {
            "partitions": len(offsets),
            "lagging": lagging,
            "ours_seconds": ours,
            "theirs_seconds": theirs,
            "complete": complete,
        },
    }
