"""The three-broker cluster of scripts/services.sh (KAFKA_BROKERS=3), on private ports.

A cluster of its own (KAFKA_PORT=19292 by default, STREAMFLOW_TEST_CLUSTER_PORT to change it;
tests/test_kafka_faults.py uses 19092; data in .services/kafka-cluster-test): the shared broker
on 9092 is never touched. Topics get 3 replicas and min.insync.replicas=2, and an idempotent
acks=all producer loses and duplicates nothing while one node is SIGKILLed and started again.
"""

from __future__ import annotations

import os
import uuid

import pytest
from kafka import TopicPartition

from streamflow import config, kafka_clients
from streamflow.kafka_topics import ensure_topics
from tests.kafka_cluster import Cluster, wait_until

pytestmark = pytest.mark.slow

PORT = int(os.environ.get("STREAMFLOW_TEST_CLUSTER_PORT", "19292"))
STATE_DIR = config.REPO_ROOT / ".services" / "kafka-cluster-test"
PARTITIONS = 3


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(port=PORT, state_dir=STATE_DIR)
    c.reset()  # a fresh cluster each run (also stops nodes a crashed run left behind)
    if busy := c.ports_in_use():
        pytest.fail(
            f"ports {busy} are taken by something else; set STREAMFLOW_TEST_CLUSTER_PORT", pytrace=False
        )
    c.up()
    try:
        yield c
    finally:
        c.down()


@pytest.fixture(scope="module")
def topics(cluster):
    prefix = f"cluster{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}.events", f"{prefix}.dead_letter"]
    assert sorted(ensure_topics(names, partitions=PARTITIONS, bootstrap=cluster.bootstrap)) == sorted(names)
    return names


def test_status_lists_three_running_nodes(cluster):
    assert cluster.node_status() == {1: "running", 2: "running", 3: "running"}
    assert f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap}" in cluster.status()
    assert cluster.bootstrap == f"127.0.0.1:{PORT},127.0.0.1:{PORT + 2},127.0.0.1:{PORT + 4}"
    assert all(cluster.pid(n) for n in cluster.nodes)
    assert cluster.brokers_registered() == [1, 2, 3]
    assert cluster.active_controller() in (1, 2, 3)


def test_topics_get_three_replicas_and_two_in_sync(cluster, topics):
    cluster.wait_all_in_sync(topics, timeout=30)  # also: every broker asked knows the new topics
    described = cluster.describe(topics)
    for topic in topics:
        assert sorted(described[topic]) == list(range(PARTITIONS))
        for p in described[topic].values():
            assert sorted(p["replicas"]) == [1, 2, 3]
        assert cluster.topic_config(topic, "min.insync.replicas") == "2"


def _read_all(cluster, topic: str, want: int, timeout: float) -> list[bytes]:
    """Every value of ``topic``, from the beginning to the end offsets (at least ``want`` records)."""
    reader = kafka_clients.reader("test-cluster-reader", kafka=cluster.settings())
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        reader.assign(parts)
        reader.seek_to_beginning(*parts)
        end = wait_until(
            lambda: (e := reader.end_offsets(parts)) and sum(e.values()) >= want and e,
            timeout,
            f"{want} records in {topic}",
        )
        values: list[bytes] = []

        def at_end():
            for records in reader.poll(timeout_ms=500, max_records=5000).values():
                values.extend(r.value for r in records)
            return all(reader.position(tp) >= end[tp] for tp in parts)

        wait_until(at_end, timeout, f"{topic} read back to its end offsets")
        return values
    finally:
        kafka_clients.close_quietly(reader, 5)


def test_acks_all_writes_survive_a_killed_node(cluster, topics):
    topic = topics[0]
    producer = kafka_clients.producer("test-cluster", kafka=cluster.settings(), delivery_timeout=90)
    sent: list[bytes] = []

    def send(batch: int, n: int) -> None:
        futures = []
        for i in range(n):
            value = f"{batch}-{i}".encode()
            futures.append(producer.send(topic, key=str(i % 50).encode(), value=value))
            sent.append(value)
        producer.flush(timeout=90)
        for f in futures:
            f.get(timeout=1)  # raises when a record was not acknowledged by every in-sync replica

    try:
        send(0, 500)
        # kill the node that leads partition 0 (with acks=all it holds acknowledged records)
        victim = cluster.leader_of(topic, 0)
        assert victim in (1, 2, 3)
        cluster.kill(victim)
        assert cluster.node_status()[victim] == "stopped"
        send(1, 500)  # the producer's retries ride over the failover; two replicas stay in sync
        # partition 0 has another leader, and the dead node left every ISR (two replicas remain)
        wait_until(
            lambda: all(
                p["leader"] not in (-1, victim) and victim not in p["isr"] and len(p["isr"]) == 2
                for p in cluster.describe([topic])[topic].values()
            ),
            30,
            f"leaders and ISRs without node {victim}",
        )
        # read back while the node is down
        got = _read_all(cluster, topic, len(sent), timeout=60)
        assert sorted(got) == sorted(sent)

        cluster.start_node(victim)
        assert cluster.node_status()[victim] == "running"
        send(2, 500)
        cluster.wait_all_in_sync([topic], timeout=60)
        cluster.wait_brokers(3)
    finally:
        kafka_clients.close_quietly(producer, 10)
    got = _read_all(cluster, topic, len(sent), timeout=60)
    assert len(got) == len(set(got)) == len(sent), "records lost or duplicated"
    assert set(got) == set(sent)


def test_down_stops_every_node(cluster):
    pids = [cluster.pid(n) for n in cluster.nodes]
    assert all(pids)
    cluster.down()
    assert cluster.node_status() == {1: "stopped", 2: "stopped", 3: "stopped"}
    assert [cluster.pid(n) for n in cluster.nodes] == [None, None, None]
    assert not cluster.ports_in_use()
