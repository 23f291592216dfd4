"""Lag of a backlog over many partitions, every state of a group, and deliberate replays, against
the real broker, checked against Kafka's own consumer-group tool (kafka-tools' ConsumerGroupCommand,
fetched by Maven like the broker: scripts/services.sh)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic

from streamflow import config, kafka_clients, schema
from streamflow.lag import cli, rewind
from streamflow.lag.monitor import LagMonitor, marks_group
from streamflow.lag.status import Status, StatusEvaluator
from tests import pipeline

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(os.environ.get("STREAMFLOW_STATE_DIR", ROOT / ".services")) / "kafka" / "tools"
TOPICS, PARTITIONS = 6, 4  # 24 partitions, like the six table topics


@pytest.fixture(scope="module")
def admin(kafka_bootstrap):
    client = kafka_clients.admin("lagbacklog", kafka=kafka_clients.settings(kafka_bootstrap))
    yield client
    client.close()


@pytest.fixture()
def topics(admin):
    names = [f"{config.topic_prefix()}.backlog-{uuid.uuid4().hex[:8]}" for _ in range(TOPICS)]
    admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names])
    admin.wait_for_topics(names, timeout_ms=15_000)
    yield names
    admin.delete_topics(names)


def group_name() -> str:
    return f"backlog-{uuid.uuid4().hex[:10]}"


def fill(bootstrap: str, topics: list[str], per_partition: int, batch_size: int, replay: str | None = None):
    """``per_partition`` events in every partition, in producer batches of about ``batch_size`` bytes
    (1: a batch per record; 1 MiB with linger: batches far above the monitor's fetch bound)."""
    producer = kafka_clients.producer(
        "lagbacklog",
        kafka=kafka_clients.settings(bootstrap),
        batch_size=batch_size,
        linger_ms=50 if batch_size > 1 else 0,
    )
    headers = [(schema.EVENT_TIME_HEADER, b"2024-01-31T00:00:00+00:00")]
    if replay:
        headers.append((schema.REPLAY_HEADER, replay.encode()))
    try:
        for topic in topics:
            for p in range(PARTITIONS):
                for i in range(per_partition):
                    value = json.dumps({schema.KEY: f"{i % 10000:04d}-ABCDE", "pad": "x" * 200}).encode()
                    producer.send(topic, key=b"k", value=value, partition=p, headers=headers)
        producer.flush()
    finally:
        producer.close()


def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    pipeline.commit_offsets(group, offsets, bootstrap)


def kafka_describe(bootstrap: str, group: str) -> dict[tuple[str, int], tuple[str, str, str]]:
    """(CURRENT-OFFSET, LOG-END-OFFSET, LAG) per partition, as kafka-consumer-groups --describe says."""
    if not any(TOOLS.glob("kafka-tools-*.jar")):
        pytest.fail(f"Kafka's tools are not in {TOOLS}: run scripts/services.sh up (it fetches them)")
    out = subprocess.run(
        [
            "java",
            "-cp",
            f"{TOOLS}/*",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[0] == group and re.fullmatch(r"\d+", cells[2]):
            rows[(cells[1], int(cells[2]))] = (cells[3], cells[4], cells[5])
    return rows


@pytest.mark.parametrize("batch_size", [1, 16 * 1024, 1024 * 1024], ids=["batch-per-record", "16KiB", "1MiB"])
def test_lag_seconds_on_every_lagging_partition(kafka_bootstrap, topics, batch_size):
    per_partition = 300
    fill(kafka_bootstrap, topics, per_partition, batch_size)
    group = group_name()
    # committed at varied points (some at the start, some in the middle, some caught up)
    offsets = {
        TopicPartition(t, p): (ti * PARTITIONS + p) * 37 % (per_partition + 1)
        for ti, t in enumerate(topics)
        for p in range(PARTITIONS)
    }
    commit(kafka_bootstrap, group, offsets)
    lagging = {tp for tp, off in offsets.items() if off < per_partition}
    assert len(lagging) >= 20
    with LagMonitor(kafka_bootstrap, group=group, topics=topics, read_timeout=5) as monitor:
        for _ in range(3):  # one monitor, several samples: each must read every partition again
            sample = monitor.sample()
            parts = {(p.topic, p.partition): p for p in sample.partitions}
            assert len(parts) == TOPICS * PARTITIONS
            for tp, off in offsets.items():
                p = parts[(tp.topic, tp.partition)]
                assert (p.committed_offset, p.log_end_offset, p.lag) == (
                    off,
                    per_partition,
                    per_partition - off,
                )
                if tp in lagging:
                    assert p.lag_seconds is not None and p.lag_seconds >= 0, f"{tp}: no lag seconds"
                    assert p.oldest_offset == off
                else:
                    assert p.lag_seconds == 0.0
    theirs = kafka_describe(kafka_bootstrap, group)
    ours = {
        (p.topic, p.partition): (str(p.committed_offset), str(p.log_end_offset), str(p.lag))
        for p in sample.partitions
    }
    assert theirs == ours


def test_unknown_group_is_an_answer_not_an_error(kafka_bootstrap, topics, capsys):
    fill(kafka_bootstrap, topics[:2], 25, 16 * 1024)
    group = group_name()  # never consumed
    code = cli.main(
        [
            "--group",
            group,
            *sum((["--topic", t] for t in topics), []),
            "--samples",
            "2",
            "--interval",
            "0.2",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "error" not in err.lower()
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["status"] == "NEW"
    assert doc["lag"] == 2 * PARTITIONS * 25
    for topic in doc["topics"]:
        for p in topic["partitions"]:
            assert p["lag"] == p["log_end_offset"] - p["log_start_offset"]
            assert p["status"] == ("NEW" if p["lag"] else "OK")
            if p["lag"]:
                assert p["lag_seconds"] is not None
    code = cli.main(["--group", group, *sum((["--topic", t] for t in topics), []), "--samples", "1"])
    out, err = capsys.readouterr()
    assert code == 0 and "no commits yet" in out and "error" not in err.lower()
    assert kafka_describe(kafka_bootstrap, group) == {}  # Kafka's tool: the group does not exist


def test_time_to_drain_from_the_consume_rate(kafka_bootstrap, topics):
    fill(kafka_bootstrap, topics[:1], 200, 16 * 1024)
    group = group_name()
    tps = [TopicPartition(topics[0], p) for p in range(PARTITIONS)]
    monitor = LagMonitor(kafka_bootstrap, group=group, topics=topics[:1])
    ev = StatusEvaluator(window=5)
    with monitor:
        commit(kafka_bootstrap, group, {tp: 0 for tp in tps})
        first = ev.add(monitor.sample())
        assert first.drain_seconds is None and first.consume_rate is None  # one sample: no rate
        commit(kafka_bootstrap, group, {tp: 100 for tp in tps})
        st = ev.add(monitor.sample())
    assert st.consume_rate is not None and st.consume_rate > 0
    span = 400 / st.consume_rate  # 4 partitions x 100 events consumed in the window
    for tp in tps:
        ps = st.partition(tp.topic, tp.partition)
        # 100 pending at the rate that consumed 100: the drain time equals the window's span
        assert ps.drain_seconds == pytest.approx(100 / ps.consume_rate)
        assert ps.drain_seconds == pytest.approx(span, rel=1e-6)
    assert st.drain_seconds == pytest.approx(span, rel=1e-6)


def test_rewind_is_a_replay_and_an_unmarked_reset_is_an_alarm(kafka_bootstrap, admin, topics, capsys):
    fill(kafka_bootstrap, topics[:1], 50, 16 * 1024)
    tps = [TopicPartition(topics[0], p) for p in range(PARTITIONS)]
    marked, unmarked = group_name(), group_name()
    for g in (marked, unmarked):
        commit(kafka_bootstrap, g, {tp: 50 for tp in tps})

    with LagMonitor(kafka_bootstrap, group=marked, topics=topics[:1]) as monitor:
        ev = StatusEvaluator(window=3)
        assert ev.add(monitor.sample()).status == Status.OK
        assert rewind.main(["--group", marked, "--topic", topics[0], "--to", "earliest"]) == 0
        assert "200 events to replay" in capsys.readouterr().out
        st = ev.add(monitor.sample())
        assert st.status == Status.REPLAY, st.to_dict()
        assert all(st.partition(tp.topic, tp.partition).status == Status.REPLAY for tp in tps)
        marks = admin.list_group_offsets({marks_group(marked): tps})[marks_group(marked)]
        assert {om.offset for om in marks.values()} == {0}

    with LagMonitor(kafka_bootstrap, group=unmarked, topics=topics[:1]) as monitor:
        ev = StatusEvaluator(window=3)
        ev.add(monitor.sample())
        admin.reset_group_offsets(unmarked, {tp: 0 for tp in tps})  # Kafka's reset: no mark
        st = ev.add(monitor.sample())
        assert st.status == Status.ERR
        assert {ps.status for ps in st.partitions.values()} == {Status.REWIND}


def test_rewind_refuses_a_live_group_and_bad_input(kafka_bootstrap, topics, capsys):
    fill(kafka_bootstrap, topics[:1], 10, 16 * 1024)
    group = group_name()
    consumer = kafka_clients.group_consumer(
        group, role="lagbacklog-live", kafka=kafka_clients.settings(kafka_bootstrap)
    )
    try:
        consumer.subscribe([topics[0]])
        assert kafka_clients.await_assignment(consumer, timeout=30)
        assert rewind.main(["--group", group, "--topic", topics[0], "--to", "earliest"]) == 1
        assert "active member" in capsys.readouterr().err
    finally:
        consumer.close(autocommit=False)
    assert rewind.main(["--group", group, "--topic", topics[0], "--to", "yesterday"]) == 1
    assert "--to 'yesterday'" in capsys.readouterr().err


def test_a_backlog_sent_by_a_replay_is_reported_as_replay(kafka_bootstrap, topics):
    tps = [TopicPartition(topics[0], p) for p in range(PARTITIONS)]
    group = group_name()
    fill(kafka_bootstrap, topics[:1], 20, 16 * 1024, replay="2024-01-31@2026-12-03T09:00:00Z")
    with LagMonitor(kafka_bootstrap, group=group, topics=topics[:1]) as monitor:
        ev = StatusEvaluator(window=3)
        commit(kafka_bootstrap, group, {tp: 5 for tp in tps})
        ev.add(monitor.sample())
        fill(kafka_bootstrap, topics[:1], 20, 16 * 1024, replay="2024-01-31@2026-12-03T09:00:00Z")
        commit(kafka_bootstrap, group, {tp: 10 for tp in tps})
        sample = monitor.sample()
        st = ev.add(sample)
    # consuming while the lag grows: WARN for live events, REPLAY for a replay's backlog
    assert {p.replay_id for p in sample.partitions} == {"2024-01-31@2026-12-03T09:00:00Z"}
    assert st.status == Status.REPLAY, st.to_dict()
