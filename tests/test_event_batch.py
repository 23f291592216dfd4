"""The column-wise decode gives exactly what event-by-event decode gives (no I/O).

For valid batches of every table and for batches with one bad event of many kinds, the frame, the
records kept and the dead-letter reasons of ``event_batch.decode_table_batch`` equal those of
``events.decode`` applied to each record and ``events_frame`` (the reference path).
"""

from __future__ import annotations

import json
from collections import namedtuple
from datetime import date, datetime, timezone

import orjson
import pandas as pd
import pytest

from streamflow import event_batch, events, schema
from streamflow.event_batch import events_frame
from streamflow.topics import topic_of

Record = namedtuple("Record", "topic key value timestamp offset")
NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)
AS_OF = date(2024, 1, 31)


def valid_row(table: schema.Table, i: int) -> dict:
    row = {schema.KEY: f"{i:04d}-ABCDE"}
    for col in table.columns:
        if col.kind == "integer":
            row[col.name] = int(col.min or 0) + i % 3
        elif col.kind == "float":
            row[col.name] = float(col.min or 0) + 0.25 * (i % 5)
        elif col.kind == "boolean":
            row[col.name] = i % 2 == 0
        elif col.kind == "category":
            row[col.name] = col.choices[i % len(col.choices)] if col.choices else f"text {i}"
        else:
            row[col.name] = date(2020, 1 + i % 12, 1 + i % 28)
        if col.nullable and i % 7 == 3:
            row[col.name] = None
    return row


def records(table: schema.Table, n: int = 40) -> list[Record]:
    out = []
    for i in range(n):
        row = valid_row(table, i % 30)  # users 0..29 repeat: duplicates keep the last
        value = events.encode_value(table, row, AS_OF, "month_000")
        out.append(Record(topic_of(table), row[schema.KEY].encode(), value, 1_700_000_000_000 + i, i))
    return out


def reference(table: schema.Table, recs: list[Record]):
    good, kept, bad = [], [], []
    for rec in recs:
        try:
            good.append(events.decode(rec.topic, rec.key, rec.value, now=NOW, table=table))
            kept.append(rec)
        except events.InvalidEvent as exc:
            bad.append((rec, exc.reason))
    return (events_frame(table, good) if good else None), kept, bad


def check_same(table: schema.Table, recs: list[Record], columnar: bool) -> None:
    got = event_batch.decode_table_batch(table, recs, NOW)
    frame, kept, bad = reference(table, recs)
    assert got.columnar is columnar
    assert got.good == kept
    assert [(r, e.reason) for r, e in got.bad] == bad
    if frame is not None:
        pd.testing.assert_frame_equal(got.frame, frame)
        for col in table.columns:
            assert str(got.frame[col.name].dtype) == col.pandas_dtype, col.name


@pytest.mark.parametrize("table", schema.TABLES, ids=lambda t: t.name)
def test_valid_batches_take_the_columnar_path_and_equal_the_reference(table):
    check_same(table, records(table), columnar=True)


def with_payload(rec: Record, change) -> Record:
    payload = orjson.loads(rec.value)
    change(payload)
    return rec._replace(value=json.dumps(payload, separators=(",", ":")).encode())  # any int size


def _set(field, value):
    return lambda p: p.__setitem__(field, value)


