"""The provider's column-wise push encoding gives exactly the bytes of Feast's own conversion.

Unit part (no I/O): every table of the registry, random typed frames with nulls, NaN, zero,
negative and extreme values, compared row by row with Feast's ``_convert_arrow_to_proto`` (the
stock push path) serialized the way our online store serializes it. Database part: a frame
written through the fast path, then again through Feast's conversion, changes no row.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from feast import Field
from feast.infra.passthrough_provider import PassthroughProvider
from feast.types import String

from feature_repo import definitions
from streamflow import schema
from streamflow.feast_stores import value_encoding
from streamflow.feast_stores.online import (
    StreamflowOnlineStore,
    binary_copy_payload,
    encode_values,
    entity_key_bytes,
)
from streamflow.feast_stores.provider import event_micros, fast_path_features

EDGE = {
    "integer": [0, -1, 1, 127, 128, -(2**53), 2**53, 2**40],  # Feast passes nullable ints as floats
    "float": [0.0, -0.0, -1.5, 1e300, -1e-300, float("inf"), float("nan"), 29.123456789012345],
    "category": ["", "a", "héllo wörld", "x" * 200, "ünï,cødé\n", "Month-to-month"],
    "boolean": [True, False],
}


def random_column(col: schema.Column, rows: int, rng: np.random.Generator) -> pd.Series:
    if col.kind == "date":
        days = rng.integers(-20_000, 40_000, rows)
        values = pd.to_datetime(days, unit="D", utc=True) + pd.to_timedelta(
            rng.integers(0, 86_400, rows), unit="s"
        )
        series = pd.Series(values)
        series[rng.random(rows) < 0.1] = pd.NaT
        return series
    if col.kind == "integer":
        values = rng.integers(-(10**6), 10**6, rows).tolist()
    elif col.kind == "float":
        values = (rng.normal(0, 1000, rows)).tolist()
    elif col.kind == "boolean":
        values = (rng.random(rows) < 0.5).tolist()
    else:
        values = [f"v{n}" for n in rng.integers(0, 50, rows)]
    edge = EDGE[col.kind]
    for i in range(0, rows, 7):
        values[i] = edge[(i // 7) % len(edge)]
    for i in np.flatnonzero(rng.random(rows) < 0.1):
        values[i] = None
    return pd.Series(pd.array(values, dtype=col.pandas_dtype))


def random_frame(table: schema.Table, rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({schema.KEY: pd.array([f"{n:04d}-ABCDE" for n in range(rows)], dtype="string")})
    frame[schema.SNAPSHOT_TIME] = pd.Timestamp("2024-01-31", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 10**9, rows), unit="us"
    )
    for col in table.columns:
        frame[col.name] = random_column(col, rows, rng)
    frame[schema.EVENT_SNAPSHOT] = "month_000"
    return frame


def applied_view(table: schema.Table):
    """The table's feature view as `feast apply` leaves it: entity columns inferred."""
    view = copy.deepcopy(definitions.FEATURE_VIEWS[table.name])
    view.entity_columns = [Field(name=schema.KEY, dtype=String)]
    return view


class _Provider:
    """What fast_path_features reads of a provider."""

    def __init__(self, online_store, version: int = 3):
        self.online_store = online_store
        self.repo_config = type("Config", (), {"entity_key_serialization_version": version})()


