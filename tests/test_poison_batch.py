"""Poison events (issue 14): a write the database refuses for good no longer stalls the consumer.

* the bisection (``consumer.write_errors.isolate``) on a fake writer that fails for given rows: no
  I/O. 0, 1, 2 and all rows bad; a transient error in the middle stops it (the whole batch is
  retried as transient, nothing dead-lettered);
* ``TableWriter.write_table`` with a fake push (no I/O): the refused rows map back to their
  Kafka records (also when the frame dropped duplicates), a transient error during the bisection
  retries the whole table, a stop request ends it;
* against the real PostgreSQL and Kafka: a CHECK constraint on the offline snapshot table of
  usage_agg_30d refuses one event of a batch; it is dead-lettered with the database's error, its
  neighbours (same batch, table and partition, before and after it) are written online and
  offline, later events are written, the group commits to the end, and nothing is retried.
"""

from __future__ import annotations

import io
import logging
import math
import re
import sys
import threading
import time
from collections import namedtuple
from datetime import date, datetime, timezone

import orjson
import psycopg
import psycopg.errors
import pytest

from consumer.metrics import ConsumerMetrics
from consumer.runner import StreamConsumer
from consumer.settings import ConsumerSettings
from consumer.table_writer import StopRequested, TableWriter
from consumer.write_errors import PERMANENT, TRANSIENT, SystemicWriteError, classify, isolate
from streamflow import config, event_batch, events, kafka_clients, schema
from streamflow.topics import dead_letter_topic, topic_of
from tests import pipeline

TABLE = schema.table("usage_agg_30d")
AS_OF = date(2024, 1, 31)


# --- the bisection, on a fake writer ---------------------------------------------------------------


class FakeWriter:
    """Writes rows [start, stop) unless one of them is bad: then fails like a CHECK constraint."""

    def __init__(self, bad: set[int], transient_at_call: int | None = None):
        self.bad = bad
        self.transient_at_call = transient_at_call
        self.calls: list[tuple[int, int]] = []
        self.written: list[int] = []

    def __call__(self, start: int, stop: int) -> None:
        self.calls.append((start, stop))
        if len(self.calls) == self.transient_at_call:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        refused = sorted(self.bad & set(range(start, stop)))
        if refused:
            raise psycopg.errors.CheckViolation(f'new row violates check constraint "c" (row {refused[0]})')
        self.written.extend(range(start, stop))


@pytest.mark.parametrize(
    "rows,bad",
    [
        (40, set()),
        (40, {17}),
        (40, {0}),
        (40, {39}),
        (1, {0}),
        (40, {3, 31}),
        (40, {20, 21}),
        (40, set(range(40))),
        (7, set(range(7))),
    ],
    ids=[
        "none bad",
        "one bad",
        "first bad",
        "last bad",
        "a single row, bad",
        "two bad, apart",
        "two bad, side by side",
        "all bad",
        "all of 7 bad",
    ],
)
def test_bisection_refuses_exactly_the_bad_rows_and_writes_every_other_row_once(rows, bad):
    write = FakeWriter(bad)
    refused = isolate(write, rows)
    assert [r.row for r in refused] == sorted(bad)
    assert all(classify(r.error) == PERMANENT and "check constraint" in str(r.error) for r in refused)
    assert sorted(write.written) == sorted(set(range(rows)) - bad)  # each good row written exactly once
    assert write.calls[0] == (0, rows)  # the whole batch first
    if not bad:
        assert write.calls == [(0, rows)]
    else:  # k bad rows cost at most 2k writes per level of the bisection
        assert len(write.calls) <= 1 + 2 * len(bad) * max(1, math.ceil(math.log2(rows)))


def test_every_row_failing_alike_is_the_write_not_the_rows_and_is_retried_not_dead_lettered():
    def write(start: int, stop: int) -> None:  # e.g. a trigger or a schema change that refuses every row
        raise psycopg.errors.CheckViolation('new row violates check constraint "everything"')

    with pytest.raises(SystemicWriteError, match="all 8 rows failed alike") as caught:
        isolate(write, 8)
    assert classify(caught.value) == TRANSIENT
    # one row alone cannot tell: it is refused
    assert [r.row for r in isolate(write, 1)] == [0]


def test_bisection_of_nothing_writes_nothing():
    write = FakeWriter(set())
    assert isolate(write, 0) == [] and write.calls == []