def bad_variants(table: schema.Table):
    """(name, function of a valid record returning a changed one) for this table."""
    yield "tombstone", lambda r: r._replace(value=None)
    yield "not json", lambda r: r._replace(value=b"{not json")
    yield "json array", lambda r: r._replace(value=b"[1, 2]")
    yield "no key", lambda r: r._replace(key=None)
    yield "other key", lambda r: r._replace(key=b"9999-ZZZZZ")
    yield "bad user id", lambda r: with_payload(r, _set(schema.KEY, "12-ab"))
    yield "user id with newline", lambda r: with_payload(r, _set(schema.KEY, "0001-ABCDE\n"))
    yield "missing field", lambda r: with_payload(r, lambda p: p.pop(table.columns[0].name))
    yield "extra field", lambda r: with_payload(r, _set("surprise", 1))
    yield "event time without zone", lambda r: with_payload(r, _set(schema.EVENT_TIME, "2024-01-31T00:00:00"))
    yield "event time in the future", lambda r: with_payload(r, _set(schema.EVENT_TIME, "2099-01-01T00:00Z"))
    yield "event time a number", lambda r: with_payload(r, _set(schema.EVENT_TIME, 5))
    yield "bad snapshot", lambda r: with_payload(r, _set(schema.EVENT_SNAPSHOT, "a b"))
    for col in table.columns:
        name = col.name
        if not col.nullable:
            yield f"{name} null", lambda r, n=name: with_payload(r, _set(n, None))
        if col.kind == "integer":
            yield f"{name} float", lambda r, n=name: with_payload(r, _set(n, 1.0))
            yield f"{name} bool", lambda r, n=name: with_payload(r, _set(n, True))
            yield f"{name} huge", lambda r, n=name: with_payload(r, _set(n, 10**30))
            if col.max is not None:
                yield f"{name} above max", lambda r, n=name, m=col.max: with_payload(r, _set(n, int(m) + 1))
            if col.min is not None:
                yield f"{name} below min", lambda r, n=name, m=col.min: with_payload(r, _set(n, int(m) - 1))
        elif col.kind == "float":
            yield f"{name} string", lambda r, n=name: with_payload(r, _set(n, "1.5"))
            yield f"{name} bool", lambda r, n=name: with_payload(r, _set(n, False))
            if col.max is not None:
                yield f"{name} above max", lambda r, n=name, m=col.max: with_payload(r, _set(n, m + 0.5))
        elif col.kind == "boolean":
            yield f"{name} int", lambda r, n=name: with_payload(r, _set(n, 1))
        elif col.kind == "category":
            yield f"{name} number", lambda r, n=name: with_payload(r, _set(n, 7))
            if col.choices:
                yield f"{name} not a choice", lambda r, n=name: with_payload(r, _set(n, "Other"))
        elif col.kind == "date":
            yield f"{name} not a day", lambda r, n=name: with_payload(r, _set(n, "2024-02-30"))
            yield f"{name} format", lambda r, n=name: with_payload(r, _set(n, "31/01/2024"))
            yield f"{name} arabic digits", lambda r, n=name: with_payload(r, _set(n, "٢٠٢٤-٠١-٣١"))
            yield f"{name} out of range", lambda r, n=name: with_payload(r, _set(n, "1600-01-01"))


CASES = [(t, name, change) for t in schema.TABLES for name, change in bad_variants(t)]


@pytest.mark.parametrize("table,name,change", CASES, ids=[f"{t.name}:{n}" for t, n, _ in CASES])
def test_a_bad_event_gives_the_reference_verdicts(table, name, change):
    recs = records(table, 12)
    recs[5] = change(recs[5])
    check_same(table, recs, columnar=False)


def test_an_int_given_for_a_float_is_valid_on_both_paths():
    table = schema.table("usage_agg_30d")
    recs = records(table, 6)
    recs[2] = with_payload(recs[2], _set("watch_hours_30d", 3))
    check_same(table, recs, columnar=True)
    assert event_batch.decode_table_batch(table, recs, NOW).frame["watch_hours_30d"].iloc[2] == 3.0


@pytest.mark.parametrize("bad", [False, True], ids=["columnar", "event by event"])
def test_the_frame_index_is_the_position_of_each_rows_record(bad):
    """The consumer dead-letters the record of a row the database refuses: frame.index[i] is
    the position in ``good`` of row i's record (the last of its user and time), on both paths."""
    table = schema.table("usage_agg_30d")
    recs = records(table, 40)  # users 0..29, then 0..9 again: the later ones are kept
    if bad:
        recs[5] = recs[5]._replace(value=b"{not json")
    got = event_batch.decode_table_batch(table, recs, NOW)
    assert got.columnar is not bad
    assert len(got.frame) == 30 and len(got.good) == 40 - bad  # user 5's bad event has a good later one
    for i, label in enumerate(got.frame.index):
        rec = got.good[label]
        assert rec.key.decode() == got.frame[schema.KEY].iloc[i]
        later = [r for r in got.good[label + 1 :] if r.key == rec.key]
        assert not later  # the row's record is the last of its user (one time per batch here)