@pytest.mark.parametrize("table", schema.TABLES, ids=lambda t: t.name)
def test_fast_encoding_equals_feast_conversion(table):
    view = applied_view(table)
    frame = random_frame(table, rows=400, seed=len(table.name))
    features = fast_path_features(_Provider(StreamflowOnlineStore()), view, None)
    assert features is not None, "every StreamFlow view takes the fast path"

    feast_rows = PassthroughProvider._prep_rows_to_write_for_ingestion(feature_view=view, df=frame)
    import pyarrow as pa

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    keys = value_encoding.string_entity_keys(schema.KEY, arrow.column(schema.KEY))
    vals = value_encoding.encode_rows(arrow, features)
    micros = event_micros(frame, schema.SNAPSHOT_TIME, view.name)

    assert len(feast_rows) == len(keys) == len(vals) == len(micros) == len(frame)
    for i, (entity_key, values, event_ts, _created) in enumerate(feast_rows):
        assert keys[i] == entity_key_bytes(entity_key, 3), f"row {i}: entity key"
        assert list(values) == [name for name, _ in features], f"row {i}: feature order"
        assert vals[i] == encode_values(values.values()), f"row {i}: {frame.iloc[i].to_dict()}"
        expected_us = (
            int(pd.Timestamp(event_ts).tz_localize("UTC").value // 1000)
            if event_ts.tzinfo is None
            else int(pd.Timestamp(event_ts).value // 1000)
        )
        assert micros[i] == expected_us, f"row {i}: event time"


def test_fast_path_declines_what_it_does_not_cover():
    view = applied_view(schema.table("usage_agg_30d"))
    assert fast_path_features(_Provider(object()), view, None) is None  # another online store
    assert fast_path_features(_Provider(StreamflowOnlineStore()), view, {"a": "b"}) is None  # field mapping
    assert fast_path_features(_Provider(StreamflowOnlineStore(), version=2), view, None) is None


def test_event_time_missing_is_a_clear_error():
    frame = pd.DataFrame({schema.SNAPSHOT_TIME: [pd.Timestamp("2024-01-31", tz="UTC"), pd.NaT]})
    with pytest.raises(ValueError, match="row 1 has no event time"):
        event_micros(frame, schema.SNAPSHOT_TIME, "usage_agg_30d_fv")


def test_copy_payload_rejects_ragged_columns():
    with pytest.raises(ValueError, match="lengths differ"):
        binary_copy_payload([b"k"], "a", [b"v", b"w"], np.array([0, 1]))


def _parse_copy(payload: bytes) -> list[list[bytes | None]]:
    """PostgreSQL's binary COPY format, read row by row (the reference for the column-wise build)."""
    import struct

    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00" + bytes(8))
    assert payload.endswith(b"\xff\xff")
    rows, i, end = [], 19, len(payload) - 2
    while i < end:
        (count,) = struct.unpack_from(">h", payload, i)
        i += 2
        row = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", payload, i)
            i += 4
            row.append(None if length == -1 else payload[i : i + length])
            i += max(length, 0)
        rows.append(row)
    assert i == end, "trailing bytes after the last row"
    return rows


@pytest.mark.parametrize("as_arrow", [False, True])
def test_copy_payload_holds_each_row_field_by_field(as_arrow):
    import pyarrow as pa

    keys = [b"k", b"", "ünï-κλειδί".encode() * 40, b"\x00\xff"]
    vals = [b"v" * 300, b"\x0a\x00", b"", b"x"]
    micros = np.array([0, 946_684_800_000_000, -1, 1_706_659_200_123_456])
    payload = binary_copy_payload(
        pa.array(keys, pa.binary()) if as_arrow else keys,
        "a,b",
        pa.array(vals, pa.binary()) if as_arrow else vals,
        micros,
    )
    rows = _parse_copy(payload)
    assert [row[0] for row in rows] == keys
    assert {row[1] for row in rows} == {b"a,b"}
    assert [row[2] for row in rows] == vals
    pg_epoch = 946_684_800_000_000  # binary timestamps count from 2000-01-01
    assert [int.from_bytes(row[3], "big", signed=True) + pg_epoch for row in rows] == micros.tolist()
    assert [row[4] for row in rows] == [None] * 4  # created_ts is NULL
    assert _parse_copy(binary_copy_payload([], "a", [], np.array([], dtype=np.int64))) == []


def test_column_encoding_is_the_same_for_chunked_columns():
    import pyarrow as pa

    table = pa.table({"user_id": ["a", "bé", "c"], "n": [1, None, 3], "s": ["x", "y", None]})
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    assert chunked.column("n").num_chunks == 2
    features = [("n", "INT64"), ("s", "STRING")]
    assert value_encoding.encode_rows(chunked, features) == value_encoding.encode_rows(table, features)
    keys = value_encoding.string_entity_keys(schema.KEY, chunked.column("user_id"))
    assert keys == [value_encoding.string_entity_key(schema.KEY, u) for u in ("a", "bé", "c")]


def test_fast_write_then_feast_write_changes_nothing(pg_settings, monkeypatch):
    """The same frame through both paths: the second write finds every row byte-identical."""
    import psycopg
    from psycopg import sql

    from streamflow import config
    from streamflow.feast_stores.online import table_name
    from streamflow.feature_store import get_store, validated_push
    from tests import pipeline

    monkeypatch.setenv("STREAMFLOW_TOPIC_PREFIX", pipeline.fresh_prefix())
    pipeline.reset_store()
    store = get_store()
    provider = store._get_provider()
    table = schema.table("users")
    view = store.get_feature_view(table.feature_view)
    frame = random_frame(table, rows=300, seed=7)

    def row_versions() -> dict[bytes, str]:
        query = sql.SQL("SELECT entity_key, xmin::text FROM {}").format(
            sql.Identifier(table_name(store.config.project, view))
        )
        with psycopg.connect(config.postgres().conninfo) as conn:
            return {bytes(k): v for k, v in conn.execute(query)}

    def feast_path_write(df: pd.DataFrame) -> None:
        rows = PassthroughProvider._prep_rows_to_write_for_ingestion(feature_view=view, df=df)
        provider.online_store.online_write_batch(store.config, view, rows, None)

    with validated_push():  # the frame holds values validation would refuse (nulls): encoding only
        provider.ingest_df(view, frame)  # the fast path
    written = row_versions()
    assert len(written) == len(frame)
    feast_path_write(frame)
    assert row_versions() == written, "Feast's conversion of the same rows found a difference"

    newer = frame.copy()
    newer[schema.SNAPSHOT_TIME] = newer[schema.SNAPSHOT_TIME] + pd.Timedelta(days=1)
    feast_path_write(newer)
    after = row_versions()
    assert all(after[k] != v for k, v in written.items()), "a newer event rewrites every row"