def test_a_transient_error_in_the_middle_of_the_bisection_stops_it_and_refuses_nothing():
    write = FakeWriter({17}, transient_at_call=4)
    told = []
    with pytest.raises(psycopg.errors.AdminShutdown) as info:
        isolate(write, 40, on_permanent=lambda start, stop, exc: told.append((start, stop)))
    assert classify(info.value) == TRANSIENT
    assert len(write.calls) == 4  # nothing more was written after it
    assert told == [(0, 40), (0, 20)]  # the ranges that failed permanently before it; none refused


# --- write_table, with a fake push -----------------------------------------------------------------

Record = namedtuple("Record", "topic partition offset timestamp key value headers")


def user(i: int) -> str:
    return f"{i:04d}-POISN"


def row(i: int, hours: float = 1.5) -> dict:
    return {
        schema.KEY: user(i),
        "watch_hours_30d": hours,
        "avg_session_mins_7d": 30.0,
        "unique_devices_30d": 2,
        "skips_7d": 4,
        "rebuffer_events_7d": 1,
    }


def record(offset: int, values: dict, topic: str = "t.usage_agg_30d", partition: int = 0) -> Record:
    value = events.encode_value(TABLE, values, AS_OF, "month_000")
    return Record(
        topic, partition, offset, 1_700_000_000_000 + offset, values[schema.KEY].encode(), value, []
    )


def local_writer() -> TableWriter:
    """A table writer writing in this thread (no Kafka, no worker process)."""
    settings = ConsumerSettings(retry_initial=0.01, retry_max=0.02)
    return TableWriter(settings, ConsumerMetrics(), threading.Event(), threading.Event())


class FakePush:
    """Stands for streamflow.feature_store.push: refuses frames holding a bad (user, hours) row."""

    def __init__(self, bad_hours: float = 720.0, transient_at_call: int | None = None, on_call=None):
        self.bad_hours = bad_hours
        self.transient_at_call = transient_at_call
        self.on_call = on_call
        self.frames = []
        self.written_users: list[str] = []

    def __call__(self, table, frame, where="push", *, validated=False):
        assert validated and table is TABLE
        self.frames.append(frame)
        if self.on_call:
            self.on_call(len(self.frames))
        if len(self.frames) == self.transient_at_call:
            raise psycopg.OperationalError(
                "consuming input failed: server closed the connection unexpectedly"
            )
        if (frame["watch_hours_30d"] == self.bad_hours).any():
            raise psycopg.errors.CheckViolation(
                'new row for relation "usage_agg_30d_snapshots" violates check constraint "hours_below_700"\n'
                "DETAIL:  Failing row contains (...)."
            )
        self.written_users += frame[schema.KEY].tolist()
        return len(frame)


def decoded(records: list[Record]):
    batch = event_batch.decode_table_batch(TABLE, records, datetime.now(timezone.utc))
    assert not batch.bad
    return batch


def test_write_table_maps_refused_rows_to_their_records_and_counts_the_rest(monkeypatch):
    # users 0..9; user 3 twice: the first (good) is superseded in the frame by the second (bad);
    # user 7's event is bad; user 5 twice, both good.
    recs = [record(i, row(i, 720.0 if i == 7 else 1.5)) for i in range(10)]
    recs.insert(4, record(100, row(3, 720.0)))
    recs.append(record(102, row(5, 2.5)))
    batch = decoded(recs)
    assert len(batch.frame) == 10  # duplicates dropped: the frame's index points into the records
    fake = FakePush()
    monkeypatch.setattr("consumer.table_writer.push", fake)
    writer = local_writer()
    letters = writer.write_table(TABLE.name, recs)
    assert [(rec.offset, rec.key) for rec, _, _ in letters] == [
        (100, user(3).encode()),
        (7, user(7).encode()),
    ]
    for _, reason, _ in letters:
        assert reason == (
            'write failed: CheckViolation: new row for relation "usage_agg_30d_snapshots" violates '
            'check constraint "hours_below_700" (SQLSTATE 23514)'
        )
    assert sorted(fake.written_users) == sorted(user(i) for i in range(10) if i not in (3, 7))
    assert writer.metrics.written[TABLE.name] == len(recs) - 2
    assert writer.metrics.write_retries == 0


def test_write_table_without_poison_writes_once(monkeypatch):
    recs = [record(i, row(i)) for i in range(8)]
    batch = decoded(recs)
    fake = FakePush()
    monkeypatch.setattr("consumer.table_writer.push", fake)
    writer = local_writer()
    assert writer.write_table(TABLE.name, recs) == []
    assert len(fake.frames) == 1 and fake.frames[0].equals(batch.frame.reset_index(drop=True))
    assert writer.metrics.written[TABLE.name] == 8


