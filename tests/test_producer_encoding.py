"""The producer's fast paths give exactly what the per-row reference gives.

* ``events.encode_frame`` (a chunk of rows, column by column) yields the same keys and the same
  value bytes as ``events.encode_value`` row by row, hence the same ``decode`` result, for real
  snapshots and for generated rows with nulls, dates, floats and edge values;
* ``producer.partitioning`` picks the partition kafka-python's ``DefaultPartitioner`` picks.

No broker or database needed.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.partitioner import DefaultPartitioner
from kafka.partitioner.default import murmur2

from producer.partitioning import key_partitions, murmur2_many
from producer.replay import _records
from streamflow import contract, events, schema
from streamflow.batch.validate import read_snapshot
from streamflow.datagen.generate import generate
from streamflow.topics import topic_of

AS_OF = date(2024, 1, 31)
NOW = datetime(2024, 3, 1, tzinfo=timezone.utc)


def reference(table: schema.Table, frame: pd.DataFrame, as_of: date = AS_OF, snapshot: str = "month_000"):
    rows = list(_records(frame))
    return [r[schema.KEY].encode() for r in rows], [
        events.encode_value(table, r, as_of, snapshot) for r in rows
    ]


def assert_same(
    table: schema.Table,
    frame: pd.DataFrame,
    as_of: date = AS_OF,
    snapshot: str = "month_000",
    decodable: bool = True,
) -> None:
    keys, values = events.encode_frame(table, frame, as_of, snapshot)
    ref_keys, ref_values = reference(table, frame, as_of, snapshot)
    assert keys == ref_keys
    assert values == ref_values  # byte for byte
    if decodable:  # the consumer sees the very same events
        for key, value, ref_value in zip(keys, values, ref_values):
            assert events.decode(topic_of(table), key, value, now=NOW, table=table) == events.decode(
                topic_of(table), key, ref_value, now=NOW, table=table
            )


def test_every_table_of_a_generated_snapshot(tmp_path):
    generate(tmp_path, users=600, progress=False)
    frames = read_snapshot(tmp_path / "month_000")
    for table in schema.TABLES:
        frame = frames[table.name]
        assert_same(table, frame)
        assert_same(table, frame.iloc[250:], as_of=date(2024, 2, 29), snapshot="month_001")  # a later chunk


# --- generated rows: every kind, nulls and edge values ---------------------------------------------

ANY_TEXT = contract.Format(r"(?s).*", 10**6, "any text")
"""A text column that takes any string: the encoder must carry every string, whatever a contract allows."""


def _column(name: str, kind: str, nullable: bool) -> schema.Column:
    if kind == "text":
        return schema.Column(name, "id", nullable=nullable, format=ANY_TEXT)
    return schema.Column(name, kind, nullable=nullable)


KIND_COLUMNS = tuple(
    _column(f"{kind}_{'null' if nullable else 'set'}", kind, nullable)
    for kind in ("text", "integer", "float", "boolean", "date")
    for nullable in (False, True)
)
ALL_KINDS = schema.Table(
    name="all_kinds",
    columns=KIND_COLUMNS,
    feature_view="all_kinds_fv",
    snapshot_table="all_kinds_snapshots",
    description="every kind of column",
)

EDGE_FLOATS = [
    0.0,
    -0.0,
    0.1,
    1 / 3,
    2.5,
    100.0,
    1e15,
    1e16,
    1e17,
    1.5e300,
    1e-7,
    1e-5,
    1e-4,
    5e-324,
    2.2250738585072014e-308,
    1.7976931348623157e308,
    -1e22,
    123456789.123456789,
    0.30000000000000004,
]
EDGE_INTS = [0, 1, -1, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63)]
EDGE_DATES = ["1678-01-01", "1969-12-31", "1970-01-01", "2000-02-29", "2024-01-31", "2261-12-31"]
EDGE_STRINGS = [
    "",
    "a",
    "Month-to-month",
    'quote " inside',
    "back\\slash",
    'x",',
    '","',
    "%s %b %%",
    "line\nbreak\ttab\r\x00\x1f\x7f",
    "é ü 中文 😀",
    "\u2028\u2029",
    "{",
    "null",
]


def ids(n: int, rng: random.Random) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add(f"{rng.randrange(10_000):04d}-{''.join(rng.choices('ABCDEFGHIJKLMNOPQRSTUVWXYZ', k=5))}")
    return sorted(out)


def frame_of(table: schema.Table, user_ids: list[str], columns: dict[str, list]) -> pd.DataFrame:
    """A typed frame in the registry's dtypes, as read_snapshot builds it (None = null)."""
    data = {schema.KEY: pd.array(user_ids, dtype="string")}
    for col in table.columns:
        values = columns[col.name]
        if col.kind == "date":
            data[col.name] = pd.DatetimeIndex(pd.to_datetime(values)).tz_localize("UTC").array
        else:
            data[col.name] = pd.array(values, dtype=col.pandas_dtype)
    return pd.DataFrame(data)


