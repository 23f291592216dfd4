"""Streaming ingestion against the real broker and PostgreSQL: replay -> consume -> Feast.

Each test has its own topics (a fresh prefix) and consumer group, and starts from empty
warehouse and online tables.
"""

from __future__ import annotations

import signal
import time

import orjson
import pandas as pd
import pytest

from streamflow import config, kafka_clients, schema
from streamflow.batch.load import load_snapshot
from streamflow.datagen.generate import generate
from streamflow.topics import dead_letter_topic, topic_of
from streamflow.training import build_training_set
from tests import pipeline

USERS = 150


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = tmp_path_factory.mktemp("snapshots")
    generate(out, users=USERS, seed=7, progress=False)
    return out / "month_000", out / "month_001"


def test_replay_both_months_leaves_month_001_online_and_matches_batch_training_set(snapshots, fresh):
    m0, m1 = snapshots
    pipeline.replay([m1, m0])  # given out of order: the producer replays in event-time order
    stats = pipeline.drain(fresh)
    assert stats["written"] == 2 * 6 * USERS
    assert stats["dead_lettered"] == 0
    users = pipeline.users_of(m0)
    assert pipeline.online_state(users) == pipeline.expected_online(m1)

    streamed = build_training_set(schema.SNAPSHOTS["month_000"])
    streamed_feb = build_training_set(schema.SNAPSHOTS["month_001"])

    pipeline.reset_store()
    load_snapshot(m0)
    load_snapshot(m1)
    batch = build_training_set(schema.SNAPSHOTS["month_000"])
    batch_feb = build_training_set(schema.SNAPSHOTS["month_001"])
    assert len(streamed) == USERS
    pd.testing.assert_frame_equal(streamed, batch)
    pd.testing.assert_frame_equal(streamed_feb, batch_feb)
    # point in time: January's training set holds January's values, not February's
    jan = (
        pd.read_csv(m0 / "usage_agg_30d.csv", float_precision="round_trip")
        .sort_values(schema.KEY)
        .reset_index(drop=True)
    )
    assert streamed["watch_hours_30d"].tolist() == jan["watch_hours_30d"].tolist()


def test_older_snapshot_after_newer_changes_nothing_online(snapshots, fresh):
    m0, m1 = snapshots
    pipeline.replay([m1])
    pipeline.drain(fresh)
    before = pipeline.online_state(pipeline.users_of(m1))
    times_before = pipeline.online_event_times("usage_agg_30d_fv")
    pipeline.replay([m0])
    stats = pipeline.drain(fresh)
    assert stats["written"] == 6 * USERS  # consumed and written offline, but not online
    assert pipeline.online_state(pipeline.users_of(m1)) == before == pipeline.expected_online(m1)
    assert pipeline.online_event_times("usage_agg_30d_fv") == times_before
    # the offline store kept both months
    assert len(pipeline.offline_rows(schema.table("usage_agg_30d"))) == 2 * USERS


def test_replaying_the_same_snapshot_twice_changes_nothing(snapshots, fresh, pg_conn):
    m0, _ = snapshots
    pipeline.replay([m0])
    pipeline.drain(fresh)
    offline_before = {t.name: pipeline.offline_rows(t) for t in schema.TABLES}
    online_before = pipeline.online_state(pipeline.users_of(m0))
    xmin_before = pg_conn.execute(
        "SELECT count(*), max(xmin::text::bigint) FROM usage_agg_30d_snapshots"
    ).fetchone()
    pipeline.replay([m0])
    stats = pipeline.drain(fresh)
    assert stats["consumed"] == 6 * USERS
    for t in schema.TABLES:
        pd.testing.assert_frame_equal(pipeline.offline_rows(t), offline_before[t.name])
    assert pipeline.online_state(pipeline.users_of(m0)) == online_before
    # no row was rewritten (same row versions)
    assert (
        pg_conn.execute("SELECT count(*), max(xmin::text::bigint) FROM usage_agg_30d_snapshots").fetchone()
        == xmin_before
    )


def test_sigkill_mid_replay_then_restart_loses_nothing(snapshots, fresh, tmp_path):
    m0, m1 = snapshots
    pipeline.replay([m0, m1])
    log = tmp_path / "consumer.log"
    proc = pipeline.consumer_process(fresh, "--max-batch", "50", log_path=log)
    # kill it once it has committed some but not all batches
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if 0 < pipeline.committed_total(fresh) < 2 * 6 * USERS:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    committed = pipeline.committed_total(fresh)
    assert committed < 2 * 6 * USERS, "the consumer finished before it could be killed"
    stats = pipeline.drain(fresh)
    assert stats["consumed"] >= 2 * 6 * USERS - committed
    assert pipeline.online_state(pipeline.users_of(m1)) == pipeline.expected_online(m1)
    for t in schema.TABLES:
        rows = pipeline.offline_rows(t)
        assert len(rows) == 2 * USERS
        assert not rows.duplicated([schema.KEY, schema.SNAPSHOT_TIME]).any()