def test_a_transient_error_during_the_bisection_retries_the_whole_table(monkeypatch, caplog):
    recs = [record(i, row(i, 720.0 if i == 5 else 1.5)) for i in range(16)]
    fake = FakePush(transient_at_call=3)  # the whole, its left half, then the database goes away
    monkeypatch.setattr("consumer.table_writer.push", fake)
    writer = local_writer()
    with caplog.at_level(logging.INFO, logger="consumer"):
        letters = writer.write_table(TABLE.name, recs)
    sizes = [len(f) for f in fake.frames]
    assert sizes[:4] == [16, 8, 4, 16]  # after the transient error: the whole table again
    assert [rec.offset for rec, _, _ in letters] == [5]  # refused once, by the retry's bisection
    assert writer.metrics.write_retries == 1
    assert writer.metrics.written[TABLE.name] == 15
    assert len(re.findall(r"write failed \(attempt \d+\)", caplog.text)) == 1
    assert "write succeeded after 1 retries" in caplog.text


def test_a_stop_request_ends_the_bisection(monkeypatch):
    recs = [record(i, row(i, 720.0 if i == 5 else 1.5)) for i in range(16)]
    writer = local_writer()
    fake = FakePush(on_call=lambda n: n == 2 and writer.stopping.set())
    monkeypatch.setattr("consumer.table_writer.push", fake)
    with pytest.raises(StopRequested):
        writer.write_table(TABLE.name, recs)
    assert len(fake.frames) == 2  # no write after the stop request


def test_the_switch_interval_is_restored_when_closing_raises(monkeypatch):
    from types import SimpleNamespace

    from consumer.outage import Outage
    from consumer.pipeline import WritePipeline

    writer = local_writer()
    consumer = object.__new__(StreamConsumer)  # the loop's set-up and tear-down alone: no client
    consumer.settings, consumer.metrics, consumer.stopping = writer.settings, writer.metrics, writer.stopping
    consumer.settings.switch_interval = 0.0007
    consumer._giving_up = writer.giving_up
    consumer.writer, consumer.pipeline = writer, WritePipeline(writer, 2)
    consumer.kafka = SimpleNamespace(request_timeout_ms=1000)
    consumer.outage = Outage("127.0.0.1:1", consumer.stopping)
    settled = []
    consumer.client = SimpleNamespace(
        topics=[],
        rebuilds=0,
        close_hung=lambda: None,
        offsets=SimpleNamespace(settle_before_leaving=lambda: settled.append(1)),
    )
    consumer.stopping.set()  # the loop ends at once; then the consumer closes

    def close():
        assert sys.getswitchinterval() == 0.0007  # still the loop's while closing
        raise RuntimeError("closing failed")

    monkeypatch.setattr(consumer, "close", close)
    before = sys.getswitchinterval()
    with pytest.raises(RuntimeError, match="closing failed"):
        consumer.run()
    assert settled == [1]  # the stop path ran before the close
    assert sys.getswitchinterval() == before != 0.0007


# --- against the real PostgreSQL and Kafka ---------------------------------------------------------

CONSTRAINT = "poison_test_watch_hours_below_700"
BAD_HOURS = 720.0  # inside the registry's range (0..744): decoding accepts it, the CHECK does not


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def offline_hours(users: list[str]) -> dict[str, float]:
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT user_id, watch_hours_30d FROM {TABLE.snapshot_table} WHERE user_id = ANY(%s)", (users,)
        ).fetchall()
    return dict(rows)


def online_hours(users: list[str]) -> dict[str, float | None]:
    from streamflow.feature_store import get_store

    got = (
        get_store()
        .get_online_features(
            features=[f"{TABLE.feature_view}:watch_hours_30d"], entity_rows=[{schema.KEY: u} for u in users]
        )
        .to_dict()
    )
    return dict(zip(got[schema.KEY], got["watch_hours_30d"]))


def produce(values: list[dict]) -> list[int]:
    """Send events of usage_agg_30d to partition 0 of its topic, in order; their offsets."""
    producer = kafka_clients.producer("test")
    try:
        futures = [
            producer.send(
                topic_of(TABLE),
                key=v[schema.KEY].encode(),
                partition=0,
                value=events.encode_value(TABLE, v, AS_OF, "month_000"),
            )
            for v in values
        ]
        producer.flush()
        return [f.get(timeout=30).offset for f in futures]
    finally:
        producer.close()


