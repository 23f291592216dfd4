"""`streamflow verify` against the real PostgreSQL: online = newest offline row = snapshot row.

A small generated dataset (both months) is loaded and materialized once; each test then changes
one thing (an online value, an offline row, a missing online row, an event time), checks that
verify names it, and puts the row back exactly as it was. The last test builds the stores by
streaming instead (replay + consume in-process) and verifies them.
"""

from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from datetime import date, datetime, timezone

import numpy as np
import psycopg
import pytest
from feast.protos.feast.types.Value_pb2 import RepeatedValue, Value

from feature_repo import definitions
from streamflow import config, schema
from streamflow.batch.load import load_snapshot
from streamflow.datagen.generate import generate
from streamflow.errors import ServiceUnavailable, StreamflowError
from streamflow.feast_stores.online import decode_values, encode_values, table_name
from streamflow.feast_stores.value_encoding import decode_elements, string_entity_key
from streamflow.net import free_port
from streamflow.online_features import materialize
from streamflow.verify import compare, query, verify
from streamflow.verify.cli import main
from streamflow.verify.values import MISSING, VALUE_TYPES, online_equals, show_online
from tests import pipeline

USERS = 120
JAN = schema.as_of_timestamp(schema.SNAPSHOTS["month_000"])
FEB = schema.as_of_timestamp(schema.SNAPSHOTS["month_001"])
SUBS = schema.table("subscriptions")
USAGE = schema.table("usage_agg_30d")
PAYMENTS = schema.table("payments_agg_90d")
USERS_TABLE = schema.table("users")


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    generate(out, users=USERS, seed=13, progress=False)
    return out / "month_000", out / "month_001"


@pytest.fixture(scope="module")
def loaded(pg_settings, snapshots):
    """Both months loaded and materialized; the users in file order."""
    pipeline.reset_store()
    for folder in snapshots:
        load_snapshot(folder)
    materialize(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))
    return pipeline.users_of(snapshots[1])


def online_name(table: schema.Table) -> str:
    return table_name(config.feast_project(), table.feature_view)


@contextmanager
def online_row_kept(conn, table: schema.Table, user: str):
    """Yield the user's online row (names, vals, event_ts); put it back as it was afterwards."""
    key = string_entity_key(schema.KEY, user)
    name = online_name(table)
    row = conn.execute(
        f'SELECT names, vals, event_ts, created_ts FROM "{name}" WHERE entity_key = %s', (key,)
    ).fetchone()
    assert row is not None, f"{user} has no online row in {name}"
    try:
        yield row
    finally:
        conn.execute(f'DELETE FROM "{name}" WHERE entity_key = %s', (key,))
        conn.execute(
            f'INSERT INTO "{name}" (entity_key, names, vals, event_ts, created_ts) '
            "VALUES (%s, %s, %s, %s, %s)",
            (key, *row),
        )


def run_cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# --- the whole dataset matches ---------------------------------------------------------------------


def test_loaded_and_materialized_stores_verify_with_the_snapshot(loaded, snapshots, capsys):
    code, doc = run_cli(capsys, "--snapshot-dir", str(snapshots[1]))
    assert code == 0, doc
    assert doc["ok"] is True and doc["mismatches"] == 0 and doc["users"] == USERS
    assert set(doc["views"]) == {t.feature_view for t in schema.TABLES}
    for view in doc["views"].values():
        assert (view["users"], view["online"], view["offline"], view["snapshot"]) == (USERS,) * 4
        assert view["rows_decoded"] == 0  # materialize wrote exactly the bytes of the offline rows
    assert doc["snapshot"]["as_of"] == "2024-02-29"

    assert main(["--snapshot-dir", str(snapshots[1])]) == 0
    text = capsys.readouterr().out
    assert f"OK: 0 mismatches, {USERS} users, 6 views" in text


def test_an_older_snapshot_folder_differs_from_the_newest_offline_rows(loaded, snapshots):
    report = verify(snapshots[0], views=["usage_agg_30d_fv"])
    usage = report.views["usage_agg_30d_fv"]
    assert usage.columns["event_timestamp"].offline_snapshot == USERS  # as_of 2024-01-31 against 2024-02-29
    assert usage.columns["watch_hours_30d"].offline_snapshot == USERS  # drifts for every user
    assert usage.columns["watch_hours_30d"].online_offline == 0
    assert not report.ok


