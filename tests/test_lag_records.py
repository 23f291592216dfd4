"""Reading the oldest unconsumed record of a partition (streamflow.lag.records).

The record-finding step on bytes built with kafka-python's MemoryRecordsBuilder (no I/O), then the
direct Fetch against the real broker: offsets at batch starts and in the middle of batches, gzip
batches, batches larger than the fetch bound on many partitions, an offset below the log start
(records deleted), transaction markers, a stale leader and a partition that does not exist.
Batch boundaries on the broker are made with one flush per batch and checked on the raw log.
"""

from __future__ import annotations

import json
import logging
import struct
import time
import uuid

import pytest
from kafka import TopicPartition
from kafka.admin import NewTopic, OffsetSpec
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import FetchRequest
from kafka.record import MemoryRecords, MemoryRecordsBuilder
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import calc_crc32c

from streamflow import config, kafka_clients
from streamflow.lag import records
from streamflow.lag.monitor import LagMonitor
from streamflow.lag.records import RecordReader, scan
from tests import pipeline

TP = TopicPartition("t", 0)
GZIP = DefaultRecordBatch.CODEC_GZIP


# --- the record-finding step on built bytes (no I/O) -------------------------------------------


def batch(base: int, values: list[int | None], compression: int = 0, control: bool = False) -> bytes:
    """One v2 batch whose records hold the given numbers (None: a record compacted away, its offset
    skipped), the first at offset ``base``."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 20)
    for v in values:
        if v is None:
            builder.skip(1)
        else:
            builder.append(
                1_700_000_000_000 + v, f"k{v}".encode(), b'{"i": %d}' % v, [("h", str(v).encode())]
            )
    builder.close()
    data = bytearray(builder.buffer())
    struct.pack_into(">q", data, 0, base)  # the base offset is the broker's to set, outside the CRC
    if control:  # a transaction marker: control + transactional attributes, CRC recomputed
        (attributes,) = struct.unpack_from(">h", data, DefaultRecordBatch.ATTRIBUTES_OFFSET)
        attributes |= DefaultRecordBatch.CONTROL_MASK | DefaultRecordBatch.TRANSACTIONAL_MASK
        struct.pack_into(">h", data, DefaultRecordBatch.ATTRIBUTES_OFFSET, attributes)
        crc = calc_crc32c(memoryview(data)[DefaultRecordBatch.ATTRIBUTES_OFFSET :])
        struct.pack_into(">I", data, DefaultRecordBatch.CRC_OFFSET, crc)
    return bytes(data)


def log_bytes() -> bytes:
    """Offsets 0-4 plain, 5-9 gzip, 10 a control batch, 11-15 with 13 compacted away."""
    return (
        batch(0, [0, 1, 2, 3, 4])
        + batch(5, [5, 6, 7, 8, 9], GZIP)
        + batch(10, [10], control=True)
        + batch(11, [11, 12, None, 14, 15])
    )


@pytest.mark.parametrize(
    "offset, expected",
    [(0, 0), (3, 3), (4, 4), (5, 5), (7, 7), (9, 9), (10, 11), (11, 11), (13, 14), (15, 15)],
)
def test_scan_finds_the_first_record_at_or_after_the_offset(offset, expected):
    found = scan(TP, log_bytes(), offset)
    rec = found.record
    assert rec is not None
    assert (rec.topic, rec.partition, rec.offset) == ("t", 0, expected)
    assert json.loads(rec.value) == {"i": expected}
    assert rec.key == f"k{expected}".encode()
    assert rec.headers == [("h", str(expected).encode())]
    assert rec.timestamp == 1_700_000_000_000 + expected


def test_scan_decodes_only_up_to_the_wanted_record(monkeypatch):
    decoded: list[int] = []
    real_next = DefaultRecordBatch.__next__

    def counting_next(self):
        rec = real_next(self)
        decoded.append(rec.offset)
        return rec

    monkeypatch.setattr(DefaultRecordBatch, "__next__", counting_next)
    assert scan(TP, log_bytes(), 7).record.offset == 7
    assert decoded == [5, 6, 7]  # the batches before were skipped on their header
    decoded.clear()
    assert scan(TP, log_bytes(), 14).record.offset == 14
    assert decoded == [11, 12, 14]  # the control batch was not decoded either


def test_scan_past_the_bytes_says_where_to_fetch_next():
    assert scan(TP, log_bytes(), 16) == records.Scan(None, 16)
    assert scan(TP, batch(0, [0, 1]) + batch(2, [2], control=True), 2) == records.Scan(None, 3)
    assert scan(TP, b"", 4) == records.Scan(None, 4)
    assert scan(TP, None, 4) == records.Scan(None, 4)


def test_scan_of_a_batch_cut_by_the_fetch_bound_gives_its_size():
    first, second = batch(0, [0, 1, 2]), batch(3, list(range(3, 40)))
    for cut in (1, 11, 12, 100, len(second) - 1):
        found = scan(TP, first + second[:cut], 5)
        assert found.record is None and found.next_offset == 5
        # the length field is whole from 12 bytes on: then the batch's size is known
        assert found.cut_batch_bytes == (len(second) if cut >= 12 else None)
    assert scan(TP, first + second[:50], 1).record.offset == 1  # the cut batch is not needed


def test_scan_refuses_a_corrupt_batch():
    data = bytearray(batch(0, [0, 1, 2]))
    data[-3] ^= 0xFF
    with pytest.raises(CorruptRecordError):
        scan(TP, bytes(data), 1)


# --- against the real broker --------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(kafka_bootstrap):
    return kafka_clients.settings(kafka_bootstrap)


@pytest.fixture(scope="module")
def admin(settings):
    client = kafka_clients.admin("lagrecords", kafka=settings, request_timeout_ms=10_000)
    yield client
    client.close()


@pytest.fixture(scope="module")
def client(settings):
    c = kafka_clients.fetch_client("lagrecords", kafka=settings)
    yield c
    kafka_clients.close_quietly(c)


@pytest.fixture()
def make_topic(admin):
    made: list[str] = []

    def make(partitions: int = 1) -> str:
        name = f"{config.topic_prefix()}.lagrecords-{uuid.uuid4().hex[:10]}"
        admin.create_topics([NewTopic(name, partitions, 1)])
        admin.wait_for_topics([name], timeout_ms=15_000)
        made.append(name)
        return name

    yield make
    if made:
        admin.delete_topics(made)


def produce_batches(settings, tp: TopicPartition, sizes: list[int], pad: int = 200, **options) -> None:
    """One batch per size (a flush after each), records numbered from 0 in the value and a header."""
    producer = kafka_clients.producer(
        "lagrecords", kafka=settings, linger_ms=60_000, batch_size=4 * 1024 * 1024, **options
    )
    try:
        n = 0
        for size in sizes:
            for _ in range(size):
                value = json.dumps({"i": n, "pad": "x" * pad}).encode()
                producer.send(
                    tp.topic, key=b"k", value=value, partition=tp.partition, headers=[("n", b"%d" % n)]
                )
                n += 1
            producer.flush(timeout=30)
    finally:
        producer.close()


def raw_batches(client, tp: TopicPartition) -> list[tuple[int, int, int, bool]]:
    """(base offset, last offset, compression, control) of every batch of the partition, from one
    Fetch with a generous bound: the broker's layout, independent of the code under test."""
    request = FetchRequest(
        max_wait_ms=100,
        min_bytes=1,
        max_bytes=64 << 20,
        isolation_level=0,
        topics=[
            FetchRequest.FetchTopic(
                topic=tp.topic,
                partitions=[
                    FetchRequest.FetchTopic.FetchPartition(
                        partition=tp.partition, fetch_offset=0, partition_max_bytes=32 << 20
                    )
                ],
            )
        ],
        min_version=5,
        max_version=12,
    )
    node = client.cluster.brokers().pop().node_id
    future = client.send(node, request)
    client.poll(timeout_ms=10_000, future=future)
    (part,) = future.value.responses[0].partitions
    data = MemoryRecords(part.records)
    out = []
    while (b := data.next_batch()) is not None:
        out.append((b.base_offset, b.last_offset, b.compression_type, b.is_control_batch))
    return out


