"""Our Feast store classes against the real PostgreSQL: newest wins, idempotent, offline pushes,
early and clear push validation, connections that survive a failed write."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import psycopg
import pytest
from feast.protos.feast.types.Value_pb2 import RepeatedValue, Value

from streamflow import config, schema
from streamflow.feast_stores.online import decode_values, encode_values, table_name
from streamflow.feature_store import get_store, push
from streamflow.online_features import materialize
from streamflow.push_validation import PushValidationError
from tests import pipeline

USAGE = schema.table("usage_agg_30d")
JAN = pd.Timestamp("2024-01-31", tz="UTC")
FEB = pd.Timestamp("2024-02-29", tz="UTC")


def usage_frame(rows: list[tuple[str, pd.Timestamp, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.KEY: [r[0] for r in rows],
            schema.SNAPSHOT_TIME: [r[1] for r in rows],
            "watch_hours_30d": [r[2] for r in rows],
            "avg_session_mins_7d": [29.1] * len(rows),
            "unique_devices_30d": pd.array([2] * len(rows), dtype="Int64"),
            "skips_7d": pd.array([5] * len(rows), dtype="Int64"),
            "rebuffer_events_7d": pd.array([1] * len(rows), dtype="Int64"),
            schema.EVENT_SNAPSHOT: ["month_000" if r[1] == JAN else "month_001" for r in rows],
        }
    )


def online_watch_hours(user: str):
    result = (
        get_store()
        .get_online_features(features=["usage_agg_30d_fv:watch_hours_30d"], entity_rows=[{schema.KEY: user}])
        .to_dict()
    )
    return result["watch_hours_30d"][0]


@pytest.fixture()
def store(pg_settings, monkeypatch):
    monkeypatch.setenv("STREAMFLOW_TOPIC_PREFIX", pipeline.fresh_prefix())
    pipeline.reset_store()
    return get_store()


def test_value_encoding_is_protobuf_repeated_value():
    values = [Value(int64_val=7), Value(string_val="x" * 20_000), Value(), Value(bool_val=False)]
    assert encode_values(values) == RepeatedValue(val=values).SerializeToString()
    assert decode_values(encode_values(values)) == values


def test_older_event_never_overwrites_newer(store):
    push(USAGE, usage_frame([("1111-AAAAA", FEB, 20.0)]))
    push(USAGE, usage_frame([("1111-AAAAA", JAN, 10.0)]))
    assert online_watch_hours("1111-AAAAA") == 20.0
    # inside one batch, the older row last
    push(USAGE, usage_frame([("2222-BBBBB", FEB, 21.0), ("2222-BBBBB", JAN, 11.0)]))
    assert online_watch_hours("2222-BBBBB") == 21.0
    # both months are kept offline
    rows = pipeline.offline_rows(USAGE)
    assert sorted(rows[rows[schema.KEY] == "1111-AAAAA"]["watch_hours_30d"]) == [10.0, 20.0]


def test_materialize_of_an_older_range_keeps_newer_values(store):
    push(USAGE, usage_frame([("3333-CCCCC", JAN, 10.0)]))
    push(USAGE, usage_frame([("3333-CCCCC", FEB, 20.0)]))
    materialize(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 2, 1, tzinfo=timezone.utc))
    assert online_watch_hours("3333-CCCCC") == 20.0


def test_same_event_twice_rewrites_nothing(store):
    frame = usage_frame([("4444-DDDDD", JAN, 10.0), ("5555-EEEEE", JAN, 12.5)])
    push(USAGE, frame)
    online = table_name(store.config.project, USAGE.feature_view)
    with psycopg.connect(config.postgres().conninfo) as conn:
        before = conn.execute(f'SELECT entity_key, xmin::text FROM "{online}" ORDER BY 1').fetchall()
        off_before = conn.execute(
            f"SELECT user_id, xmin::text, loaded_at FROM {USAGE.snapshot_table} ORDER BY 1"
        ).fetchall()
    push(USAGE, frame)
    with psycopg.connect(config.postgres().conninfo) as conn:
        assert conn.execute(f'SELECT entity_key, xmin::text FROM "{online}" ORDER BY 1').fetchall() == before
        assert (
            conn.execute(
                f"SELECT user_id, xmin::text, loaded_at FROM {USAGE.snapshot_table} ORDER BY 1"
            ).fetchall()
            == off_before
        )


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("unique_devices_30d", 7.9, "field unique_devices_30d: expected an integer"),
        ("watch_hours_30d", float("inf"), "field watch_hours_30d: expected a finite number"),
        ("watch_hours_30d", "lots", "field watch_hours_30d: expected a finite number from 0 to 744"),
        ("skips_7d", None, "field skips_7d: must not be null"),
        (schema.KEY, "not-a-user", "field user_id: expected a user id"),
        (schema.KEY, "8888-HHHHH\n", "field user_id: expected a user id"),
        (schema.KEY, " 8888-HHHHH", "field user_id: expected a user id"),
        (schema.KEY, "888\u0668-HHHHH", "field user_id: expected a user id"),
        (schema.EVENT_SNAPSHOT, "month_000\n", "field snapshot: expected a snapshot id"),
        ("skips_7d", -3, "field skips_7d: expected an integer from 0 to 1000000"),
    ],
)
def test_bad_push_fails_early_naming_row_and_field_and_writes_nothing(store, column, value, message):
    push(USAGE, usage_frame([("6666-FFFFF", JAN, 10.0)]))
    frame = usage_frame([("7777-GGGGG", JAN, 1.0), ("8888-HHHHH", JAN, 2.0)])
    frame[column] = frame[column].astype(object)
    frame.loc[1, column] = value
    with pytest.raises(PushValidationError) as err:
        push(USAGE, frame)
    assert message in str(err.value)
    assert "row 1" in str(err.value)
    assert online_watch_hours("7777-GGGGG") is None  # the good row before it was not written either
    assert len(pipeline.offline_rows(USAGE)) == 1


@pytest.mark.parametrize("user", ["8888-HHHHH\n", " 8888-HHHHH", "888\u0668-HHHHH"])
def test_feasts_own_store_push_refuses_a_value_off_the_contract_and_writes_nothing(store, user):
    from feast.data_source import PushMode

    push(USAGE, usage_frame([("6666-FFFFF", JAN, 10.0)]))
    frame = usage_frame([("7777-GGGGG", JAN, 1.0), (user, JAN, 2.0)])
    with pytest.raises(PushValidationError, match=r"(?s)row 1 \(user .*field user_id: expected a user id"):
        store.push(USAGE.push_source, frame, to=PushMode.ONLINE_AND_OFFLINE)
    assert online_watch_hours("7777-GGGGG") is None
    assert len(pipeline.offline_rows(USAGE)) == 1


def test_missing_column_is_named(store):
    frame = usage_frame([("7777-GGGGG", JAN, 1.0)]).drop(columns=["skips_7d"])
    with pytest.raises(PushValidationError, match=r"missing \['skips_7d'\]"):
        push(USAGE, frame)


def test_a_failed_write_does_not_poison_later_calls(store):
    online = table_name(store.config.project, USAGE.feature_view)
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{online}" RENAME TO "{online}_away"')
    try:
        for _ in range(12):  # more failures than the pool has connections
            with pytest.raises(psycopg.errors.UndefinedTable):
                push(USAGE, usage_frame([("9999-IIIII", JAN, 1.0)]))
    finally:
        with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
            conn.execute(f'ALTER TABLE "{online}_away" RENAME TO "{online}"')
    push(USAGE, usage_frame([("9999-IIIII", FEB, 3.0)]))
    assert online_watch_hours("9999-IIIII") == 3.0


def test_fast_entity_key_serialization_equals_feasts():
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    from streamflow.feast_stores.online import entity_key_bytes

    for key in (
        EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="7590-VHVEG")]),
        EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="é-ü")]),
        EntityKey(join_keys=["n"], entity_values=[Value(int64_val=42)]),
        EntityKey(join_keys=["b", "a"], entity_values=[Value(string_val="x"), Value(int64_val=1)]),
    ):
        assert entity_key_bytes(key, 3) == serialize_entity_key(key, entity_key_serialization_version=3)