def test_offline_row_at_or_before_the_check_time_is_the_one_compared(loaded, pg_conn):
    # Before February's as_of, the newest offline row is January's: online holds February's.
    report = verify(views=["usage_agg_30d_fv"], now=datetime(2024, 2, 1, tzinfo=timezone.utc))
    assert report.views["usage_agg_30d_fv"].columns["event_timestamp"].online_offline == USERS
    # An offline row dated after the check time is not seen.
    user = loaded[0]
    pg_conn.execute(
        f"INSERT INTO {USAGE.snapshot_table} (user_id, as_of, watch_hours_30d,"
        " avg_session_mins_7d, unique_devices_30d, skips_7d, rebuffer_events_7d)"
        " VALUES (%s, '2099-01-01', 1, 1, 1, 1, 1)",
        (user,),
    )
    try:
        assert verify(views=["usage_agg_30d_fv"]).ok
    finally:
        pg_conn.execute(
            f"DELETE FROM {USAGE.snapshot_table} WHERE user_id = %s AND as_of = '2099-01-01'", (user,)
        )


# --- one thing changed -----------------------------------------------------------------------------


def test_one_corrupted_online_value_is_named_with_view_column_and_user(
    loaded, snapshots, pg_conn, capsys, caplog
):
    user = loaded[7]
    with online_row_kept(pg_conn, SUBS, user) as (names, vals, _ts, _created):
        values = decode_values(vals)
        i = names.split(",").index("monthly_fee")
        original = values[i].double_val
        values[i] = Value(double_val=original + 1.25)
        pg_conn.execute(
            f'UPDATE "{online_name(SUBS)}" SET vals = %s WHERE entity_key = %s',
            (encode_values(values), string_entity_key(schema.KEY, user)),
        )

        code, doc = run_cli(capsys, "--snapshot-dir", str(snapshots[1]))
        assert code == 1
        assert doc["ok"] is False and doc["mismatches"] == 1
        subs = doc["views"]["subs_profile_fv"]
        assert subs["users_with_mismatches"] == 1 and list(subs["columns"]) == ["monthly_fee"]
        fee = subs["columns"]["monthly_fee"]
        assert (fee["online_offline"], fee["offline_snapshot"]) == (1, 0)
        assert fee["examples"] == [
            {
                "user_id": user,
                "online": original + 1.25,
                "offline": original,
                "snapshot": original,
                "differs": ["online_offline"],
            }
        ]

        assert main(["--snapshot-dir", str(snapshots[1])]) == 1
        captured = capsys.readouterr()
        assert (
            "subs_profile_fv.monthly_fee: 1 mismatch (online != offline 1, offline != snapshot 0)"
            in captured.out
        )
        assert f"{user}: online {original + 1.25!r}, offline {original!r}" in captured.out
        assert "FAILED: 1 mismatch," in captured.out
        assert "1 mismatches in subs_profile_fv" in caplog.text
    assert verify(snapshots[1]).ok  # put back


def test_a_changed_offline_row_is_caught_against_the_snapshot_and_online(loaded, snapshots, pg_conn):
    user = loaded[3]
    where = f"FROM {USAGE.snapshot_table} WHERE user_id = %s AND as_of = %s"
    (skips,) = pg_conn.execute(f"SELECT skips_7d {where}", (user, FEB)).fetchone()
    pg_conn.execute(
        f"UPDATE {USAGE.snapshot_table} SET skips_7d = skips_7d + 100 WHERE user_id = %s AND as_of = %s",
        (user, FEB),
    )
    try:
        report = verify(snapshots[1])
        usage = report.views["usage_agg_30d_fv"]
        col = usage.columns["skips_7d"]
        assert (col.offline_snapshot, col.online_offline) == (1, 1)
        assert col.examples == [
            {
                "user_id": user,
                "online": skips,
                "offline": skips + 100,
                "snapshot": skips,
                "differs": ["online_offline", "offline_snapshot"],
            }
        ]
        assert report.mismatches == 2 and list(usage.columns) == ["skips_7d"]
        # without the snapshot folder only online against offline is checked
        alone = verify(views=["usage_agg_30d"])
        assert alone.mismatches == 1
        assert alone.views["usage_agg_30d_fv"].columns["skips_7d"].online_offline == 1
    finally:
        pg_conn.execute(
            f"UPDATE {USAGE.snapshot_table} SET skips_7d = %s WHERE user_id = %s AND as_of = %s",
            (skips, user, FEB),
        )
    assert verify(snapshots[1]).ok