def log_starts_from(admin):
    def log_starts(tps):
        return {
            tp: o.offset
            for tp, o in admin.list_partition_offsets(dict.fromkeys(tps, OffsetSpec.EARLIEST)).items()
        }

    return log_starts


def leaders_from(admin):
    def leaders(tps, refresh):
        described = {t["name"]: t for t in admin.describe_topics(sorted({tp.topic for tp in tps}))}
        return {
            tp: next(
                p["leader_id"]
                for p in described[tp.topic]["partitions"]
                if p["partition_index"] == tp.partition
            )
            for tp in tps
        }

    return leaders


def value_number(rec) -> int:
    return json.loads(rec.value)["i"]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_offsets_at_batch_starts_and_inside_batches(settings, admin, client, make_topic, compression):
    tp = TopicPartition(make_topic(), 0)
    options = {"compression_type": compression} if compression else {}
    produce_batches(settings, tp, [5, 5, 40, 1, 30], **options)
    layout = raw_batches(client, tp)
    codec = GZIP if compression else 0
    assert layout == [
        (0, 4, codec, False),
        (5, 9, codec, False),
        (10, 49, codec, False),
        (50, 50, codec, False),
        (51, 80, codec, False),
    ]
    reader = RecordReader(client, leaders_from(admin), log_starts_from(admin))
    for offset in (0, 2, 4, 5, 7, 10, 31, 49, 50, 51, 80):  # starts, middles, last records
        found, missing = reader.read({tp: offset}, timeout=10)
        assert missing == {}
        rec = found[tp]
        assert rec.offset == offset and value_number(rec) == offset
        assert rec.headers == [("n", b"%d" % offset)]
        assert rec.timestamp > 0


