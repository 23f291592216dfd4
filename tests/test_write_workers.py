"""The consumer's write workers (``consumer.write_workers``): decoding and pushing in worker processes.

* a failed push crosses the pipe as RemoteWriteError: its verdict and the database's error as
  ``describe`` shows it, for ``classify`` and ``isolate`` (no I/O);
* against the real PostgreSQL: a worker decodes a table's records (invalid events named with the
  contract's reasons) and pushes them online and offline; a database error comes back classified;
  a killed worker raises WorkerLost and another one starts in its place; a worker that cannot open
  the feature store fails the start with a clear ServiceUnavailable;
* the consumer end to end, a write worker killed while the stream is written: every event is
  written once the consumer is drained, and the group commits to the end.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections import namedtuple
from datetime import date, datetime, timezone

import psycopg
import psycopg.errors
import pytest

from consumer.write_errors import PERMANENT, TRANSIENT, classify, describe, isolate
from consumer.write_workers import RemoteWriteError, WorkerLost, WriteWorkers
from streamflow import config, events, schema
from streamflow.errors import ServiceUnavailable
from streamflow.topics import topic_of
from tests import pipeline

TABLE = schema.table("usage_agg_30d")
AS_OF = date(2024, 1, 31)
Record = namedtuple("Record", "topic partition offset timestamp key value headers")


def row(i: int, hours: float = 1.5) -> dict:
    return {
        schema.KEY: f"{i:04d}-WWORK",
        "watch_hours_30d": hours,
        "avg_session_mins_7d": 20.0,
        "unique_devices_30d": 2,
        "skips_7d": 3,
        "rebuffer_events_7d": 1,
    }


def record(offset: int, values: dict) -> Record:
    value = events.encode_value(TABLE, values, AS_OF, "month_000")
    return Record(topic_of(TABLE), 0, offset, 1_700_000_000_000, values[schema.KEY].encode(), value, [])


# --- the error that crosses the pipe (no I/O) ------------------------------------------------------


def test_a_database_error_keeps_its_verdict_name_and_sqlstate_across_the_pipe():
    check = psycopg.errors.CheckViolation('new row for relation "t" violates check constraint "c"\nDETAIL: x')
    sent = pickle.loads(pickle.dumps(RemoteWriteError.of(check)))
    assert sent.verdict == PERMANENT == classify(sent) == classify(check)
    assert (
        describe(sent)
        == describe(check)
        == ('CheckViolation: new row for relation "t" violates check constraint "c" (SQLSTATE 23514)')
    )
    assert describe(sent, limit=10) == describe(check, limit=10)


def test_a_wrapped_outage_stays_transient_across_the_pipe():
    try:
        try:
            raise psycopg.OperationalError("connection to server failed: Connection refused")
        except psycopg.OperationalError as inner:
            raise RuntimeError("push failed") from inner
    except RuntimeError as outer:
        sent = pickle.loads(pickle.dumps(RemoteWriteError.of(outer)))
    assert sent.verdict == TRANSIENT == classify(sent)


def test_isolate_bisects_on_permanent_errors_from_a_worker():
    bad = {5}

    def write(start: int, stop: int) -> None:
        if bad & set(range(start, stop)):
            raise RemoteWriteError(PERMANENT, "CheckViolation", "violates check constraint", "23514")

    refused = isolate(write, 8)
    assert [r.row for r in refused] == [5]
    assert describe(refused[0].error) == "CheckViolation: violates check constraint (SQLSTATE 23514)"


# --- worker processes, against the real PostgreSQL ---------------------------------------------------


@pytest.fixture(scope="module")
def applied(pg_settings):
    pipeline.reset_store()


def offline_hours(users: list[str]) -> dict[str, float]:
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT user_id, watch_hours_30d FROM {TABLE.snapshot_table} WHERE user_id = ANY(%s)", (users,)
        ).fetchall()
    return dict(rows)


def test_a_worker_decodes_names_invalid_events_and_pushes_online_and_offline(applied):
    good = [record(i, row(i, 10.0 + i)) for i in range(5)]
    bad = record(5, {**row(5), "skips_7d": -1})
    workers = WriteWorkers(1)
    try:
        workers.wait_ready()
        with workers.session() as writing:
            decoded = writing.decode(TABLE, [*good, bad], datetime.now(timezone.utc))
            assert decoded.rows == 5 and decoded.index == [0, 1, 2, 3, 4]
            [(position, reason, field)] = decoded.bad
            assert (position, field) == (5, "skips_7d") and "skips_7d" in reason
            writing.push(0, decoded.rows, "test")
    finally:
        workers.close()
    users = [row(i)[schema.KEY] for i in range(6)]
    assert offline_hours(users) == {row(i)[schema.KEY]: 10.0 + i for i in range(5)}
    online = pipeline.online_state(users[:5])
    assert {u: online[u][f"{TABLE.feature_view}:watch_hours_30d"] for u in users[:5]} == {
        row(i)[schema.KEY]: 10.0 + i for i in range(5)
    }


def test_a_database_error_in_a_worker_comes_back_classified(applied):
    constraint = "write_workers_hours_below_700"
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE {TABLE.snapshot_table} ADD CONSTRAINT {constraint} CHECK (watch_hours_30d < 700)"
        )
    workers = WriteWorkers(1)
    try:
        with workers.session() as writing:
            decoded = writing.decode(TABLE, [record(0, row(40, 720.0))], datetime.now(timezone.utc))
            with pytest.raises(RemoteWriteError) as caught:
                writing.push(0, decoded.rows, "test")
    finally:
        workers.close()
        with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {TABLE.snapshot_table} DROP CONSTRAINT {constraint}")
    assert classify(caught.value) == PERMANENT
    assert describe(caught.value).startswith("CheckViolation: new row for relation")
    assert describe(caught.value).endswith(f'violates check constraint "{constraint}" (SQLSTATE 23514)')


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_a_killed_worker_raises_worker_lost_and_another_takes_its_place(applied):
    workers = WriteWorkers(1, restart_delay=0.2)
    try:
        workers.wait_ready()
        [first] = workers.pids
        with pytest.raises(WorkerLost, match=f"pid {first}"):
            with workers.session() as writing:
                os.kill(first, signal.SIGKILL)
                writing.decode(TABLE, [record(0, row(50))], datetime.now(timezone.utc))
        wait_until(lambda: workers.pids and workers.pids != [first], 60, "a new worker")
        with workers.session() as writing:  # the new one works
            assert writing.decode(TABLE, [record(0, row(50))], datetime.now(timezone.utc)).rows == 1
    finally:
        workers.close()
    assert workers.pids == []


def test_a_worker_that_cannot_open_the_store_fails_the_start_clearly(applied, monkeypatch):
    monkeypatch.setenv("POSTGRES_PORT", "1")  # the workers read their settings from the environment
    workers = WriteWorkers(2)
    try:
        with pytest.raises(ServiceUnavailable, match="opening the feature store: PostgreSQL at .*:1/"):
            workers.wait_ready(timeout=60)
    finally:
        workers.close()


# --- the consumer, a worker killed while it writes ---------------------------------------------------


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    from streamflow.datagen.generate import generate

    out = tmp_path_factory.mktemp("write_workers")
    generate(out, users=400, seed=3, snapshots=["month_000"], progress=False)
    return out / "month_000"


def test_a_worker_killed_mid_stream_loses_nothing(snapshots, fresh):
    from consumer.runner import ConsumerSettings, StreamConsumer

    group = fresh
    pipeline.replay([snapshots])
    consumer = StreamConsumer(
        ConsumerSettings(
            group_id=group,
            max_batch=50,
            max_write_batch=100,
            until_drained=True,
            max_idle_seconds=60,
            write_processes=1,
            retry_initial=0.2,
        )
    )
    assert consumer.writer.workers is not None
    [victim] = consumer.writer.workers.pids
    killed = threading.Event()
    write_table = consumer.writer.write_table

    def kill_once(name, records):  # the first table's write: kill a worker as the writes begin
        if not killed.is_set():
            killed.set()
            os.kill(victim, signal.SIGKILL)
        return write_table(name, records)

    consumer.writer.write_table = kill_once
    stats = consumer.run()
    assert killed.is_set()
    assert stats["write_retries"] >= 1  # the lost write was retried, on the worker started in its place
    assert pipeline.caught_up(group)
    users = pipeline.users_of(snapshots)
    assert pipeline.online_state(users) == pipeline.expected_online(snapshots)