def test_a_user_missing_online_and_one_only_online_are_counted(loaded, snapshots, pg_conn, capsys):
    user = loaded[11]
    key = string_entity_key(schema.KEY, user)
    stranger = string_entity_key(schema.KEY, "0000-ZZZZZ")
    with online_row_kept(pg_conn, PAYMENTS, user) as (names, vals, ts, created):
        pg_conn.execute(f'DELETE FROM "{online_name(PAYMENTS)}" WHERE entity_key = %s', (key,))
        pg_conn.execute(
            f'INSERT INTO "{online_name(PAYMENTS)}" (entity_key, names, vals, event_ts) '
            "VALUES (%s, %s, %s, %s)",
            (stranger, names, vals, ts),
        )
        try:
            code, doc = run_cli(capsys, "--snapshot-dir", str(snapshots[1]), "--view", "payments_agg_90d_fv")
        finally:
            pg_conn.execute(f'DELETE FROM "{online_name(PAYMENTS)}" WHERE entity_key = %s', (stranger,))
    assert code == 1
    view = doc["views"]["payments_agg_90d_fv"]
    assert list(doc["views"]) == ["payments_agg_90d_fv"]
    assert view["only_offline"] == {"count": 1, "examples": [user]}
    assert view["only_online"] == {"count": 1, "examples": ["0000-ZZZZZ"]}
    assert (view["users"], view["online"], view["offline"]) == (USERS + 1, USERS, USERS)
    assert view["columns"] == {} and doc["mismatches"] == 2


def test_an_online_event_time_that_is_not_the_offline_as_of_is_reported(loaded, pg_conn):
    user = loaded[5]
    with online_row_kept(pg_conn, USERS_TABLE, user):
        pg_conn.execute(
            f'UPDATE "{online_name(USERS_TABLE)}" SET event_ts = %s WHERE entity_key = %s',
            (JAN, string_entity_key(schema.KEY, user)),
        )
        report = verify(views=["users_profile_fv"])
    col = report.views["users_profile_fv"].columns["event_timestamp"]
    assert col.online_offline == 1
    assert col.examples[0]["online"] == "2024-01-31T00:00:00Z"
    assert col.examples[0]["offline"] == "2024-02-29T00:00:00Z"


def test_missing_tables_and_unreachable_database(loaded, monkeypatch, caplog):
    with pytest.raises(StreamflowError, match="do not exist"):
        verify(project="no_such_project")
    port = free_port()  # nothing listens there
    monkeypatch.setenv("POSTGRES_PORT", str(port))
    with pytest.raises(ServiceUnavailable):
        verify()
    assert main([]) == 4
    assert "PostgreSQL is not reachable" in caplog.text


def test_unknown_view_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--view", "nope_fv"])
    assert exc.value.code == 2


# --- equality, pure --------------------------------------------------------------------------------


def test_value_types_are_the_feature_views_types():
    for kind, name in VALUE_TYPES.items():
        assert definitions.FEAST_TYPES[kind].to_value_type().name == name
    assert query.online_table("p", "v") == table_name("p", "v")


def test_equality_rules():
    assert online_equals("float", ("double_val", 56.45), 56.45)
    assert not online_equals("float", ("double_val", 56.45), 56.450000000000003 + 1e-14)
    assert online_equals("float", ("float_val", float(np.float32(56.45))), 56.45)  # a Float32 feature
    assert not online_equals("float", ("float_val", float(np.float32(56.45))), 56.46)
    assert online_equals("float", (None, None), None) and online_equals("float", (None, None), math.nan)
    assert not online_equals("float", (None, None), 0.0)
    assert online_equals("date", ("unix_timestamp_val", 1643241600), date(2022, 1, 27))
    # the day the API shows
    assert online_equals("date", ("unix_timestamp_val", 1643241600 + 3600), date(2022, 1, 27))
    assert not online_equals("date", ("unix_timestamp_val", 1643241600 - 1), date(2022, 1, 27))
    assert online_equals("date", ("unix_timestamp_val", -(2**63)), None)  # Feast's null timestamp
    assert online_equals("boolean", ("bool_val", True), True)
    assert not online_equals("integer", ("bool_val", True), 1)
    assert not online_equals("boolean", ("int64_val", 1), True)
    assert online_equals("integer", ("int32_val", 3), 3) and online_equals("integer", ("int64_val", 3), 3)
    assert online_equals("boolean", ("null_val", 0), None)  # Feast's explicit null
    assert not online_equals("category", ("string_val", "No"), None)
    assert not online_equals("category", MISSING, "No")
    assert show_online("date", ("unix_timestamp_val", 1643241600)) == "2022-01-27"
    assert show_online("integer", ("string_val", "7")) == "<string_val '7'>"
    assert show_online("integer", MISSING) == "<missing>"