def test_many_partitions_with_batches_above_the_fetch_bound(settings, admin, client, make_topic, monkeypatch):
    """Only the first partition of a response gets a batch above the bound whole; the others come
    back empty and are fetched again with 4x the bound: 16 KiB, 64 KiB, 256 KiB, 1 MiB -- four
    requests (one broker) read the ten partitions."""
    topic = make_topic(partitions=10)
    for p in range(10):
        produce_batches(settings, TopicPartition(topic, p), [600], pad=400)  # ~270 KiB, one batch
    assert raw_batches(client, TopicPartition(topic, 3)) == [(0, 599, 0, False)]
    positions = {TopicPartition(topic, p): p * 59 for p in range(10)}
    reader = RecordReader(client, leaders_from(admin), log_starts_from(admin), bytes_per_partition=16 * 1024)
    sent = []
    real_send = client.send
    monkeypatch.setattr(client, "send", lambda node, request: sent.append(node) or real_send(node, request))
    started = time.monotonic()
    found, missing = reader.read(positions, timeout=10)
    assert missing == {}
    assert {tp: rec.offset for tp, rec in found.items()} == positions
    assert len(sent) <= 4 * len(set(sent))  # per leader
    assert all(value_number(found[tp]) == off for tp, off in positions.items())
    assert time.monotonic() - started < 5


def test_an_offset_below_the_log_start_reads_the_first_record_left(
    kafka_bootstrap, settings, admin, client, make_topic
):
    tp = TopicPartition(make_topic(), 0)
    produce_batches(settings, tp, [4, 4, 4])
    admin.delete_records({tp: 6})  # retention-like deletion up to offset 6 (inside the second batch)
    reader = RecordReader(client, leaders_from(admin), log_starts_from(admin))
    found, missing = reader.read({tp: 2}, timeout=10)  # below the log start: OFFSET_OUT_OF_RANGE
    assert missing == {}
    assert found[tp].offset == 6 and value_number(found[tp]) == 6
    # Through the monitor: a group whose committed offset was deleted by retention.
    group = f"lagrecords-{uuid.uuid4().hex[:8]}"
    pipeline.commit_offsets(group, {tp: 1}, kafka_bootstrap)
    with LagMonitor(kafka_bootstrap, group=group, topics=[tp.topic], read_timeout=5) as monitor:
        row = monitor.sample().partition(tp.topic, 0)
        assert (row.committed_offset, row.log_start_offset, row.lag) == (1, 6, 11)
        assert row.oldest_offset == 6 and row.lag_seconds is not None
        assert monitor.read_records({tp: 0})[tp].offset == 6
    admin.delete_groups([group])