def test_a_poison_event_is_dead_lettered_its_neighbours_are_written_and_the_consumer_goes_on(fresh, caplog):
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE {TABLE.snapshot_table} ADD CONSTRAINT {CONSTRAINT} CHECK (watch_hours_30d < 700)"
        )
    group = fresh
    first = [row(i, BAD_HOURS if i == 3 else 10.0 + i) for i in range(7)]  # one batch; the 4th is poison
    offsets = produce(first)
    assert offsets == list(range(7))
    poison = first[3][schema.KEY]
    neighbours = [v[schema.KEY] for v in first if v[schema.KEY] != poison]

    consumer = StreamConsumer(ConsumerSettings(group_id=group, retry_initial=0.2))
    batches: list[tuple[str, list[int]]] = []
    intervals: set[float] = set()
    interval_before = sys.getswitchinterval()
    write_table = consumer.writer.write_table

    def spy(name, records):
        batches.append((name, [r.offset for r in records]))
        intervals.add(sys.getswitchinterval())
        return write_table(name, records)

    consumer.writer.write_table = spy
    caplog.set_level(logging.INFO, logger="consumer")
    runner = threading.Thread(target=consumer.run, name="poison-consumer", daemon=True)
    runner.start()
    try:
        wait_until(lambda: pipeline.caught_up(group), 120, "the group to commit the first batch")
        # the poison event shared its batch with neighbours before and after it
        assert (TABLE.name, offsets) in batches, batches

        letters = [orjson.loads(r.value) for r in pipeline.read_topic(dead_letter_topic())]
        assert len(letters) == 1, letters
        letter = letters[0]
        assert letter["source"] == {**letter["source"], "topic": topic_of(TABLE), "partition": 0, "offset": 3}
        assert letter["key"] == poison
        assert letter["reason"] == (
            f'write failed: CheckViolation: new row for relation "{TABLE.snapshot_table}" violates check '
            f'constraint "{CONSTRAINT}" (SQLSTATE 23514)'
        ), letter["reason"]
        assert orjson.loads(letter["value"])["watch_hours_30d"] == BAD_HOURS

        # the neighbours are written offline and online; the poison event is not offline. It is
        # online: the push wrote the whole batch online before the offline write failed
        assert offline_hours(neighbours + [poison]) == {
            v[schema.KEY]: v["watch_hours_30d"] for v in first if v[schema.KEY] != poison
        }
        assert online_hours(neighbours + [poison]) == {v[schema.KEY]: v["watch_hours_30d"] for v in first}
        assert consumer.metrics.dead_lettered[topic_of(TABLE)] == 1
        assert consumer.metrics.written[TABLE.name] == 6

        # the consumer goes on: later events are written
        later = [row(i, 20.0 + i) for i in range(7, 10)]
        assert produce(later) == [7, 8, 9]
        wait_until(lambda: pipeline.caught_up(group), 120, "the group to commit the later events")
        assert offline_hours([v[schema.KEY] for v in later]) == {
            v[schema.KEY]: v["watch_hours_30d"] for v in later
        }
        time.sleep(3)  # time enough for an endless retry to show
    finally:
        consumer.stop()
        runner.join(timeout=60)
    assert not runner.is_alive()
    # the loop's shorter interpreter-lock switch interval holds while it runs, and is undone after
    assert intervals == {consumer.settings.switch_interval} != {interval_before}, intervals
    assert sys.getswitchinterval() == interval_before

    committed = pipeline.committed_offsets(group)
    ends = pipeline.end_offsets([topic_of(TABLE)])
    assert all(committed.get(tp, 0) == end for tp, end in ends.items()), (committed, ends)  # lag 0
    assert sum(ends.values()) == 10
    assert len(pipeline.read_topic(dead_letter_topic())) == 1  # dead-lettered once
    text = caplog.text
    assert len(re.findall(r"write failed \(attempt \d+\)", text)) == 0  # no retry at all
    assert consumer.metrics.write_retries == 0
    assert len(re.findall(r"failed for good", text)) == 1
    assert len(re.findall(r"poison event dead-lettered", text)) == 1
    assert (
        f"table usage_agg_30d, {topic_of(TABLE)} partition 0 offset 3: write failed: CheckViolation" in text
    )

    # after a fix (the constraint dropped), a redrive writes it online and offline
    from streamflow.dead_letters.cli import main as dead_letters

    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {TABLE.snapshot_table} DROP CONSTRAINT {CONSTRAINT}")
    assert dead_letters(["redrive", "--reason", "write failed"], out=io.StringIO()) == 0
    stats = pipeline.drain(group)
    assert stats["written"] == 1 and stats["dead_lettered"] == 0
    assert offline_hours([poison]) == {poison: BAD_HOURS}
    assert online_hours([poison]) == {poison: BAD_HOURS}