def test_decode_elements_reads_what_protobuf_writes():
    rng = np.random.default_rng(3)
    samples = [
        Value(),
        Value(null_val=0),
        Value(int64_val=0),
        Value(int64_val=-1),
        Value(int64_val=2**63 - 1),
        Value(int32_val=-(2**31)),
        Value(double_val=-0.0),
        Value(double_val=1e300),
        Value(float_val=1.5),
        Value(bool_val=False),
        Value(bool_val=True),
        Value(string_val=""),
        Value(string_val="ünï" * 100),
        Value(unix_timestamp_val=-(2**63)),
        Value(unix_timestamp_val=1706659200),
        Value(bytes_val=b"\x00\xff"),
    ]
    samples += [Value(int64_val=int(n)) for n in rng.integers(-(2**62), 2**62, 50)]
    samples += [Value(double_val=float(x)) for x in rng.normal(0, 1e6, 50)]
    decoded = decode_elements(RepeatedValue(val=samples).SerializeToString())
    assert len(decoded) == len(samples)
    for value, (field, raw) in zip(samples, decoded):
        which = value.WhichOneof("val")
        assert field == which
        assert raw == (getattr(value, which) if which else None), value
    with pytest.raises(ValueError):
        decode_elements(b"\x12\x00")


class FakeCursor:
    """fetchmany() over a list of chunks, raising after ``fail_after`` chunks if set."""

    def __init__(self, chunks: int, fail_after: int | None = None):
        self.left = [[(i,)] for i in range(chunks)]
        self.fail_after = fail_after
        self.fetched = 0

    def fetchmany(self, size):
        if self.fail_after is not None and self.fetched == self.fail_after:
            raise psycopg.OperationalError("server closed the connection")
        self.fetched += 1
        return self.left.pop(0) if self.left else []


def test_prefetched_chunks_come_in_order_and_errors_reach_the_reader():
    assert [rows[0][0] for rows in compare._prefetched(FakeCursor(7), 1)] == list(range(7))
    got = []
    with pytest.raises(psycopg.OperationalError):
        for rows in compare._prefetched(FakeCursor(7, fail_after=3), 1):
            got.append(rows[0][0])
    assert got == [0, 1, 2]
    # a reader that stops early leaves no thread behind, and the fetcher stops fetching
    cursor = FakeCursor(1000)
    for _rows in compare._prefetched(cursor, 1):
        break
    assert not [t for t in threading.enumerate() if t.name == "verify-fetch"]
    assert cursor.fetched <= 1 + compare.PREFETCH + 1


# --- the streaming path ----------------------------------------------------------------------------


STREAM_USERS = 40


def test_stores_filled_by_streaming_verify_too(tmp_path, fresh):
    generate(tmp_path, users=STREAM_USERS, seed=17, progress=False)
    m0, m1 = tmp_path / "month_000", tmp_path / "month_001"
    pipeline.replay([m0, m1])
    stats = pipeline.drain(fresh)
    assert stats["written"] == 2 * 6 * STREAM_USERS
    report = verify(m1)
    assert report.ok, report.to_text()
    assert report.users == STREAM_USERS
    assert all(v.rows_decoded == 0 for v in report.views.values())  # pushed bytes = offline rows' encoding
    # and a change made after streaming is caught
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        (user,) = conn.execute(
            f"SELECT user_id FROM {SUBS.snapshot_table}"
            " WHERE as_of = %s AND net_service <> 'No' ORDER BY user_id LIMIT 1",
            (FEB,),
        ).fetchone()
        conn.execute(
            f"UPDATE {SUBS.snapshot_table} SET net_service = 'No' WHERE user_id = %s AND as_of = %s",
            (user, FEB),
        )
    report = verify(m1)
    col = report.views["subs_profile_fv"].columns["net_service"]
    assert (report.mismatches, col.online_offline, col.offline_snapshot) == (2, 1, 1)
    assert col.examples[0]["user_id"] == user and col.examples[0]["offline"] == "No"