def test_transaction_markers_are_skipped(settings, admin, client, make_topic):
    """A committed transaction (3 records and its marker), a plain record, an aborted transaction (2
    records and its marker), a plain record: 9 offsets. The transaction coordinator writes each
    marker itself, after the commit or abort returned, so a plain record sent next may land before
    it: the expected answers come from the broker's layout. READ_UNCOMMITTED, like the group's
    members: aborted records count."""
    tp = TopicPartition(make_topic(), 0)
    txn = kafka_clients.producer(
        "lagrecords-txn", kafka=settings, transactional_id=f"lagrecords-{uuid.uuid4().hex[:8]}"
    )
    plain = kafka_clients.producer("lagrecords", kafka=settings)
    try:
        txn.init_transactions()

        def send(producer, n):
            producer.send(tp.topic, value=json.dumps({"i": n}).encode(), partition=0).get(timeout=30)

        txn.begin_transaction()
        for n in range(3):
            send(txn, n)
        txn.commit_transaction()
        send(plain, 4)
        txn.begin_transaction()
        for n in (5, 6):
            send(txn, n)
        txn.abort_transaction()
        send(plain, 8)
    finally:
        txn.close()
        plain.close()
    layout = raw_batches(client, tp)
    markers = [base for base, last, _, control in layout if control]
    assert len(markers) == 2 and all(base == last for base, last, _, control in layout if control)
    assert layout[0][0] == 0 and layout[-1][1] == 8
    data = [o for base, last, _, control in layout if not control for o in range(base, last + 1)]
    assert len(data) == 7 and sorted(data + markers) == list(range(9))
    reader = RecordReader(client, leaders_from(admin), log_starts_from(admin))
    values = {}
    for offset in range(9):
        found, missing = reader.read({tp: offset}, timeout=10)
        assert missing == {}, offset
        expected = min(o for o in data if o >= offset)  # a marker's offset: the next data record
        assert found[tp].offset == expected, (offset, layout)
        values[expected] = value_number(found[tp])
    assert sorted(values.values()) == [0, 1, 2, 4, 5, 6, 8]  # the aborted 5 and 6 too
    assert [values[o] for o in data if values[o] < 4] == [0, 1, 2]  # in order


def test_a_stale_leader_is_looked_up_again(settings, admin, client, make_topic):
    tp = TopicPartition(make_topic(), 0)
    produce_batches(settings, tp, [3])
    real = leaders_from(admin)
    asked: list[bool] = []

    def stale_then_right(tps, refresh):
        asked.append(refresh)
        return real(tps, refresh) if refresh else dict.fromkeys(tps, 9999)  # a broker that is not there

    found, missing = RecordReader(client, stale_then_right, log_starts_from(admin)).read({tp: 1}, timeout=10)
    assert missing == {} and found[tp].offset == 1
    assert asked[0] is False and True in asked


def test_a_partition_that_does_not_answer_is_left_out_and_the_others_are_read(
    kafka_bootstrap, settings, admin, make_topic, caplog
):
    topic = make_topic(partitions=2)
    produce_batches(settings, TopicPartition(topic, 0), [5])
    produce_batches(settings, TopicPartition(topic, 1), [5])
    ghost = TopicPartition(topic, 7)  # no such partition: UNKNOWN_TOPIC_OR_PARTITION every time
    with LagMonitor(kafka_bootstrap, group="lagrecords-none", topics=[topic], read_timeout=1.5) as monitor:
        monitor.sample()  # learns the leaders
        monitor._leaders[ghost] = monitor._leaders[TopicPartition(topic, 0)]
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="streamflow.lag.monitor"):
            found = monitor.read_records({TopicPartition(topic, 0): 2, ghost: 0, TopicPartition(topic, 1): 4})
        elapsed = time.monotonic() - started
    assert {tp.partition: rec.offset for tp, rec in found.items()} == {0: 2, 1: 4}
    assert 1.5 <= elapsed < 4
    (warning,) = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    assert f"{topic}[7]" in warning and f"{topic}[0]" not in warning
    assert "UnknownTopicOrPartitionError" in warning or "no leader" in warning
