"""LagMonitor, the lag CLI and the lag metrics against the real broker.

Each test works on its own topic and group (uuid names under the test topic prefix). Expected
offsets are fetched independently with the admin client; lag seconds are checked on records
produced with explicit timestamps.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic, OffsetSpec
from prometheus_client import CollectorRegistry

from streamflow import config, kafka_clients, schema
from streamflow.lag import cli
from streamflow.lag.metrics import register_lag_metrics
from streamflow.lag.monitor import LagMonitor
from streamflow.lag.status import Status, StatusEvaluator
from streamflow.net import free_port
from streamflow.topics import table_topics
from tests import pipeline

PARTITIONS = 3


@pytest.fixture(scope="module")
def admin(kafka_bootstrap):
    client = kafka_clients.admin(
        "lagtest", kafka=kafka_clients.settings(kafka_bootstrap), request_timeout_ms=10_000
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def producer(kafka_bootstrap):
    p = kafka_clients.producer("lagtest", kafka=kafka_clients.settings(kafka_bootstrap))
    yield p
    p.close()


@pytest.fixture()
def topic(admin):
    name = f"{config.topic_prefix()}.lagtest-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    admin.wait_for_topics([name], timeout_ms=15_000)
    yield name
    admin.delete_topics([name])


@pytest.fixture()
def group(admin):
    name = f"lagtest-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        admin.delete_groups([name])
    except Exception:  # noqa: BLE001 - a group that never committed does not exist
        pass


@pytest.fixture()
def monitor(kafka_bootstrap, group, topic):
    m = LagMonitor(kafka_bootstrap, group=group, topics=[topic], timeout=10, read_timeout=5)
    yield m
    m.close()


def produce(producer, topic: str, partition: int, timestamps_ms: list[int]) -> None:
    """One event per timestamp (explicit record timestamps), in the event contract's shape."""
    event_time = "2024-01-31T00:00:00+00:00"
    for i, ts in enumerate(timestamps_ms):
        value = json.dumps({schema.KEY: f"{i:04d}-ABCDE", schema.EVENT_TIME: event_time}).encode()
        producer.send(
            topic,
            key=f"{i:04d}-ABCDE".encode(),
            value=value,
            partition=partition,
            timestamp_ms=ts,
            headers=[(schema.EVENT_TIME_HEADER, event_time.encode())],
        )
    producer.flush()