def _bad_corpus(user: str) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(table, key, value, expected reason fragment) for each failure kind."""
    good = {
        schema.KEY: user,
        "failed_payments_90d": 1,
        schema.EVENT_TIME: "2024-01-31T00:00:00+00:00",
        schema.EVENT_SNAPSHOT: "month_000",
    }

    def with_(**changes):
        doc = dict(good)
        for k, v in changes.items():
            if v is ...:
                doc.pop(k)
            else:
                doc[k] = v
        return orjson.dumps(doc)

    key = user.encode()
    return [
        ("payments_agg_90d", key, b"{not json", "not valid JSON"),
        ("payments_agg_90d", key, b"\x00\xff\xfe garbage", "not valid JSON"),
        ("payments_agg_90d", key, b'{"user_id": "' + key + b'", "failed_pay', "not valid JSON"),
        ("payments_agg_90d", key, b"[1, 2, 3]", "not a JSON object"),
        ("payments_agg_90d", key, with_(failed_payments_90d=...), "missing ['failed_payments_90d']"),
        ("payments_agg_90d", key, with_(extra_field=1), "unexpected ['extra_field']"),
        ("payments_agg_90d", key, with_(failed_payments_90d="1"), "expected an integer"),
        ("payments_agg_90d", key, with_(failed_payments_90d=7.9), "expected an integer"),
        ("payments_agg_90d", key, with_(failed_payments_90d=None), "must not be null"),
        ("payments_agg_90d", key, with_(failed_payments_90d=-1), "expected an integer from 0 to 1000"),
        (
            "payments_agg_90d",
            key,
            b'{"user_id": "' + key + b'", "failed_payments_90d": NaN}',
            "not valid JSON",
        ),
        (
            "payments_agg_90d",
            key,
            with_(**{schema.EVENT_TIME: "1970-01-01T00:00:00+00:00"}),
            "expected an ISO 8601 time with a zone",
        ),
        (
            "payments_agg_90d",
            key,
            with_(**{schema.EVENT_TIME: "2999-01-01T00:00:00+00:00"}),
            "expected an ISO 8601 time with a zone",
        ),
        (
            "payments_agg_90d",
            key,
            with_(**{schema.EVENT_TIME: "yesterday"}),
            "expected an ISO 8601 time with a zone",
        ),
        ("payments_agg_90d", key, with_(**{schema.KEY: "'; DROP TABLE users; --"}), "expected a user id"),
        ("payments_agg_90d", None, with_(), "no key"),
        ("payments_agg_90d", b"0000-ZZZZZ", with_(), "does not match user_id"),
        ("payments_agg_90d", key, None, "tombstone"),
        ("payments_agg_90d", key, b'{"a": "' + b"x" * 1_100_000 + b'"}', "over the limit"),
        ("subscriptions", key, with_(), "fields do not match table subscriptions"),
    ]


def test_bad_events_go_to_dead_letter_topic_and_good_ones_around_them_are_written(snapshots, fresh):
    m0, _ = snapshots
    users = pipeline.users_of(m0)
    corpus = _bad_corpus(users[0])
    producer = kafka_clients.producer("test")
    from streamflow.kafka_topics import ensure_topics
    from streamflow.topics import table_topics

    ensure_topics(table_topics() + [dead_letter_topic()], partitions=4)
    pipeline.replay([m0])
    for table, key, value, _ in corpus:
        producer.send(topic_of(schema.table(table)), key=key, value=value)
    producer.flush()
    producer.close()
    pipeline.replay([m0])  # good events after the bad ones (a replay: idempotent)
    stats = pipeline.drain(fresh)
    assert stats["dead_lettered"] == len(corpus)
    assert stats["written"] == 2 * 6 * USERS
    assert pipeline.online_state(users) == pipeline.expected_online(m0)

    letters = [orjson.loads(r.value) for r in pipeline.read_topic(dead_letter_topic())]
    assert len(letters) == len(corpus)
    reasons = sorted(letter["reason"] for letter in letters)
    for _, _, _, fragment in corpus:
        assert any(fragment in r for r in reasons), (fragment, reasons)
    for letter in letters:
        assert letter["source"]["topic"].startswith(config.topic_prefix())
        assert letter["source"]["offset"] >= 0 and letter["source"]["partition"] >= 0


def test_two_consumer_processes_share_partitions_and_produce_the_exact_state(snapshots, fresh, tmp_path):
    m0, m1 = snapshots
    logs = [tmp_path / "c1.log", tmp_path / "c2.log"]
    procs = [
        pipeline.consumer_process(fresh, "--max-idle", "30", "--max-batch", "100", log_path=p) for p in logs
    ]
    deadline = time.monotonic() + 120  # a member stuck joining gets a new client after 30 s
    while not pipeline.group_settled(fresh, 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pipeline.group_settled(fresh, 2), [p.read_text() for p in logs]
    pipeline.replay([m0, m1])
    for p in procs:
        assert p.wait(timeout=180) == 0
    text = [p.read_text() for p in logs]
    written = []
    for t in text:
        line = [ln for ln in t.splitlines() if ln.startswith("consumed ")][-1]
        written.append(int(line.split("written ")[1].split(",")[0]))
    # both did work, and together they wrote every event at least once
    assert all(w > 0 for w in written), text
    assert sum(written) >= 2 * 6 * USERS
    assert pipeline.online_state(pipeline.users_of(m1)) == pipeline.expected_online(m1)


def test_sigterm_finishes_the_batch_commits_and_leaves_the_group(snapshots, fresh, tmp_path):
    m0, m1 = snapshots
    pipeline.replay([m0, m1])
    log = tmp_path / "consumer.log"
    proc = pipeline.consumer_process(fresh, "--max-batch", "50", log_path=log)
    deadline = time.monotonic() + 120
    while pipeline.committed_total(fresh) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()
    text = log.read_text()
    assert "SIGTERM" in text
    assert pipeline.group_members(fresh) == 0  # it left the group instead of timing out of it
    # what it reported as written is committed: nothing it wrote is redelivered
    written = int(
        [ln for ln in text.splitlines() if ln.startswith("consumed ")][-1].split("written ")[1].split(",")[0]
    )
    assert pipeline.committed_total(fresh) == written, text
    stats = pipeline.drain(fresh)
    assert stats["consumed"] == 2 * 6 * USERS - written
    assert pipeline.online_state(pipeline.users_of(m1)) == pipeline.expected_online(m1)