def random_column(col: schema.Column, n: int, rng: random.Random) -> list:
    def one():
        if col.nullable and rng.random() < 0.3:
            return None
        if col.kind == "id":
            return rng.choice(EDGE_STRINGS)
        if col.kind == "integer":
            return rng.choice(EDGE_INTS) if rng.random() < 0.5 else rng.randrange(-(10**12), 10**12)
        if col.kind == "float":
            r = rng.random()
            return (
                rng.choice(EDGE_FLOATS)
                if r < 0.4
                else rng.uniform(-1e6, 1e6)
                if r < 0.8
                else rng.random() * 10 ** rng.randrange(-30, 30)
            )
        if col.kind == "boolean":
            return rng.random() < 0.5
        return (
            rng.choice(EDGE_DATES)
            if rng.random() < 0.5
            else date.fromordinal(
                rng.randrange(date(1678, 1, 1).toordinal(), date(2261, 12, 31).toordinal())
            ).isoformat()
        )

    return [one() for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_generated_rows_of_every_kind_with_nulls_and_edge_values(seed):
    rng = random.Random(seed)
    n = 400
    frame = frame_of(ALL_KINDS, ids(n, rng), {c.name: random_column(c, n, rng) for c in ALL_KINDS.columns})
    # values beyond the registry's choices and ranges: bytes only (decode would reject both alike)
    assert_same(ALL_KINDS, frame, decodable=False)


def test_registry_tables_with_generated_values_decode_to_the_same_event():
    rng = random.Random(7)
    n = 300
    for table in schema.TABLES:
        columns = {}
        for col in table.columns:
            if col.kind == "category":
                columns[col.name] = [rng.choice(col.choices) for _ in range(n)]
            elif col.kind == "date":
                columns[col.name] = [rng.choice(EDGE_DATES) for _ in range(n)]
            elif col.kind == "boolean":
                columns[col.name] = [
                    None if col.nullable and rng.random() < 0.3 else rng.random() < 0.5 for _ in range(n)
                ]
            else:
                lo, hi = col.min or 0, col.max or 1000
                edge = [lo, hi]
                if col.kind == "integer":
                    columns[col.name] = [
                        rng.choice(edge) if rng.random() < 0.2 else rng.randrange(int(lo), int(hi) + 1)
                        for _ in range(n)
                    ]
                else:
                    columns[col.name] = [
                        float(rng.choice(edge))
                        if rng.random() < 0.2
                        else round(rng.uniform(lo, hi), rng.randrange(0, 17))
                        for _ in range(n)
                    ]
        assert_same(table, frame_of(table, ids(n, rng), columns), snapshot="month_007")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.text(max_size=12),
            st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
            st.none() | st.floats(allow_nan=False, allow_infinity=False),
            st.none() | st.booleans(),
            st.none() | st.dates(min_value=date(1678, 1, 1), max_value=date(2261, 12, 31)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_any_values(rows):
    cols = [
        _column("s", "text", True),
        _column("i", "integer", True),
        _column("f", "float", True),
        _column("b", "boolean", True),
        _column("d", "date", True),
    ]
    table = schema.Table(
        name="any",
        columns=tuple(cols),
        feature_view="any_fv",
        snapshot_table="any_snapshots",
        description="any values",
    )
    user_ids = [f"{i:04d}-ABCDE" for i in range(len(rows))]
    values = {c.name: [r[k] for r in rows] for k, c in enumerate(cols)}
    values["d"] = [None if d is None else d.isoformat() for d in values["d"]]
    assert_same(table, frame_of(table, user_ids, values), decodable=False)


def test_keys_that_need_escaping_in_json():
    """Not ids of the registry's pattern (the producer only sends validated ids): still the same."""
    keys = ["7590-VHVEG", 'a"b', "back\\", "ü", "", "x\ny"]
    table = schema.table("labels")
    frame = frame_of(table, keys, {"churn_label": [True, False, True, False, True, False]})
    assert_same(table, frame, decodable=False)


def test_an_empty_frame():
    table = schema.table("users")
    assert events.encode_frame(
        table, frame_of(table, [], {c.name: [] for c in table.columns}), AS_OF, "m"
    ) == ([], [])


# --- partitions ---------------------------------------------------------------------------------------


def test_murmur2_is_kafkas():
    rng = random.Random(3)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(3000)]
    keys += [b"", b"\x00", b"\xff" * 4, b"\xff" * 7, b"7590-VHVEG", "ü".encode()]
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]
    assert murmur2_many([]).tolist() == []


class _Cluster:
    """The part of kafka-python's ClusterMetadata the DefaultPartitioner reads."""

    def __init__(self, partitions):
        self.partitions = set(partitions)

    def topics(self):
        return {"t"}

    def partitions_for_topic(self, topic):
        return self.partitions

    def available_partitions_for_topic(self, topic):
        return self.partitions


@pytest.mark.parametrize("partitions", [[0], [0, 1, 2, 3], list(range(7)), [5, 2, 9], list(range(64))])
def test_key_partitions_are_the_default_partitioners(partitions):
    rng = random.Random(len(partitions))
    keys = [id_.encode() for id_ in ids(2000, rng)] + [b"", b"x", "ü".encode()]
    cluster = _Cluster(partitions)
    expected = [DefaultPartitioner().partition("t", k, k, None, None, cluster) for k in keys]
    assert key_partitions(keys, cluster.partitions) == expected
    assert np.unique(key_partitions(keys, partitions)).size <= len(partitions)