def commit(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit offsets for the group like a consumer that stopped there (assign, commit, leave)."""
    pipeline.commit_offsets(group, offsets, bootstrap)


def admin_offsets(admin, group: str, topic: str):
    """(committed or None, log end) per partition, straight from the admin client."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    committed = admin.list_group_offsets({group: tps})[group]
    end = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
    return {
        tp.partition: (committed[tp].offset if committed[tp].offset >= 0 else None, end[tp].offset)
        for tp in tps
    }


@pytest.fixture()
def loaded(kafka_bootstrap, producer, topic, group):
    """p0: 10 events, record i produced at now - 34 s + i s, committed at 4 (oldest pending: 30 s old);
    p1: 4 events, committed at 4 (caught up); p2: 6 events at now - 20 s, never committed."""
    now_ms = int(time.time() * 1000)
    produce(producer, topic, 0, [now_ms - 34_000 + i * 1000 for i in range(10)])
    produce(producer, topic, 1, [now_ms - 5_000] * 4)
    produce(producer, topic, 2, [now_ms - 20_000 + i for i in range(6)])
    commit(kafka_bootstrap, group, {TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 4})
    return now_ms


def test_offsets_and_lag_agree_with_the_admin_client(admin, monitor, loaded, topic, group):
    sample = monitor.sample()
    expected = admin_offsets(admin, group, topic)
    assert expected == {0: (4, 10), 1: (4, 4), 2: (None, 6)}
    for p in range(PARTITIONS):
        row = sample.partition(topic, p)
        committed, end = expected[p]
        assert (row.committed_offset, row.log_end_offset) == (committed, end)
        assert row.lag == end - (committed if committed is not None else 0)
    assert [r.lag for r in sample.partitions] == [6, 0, 6]
    assert sample.topic(topic).lag == 12
    assert sample.lag == 12
    assert sample.group == group
    assert sample.missing_topics == []


def test_lag_seconds_is_the_age_of_the_record_at_the_committed_offset(monitor, loaded, topic):
    before = time.time()
    sample = monitor.sample()
    after = time.time()
    p0, p1, p2 = (sample.partition(topic, p) for p in range(PARTITIONS))
    # p0: the record at offset 4 was produced 30 s before `loaded` (its neighbours 31 / 29 s).
    assert p0.oldest_offset == 4
    produced = (loaded - 30_000) / 1000
    assert p0.oldest_produced_at.timestamp() == pytest.approx(produced, abs=0.001)
    assert before - produced - 0.01 <= p0.lag_seconds <= after - produced + 0.01
    assert p0.lag_seconds == pytest.approx(30.0, abs=1.0 + (before - loaded / 1000))
    assert p0.lag_seconds == pytest.approx(sample.timestamp - p0.oldest_produced_at.timestamp(), abs=0.01)
    # The event time is reported too, but is not the lag.
    assert p0.oldest_event_time.isoformat() == "2024-01-31T00:00:00+00:00"
    assert p0.event_lag_seconds > 365 * 86400
    # p1 is caught up: no lag, whatever the age of its records.
    assert p1.lag == 0 and p1.lag_seconds == 0.0 and p1.oldest_produced_at is None
    # p2 never committed: the oldest pending event is the first record.
    assert p2.oldest_offset == 0
    produced = (loaded - 20_000) / 1000
    assert before - produced - 0.01 <= p2.lag_seconds <= after - produced + 0.01
    assert sample.topic(topic).lag_seconds == pytest.approx(p0.lag_seconds)
    assert sample.lag_seconds == pytest.approx(p0.lag_seconds)


def test_caught_up_group_has_zero_lag(kafka_bootstrap, admin, monitor, loaded, topic, group):
    commit(
        kafka_bootstrap,
        group,
        {TopicPartition(topic, p): end for p, (_, end) in admin_offsets(admin, group, topic).items()},
    )
    sample = monitor.sample()
    assert [(r.committed_offset, r.lag, r.lag_seconds) for r in sample.partitions] == [
        (10, 0, 0.0),
        (4, 0, 0.0),
        (6, 0, 0.0),
    ]
    assert sample.lag == 0 and sample.lag_seconds == 0.0


def test_owner_of_each_partition(kafka_bootstrap, monitor, loaded, topic, group):
    # kafka-python 3 race: a group leader that lacks the topic's metadata when it assigns hands out
    # nothing and only notices at the next metadata refresh. Fetch the metadata first, refresh often.
    member = kafka_clients.group_consumer(
        group,
        kafka=kafka_clients.settings(kafka_bootstrap),
        client_id="lagtest-member",
        metadata_max_age_ms=1000,
    )
    try:
        assert member.partitions_for_topic(topic) == set(range(PARTITIONS))
        member.subscribe([topic])
        assert len(kafka_clients.await_assignment(member, timeout=15)) == PARTITIONS
        sample = monitor.sample()
        assert sample.state == "Stable" and sample.members == 1
        for row in sample.partitions:
            assert row.client_id == "lagtest-member"
            assert row.consumer_id.startswith("lagtest-member-")
            assert row.host == "127.0.0.1"
    finally:
        member.close(autocommit=False)
    sample = monitor.sample()
    assert sample.members == 0
    assert sample.state == "Empty"
    assert all(r.consumer_id is None and r.client_id is None for r in sample.partitions)


def test_stopped_consumer_turns_stall_then_stop(monitor, loaded, topic):
    ev = StatusEvaluator(window=3, stop_after_seconds=2.0)
    first = monitor.sample()
    assert ev.add(first).partition(topic, 0).status == Status.UNKNOWN
    time.sleep(0.5)
    second = monitor.sample()
    st = ev.add(second)
    assert st.partition(topic, 0).status == Status.STALL
    assert st.partition(topic, 2).status == Status.STALL  # never committed, events pending
    assert st.partition(topic, 1).status == Status.OK  # caught up
    assert st.status == Status.ERR
    # Nothing moves, so the oldest pending event just gets older.
    elapsed = second.timestamp - first.timestamp
    grown = second.partition(topic, 0).lag_seconds - first.partition(topic, 0).lag_seconds
    assert grown == pytest.approx(elapsed, abs=0.05) and grown >= 0.5
    assert second.partition(topic, 0).lag == first.partition(topic, 0).lag == 6
    time.sleep(1.6)
    st = ev.add(monitor.sample())
    assert st.partition(topic, 0).status == Status.STOP  # unmoved for > 2 s
    assert st.partition(topic, 0).stuck_seconds > 2.0
    assert st.status == Status.ERR


def test_reset_to_an_earlier_offset_is_rewind(admin, monitor, loaded, topic, group):
    tp = TopicPartition(topic, 0)
    ev = StatusEvaluator(window=3)
    ev.add(monitor.sample())
    result = admin.reset_group_offsets(group, {tp: 1})
    assert result[tp]["offset"] == 1
    sample = monitor.sample()
    assert sample.partition(topic, 0).committed_offset == admin_offsets(admin, group, topic)[0][0] == 1
    assert sample.partition(topic, 0).lag == 9
    assert sample.partition(topic, 0).oldest_offset == 1
    st = ev.add(sample)
    assert st.partition(topic, 0).status == Status.REWIND
    assert st.status == Status.ERR


def test_consumer_falling_behind_is_warn(kafka_bootstrap, producer, monitor, loaded, topic, group):
    ev = StatusEvaluator(window=3)
    tp = TopicPartition(topic, 0)
    for committed in (5, 6, 7):
        # The consumer commits one more event while three more arrive.
        produce(producer, topic, 0, [int(time.time() * 1000)] * 3)
        commit(kafka_bootstrap, group, {tp: committed})
        st = ev.add(monitor.sample())
    assert st.partition(topic, 0).status == Status.WARN
    assert st.status == Status.ERR  # p2 never moved: STALL


def test_missing_topics_are_reported(kafka_bootstrap, group):
    with LagMonitor(kafka_bootstrap, group=group) as m:  # default: the table topics (none exist here)
        assert m.topics == table_topics()
        sample = m.sample()
    assert sample.topics == []
    assert sample.missing_topics == m.topics
    assert sample.state == "Dead"


def test_cli_json_agrees_with_the_admin_client(capsys, admin, kafka_bootstrap, loaded, topic, group):
    started = time.time()
    rc = cli.main(
        [
            "--bootstrap",
            kafka_bootstrap,
            "--group",
            group,
            "--topic",
            topic,
            "--json",
            "--samples",
            "2",
            "--interval",
            "0.3",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert doc["group"] == group
    assert doc["samples"] == 2
    assert doc["status"] == "ERR"
    expected = admin_offsets(admin, group, topic)
    (topic_doc,) = doc["topics"]
    assert topic_doc["lag"] == doc["lag"] == 12
    rows = {p["partition"]: p for p in topic_doc["partitions"]}
    for p, (committed, end) in expected.items():
        assert (rows[p]["committed_offset"], rows[p]["log_end_offset"]) == (committed, end)
    assert [rows[p]["status"] for p in range(PARTITIONS)] == ["STALL", "OK", "STALL"]
    produced = (loaded - 30_000) / 1000
    assert started - produced <= rows[0]["lag_seconds"] <= time.time() - produced


def test_cli_table(capsys, kafka_bootstrap, loaded, topic, group):
    rc = cli.main(["--bootstrap", kafka_bootstrap, "--group", group, "--topic", topic, "--samples", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == list(cli.COLUMNS)
    assert lines[1].split()[:6] == [group, topic, "0", "4", "10", "6"]
    assert lines[3].split()[:6] == [group, topic, "2", "-", "6", "6"]
    assert lines[1].split()[-1] == "UNKNOWN"  # one sample cannot judge progress, and says so
    assert "status UNKNOWN" in out
    assert f"group {group} (Empty, 0 members): lag 12 messages" in out


def test_cli_watch_emits_one_document_per_sample(capsys, kafka_bootstrap, loaded, topic, group):
    rc = cli.main(
        [
            "--bootstrap",
            kafka_bootstrap,
            "--group",
            group,
            "--topic",
            topic,
            "--json",
            "--watch",
            "0.2",
            "--samples",
            "3",
        ]
    )
    assert rc == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["samples"] for d in docs] == [1, 2, 3]
    assert [d["status"] for d in docs] == ["UNKNOWN", "ERR", "ERR"]
    assert docs[2]["lag_seconds"] > docs[0]["lag_seconds"]


def test_cli_kafka_unreachable(capsys):
    port = free_port()  # a port nobody listens on
    rc = cli.main(["--bootstrap", f"127.0.0.1:{port}", "--timeout", "1"])
    err = capsys.readouterr()
    assert rc == 4
    assert err.err.startswith(f"Kafka unreachable at 127.0.0.1:{port}: ")
    assert err.err.count("\n") == 1 and err.out == ""
    assert "Traceback" not in err.err + err.out


def test_metrics_from_a_sample(monitor, loaded, topic, group):
    registry = CollectorRegistry()
    metrics = register_lag_metrics(registry)
    ev = StatusEvaluator(window=3)
    ev.add(monitor.sample())
    sample = monitor.sample()
    metrics.update(sample, ev.add(sample))

    def value(name, **labels):
        return registry.get_sample_value(name, {"group": group, **labels})

    assert value("streamflow_consumer_lag_messages", topic=topic, partition="0") == 6
    assert value("streamflow_consumer_lag_messages", topic=topic, partition="1") == 0
    assert value("streamflow_consumer_lag_seconds", topic=topic, partition="0") == pytest.approx(
        sample.partition(topic, 0).lag_seconds
    )
    assert value("streamflow_consumer_committed_offset", topic=topic, partition="2") is None
    assert value("streamflow_consumer_lag_status", topic=topic, partition="0") == 2  # STALL
    assert value("streamflow_consumer_lag_status", topic=topic, partition="1") == 0  # OK
    assert value("streamflow_consumer_topic_lag_messages", topic=topic) == 12
    assert value("streamflow_consumer_group_lag_messages") == 12
    assert value("streamflow_consumer_group_status") == 2  # ERR
    assert registry.get_sample_value("streamflow_kafka_up") == 1
    # A failed sample attempt: Kafka down, the lag figures are not shown as current any more.
    metrics.unreachable(group)
    assert registry.get_sample_value("streamflow_kafka_up") == 0
    assert value("streamflow_kafka_up_by_group") == 0
    assert value("streamflow_consumer_lag_messages", topic=topic, partition="0") is None
    assert value("streamflow_consumer_group_lag_messages") is None
    assert value("streamflow_consumer_lag_sample_timestamp_seconds") == sample.timestamp
    metrics.update(sample, ev.evaluate())
    assert registry.get_sample_value("streamflow_kafka_up") == 1
    assert value("streamflow_consumer_lag_messages", topic=topic, partition="0") == 6
    # Another registry's lag metrics are independent (prometheus_client's multiprocess mode, which
    # importing Feast turns on, would otherwise share same-named metrics).
    other = CollectorRegistry()
    register_lag_metrics(other)
    assert (
        other.get_sample_value(
            "streamflow_consumer_lag_messages", {"group": group, "topic": topic, "partition": "0"}
        )
        is None
    )
    # A topic that leaves the samples takes its series with it.
    sample.topics = []
    metrics.update(sample)
    assert value("streamflow_consumer_lag_messages", topic=topic, partition="0") is None
    assert value("streamflow_consumer_topic_lag_messages", topic=topic) is None
    assert value("streamflow_consumer_group_lag_messages") == 0
