"""Decode the events of one table column by column: the consumer's hot path.

:func:`streamflow.events.decode` checks one event at a time in Python, which cost more than the
Kafka client's own reading of the records. :func:`decode_table_batch` checks a whole batch of one
table's records at once: each record is parsed by orjson and its field names compared with the
contract (both in C), then every column is type-checked as a whole (the set of Python types it
holds) and checked by the contract's column-wise checks (:func:`streamflow.contract.check_texts`,
:func:`~streamflow.contract.check_numbers`), and the push frame is built from the Arrow arrays.

The batch path only ever *accepts*: both it and ``decode`` derive every rule from the registry's
declaration through :mod:`streamflow.contract`. When any record of the batch fails any of them,
the whole batch goes through ``decode`` event by event instead, which gives each bad event its
reason for the dead-letter topic and keeps the good ones around it. So both paths give the same
verdicts and the same frame (tests/test_event_batch.py compares them on valid and invalid batches,
tests/test_contract.py on generated values).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from streamflow import contract, events, schema
from streamflow.push_validation import push_columns

_ARROW_TYPES = {
    "id": pa.string(),
    "category": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.string(),
    "timestamp": pa.string(),
}
"""How a JSON value of each kind arrives, as Arrow (dates and times as their text)."""
_PYTHON_TYPES: dict[str, set[type]] = {
    "id": {str},
    "category": {str},
    "integer": {int},
    "float": {float, int},
    "boolean": {bool},
    "date": {str},
    "timestamp": {str},
}
"""The JSON types contract.check accepts for a present value of each kind."""
_PANDAS_TYPES = {
    pa.int64(): pd.Int64Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.string(): pd.StringDtype(),
}
_NONE = type(None)


class _Fallback(Exception):
    """Some record of the batch does not pass the batch checks: decode it event by event."""


@dataclass
class TableBatch:
    """The valid events of one table in a polled batch, and the invalid ones with their reasons."""

    frame: pd.DataFrame
    """The push frame (``push_columns`` order, registry dtypes; of several events of one user and
    time, the last one). Its index is the position in ``good`` of each row's record (the consumer
    dead-letters the record of a row the database refuses)."""
    good: list
    """The records of the valid events, in order."""
    bad: list[tuple[object, events.InvalidEvent]]
    """The invalid records and why."""
    columnar: bool
    """Whether the batch path decided (False: event by event)."""


def decode_table_batch(table: schema.Table, records: list, now: datetime) -> TableBatch:
    """Decode the records of one table (in order, from one or more partitions of its topic)."""
    try:
        return TableBatch(_columnar(table, records, now), records, [], True)
    except _Fallback:
        return _one_by_one(table, records, now)


def _one_by_one(table: schema.Table, records: list, now: datetime) -> TableBatch:
    good, kept, bad = [], [], []
    for rec in records:
        try:
            good.append(events.decode(rec.topic, rec.key, rec.value, now=now, table=table))
            kept.append(rec)
        except events.InvalidEvent as exc:
            bad.append((rec, exc))
    frame = events_frame(table, good) if good else pd.DataFrame(columns=push_columns(table))
    return TableBatch(frame, kept, bad, False)


_NAT = np.iinfo(np.int64).min
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def utc_times(values: list[datetime | None]) -> pd.Series:
    """UTC datetimes (None = NaT) as a datetime64[ns, UTC] column, converting each distinct value once.

    The events of a snapshot share their event time and dates repeat, so this is a lookup per
    event instead of pandas' per-object datetime inference.
    """
    nanos: dict[datetime | None, int] = {None: _NAT}
    for value in values:
        if value is not None and value not in nanos:  # None is in nanos already
            nanos[value] = (value - _EPOCH) // _MICROSECOND * 1_000
    stamps = np.fromiter((nanos[v] for v in values), dtype=np.int64, count=len(values))
    return pd.Series(pd.to_datetime(stamps.view("datetime64[ns]"), utc=True))


def events_frame(table: schema.Table, batch: list[events.Event]) -> pd.DataFrame:
    """A push frame for one table; of several events of one user and time, the last one.

    Every column is built in its registry dtype straight from the decoded (already type-checked)
    values.
    """
    columns = {
        schema.KEY: pd.Series(pd.array([e.user_id for e in batch], dtype="string")),
        schema.SNAPSHOT_TIME: utc_times([e.event_time for e in batch]),
    }
    for col in table.columns:
        values = [e.values[col.name] for e in batch]
        columns[col.name] = (
            utc_times(values) if col.kind == "date" else pd.Series(pd.array(values, dtype=col.pandas_dtype))
        )
    columns[schema.EVENT_SNAPSHOT] = pd.Series(pd.array([e.snapshot for e in batch], dtype="string"))
    frame = pd.DataFrame(columns, columns=push_columns(table))
    return frame.drop_duplicates([schema.KEY, schema.SNAPSHOT_TIME], keep="last")


def _payloads(table: schema.Table, records: list) -> list[dict]:
    fields = frozenset((schema.KEY, *table.feature_names, schema.EVENT_TIME, schema.EVENT_SNAPSHOT))
    try:
        payloads = [orjson.loads(rec.value) for rec in records]
    except (orjson.JSONDecodeError, TypeError):  # not JSON, or no value (tombstone)
        raise _Fallback from None
    if any(len(rec.value) > events.MAX_EVENT_BYTES for rec in records):
        raise _Fallback
    try:
        if not all(p.keys() == fields for p in payloads):
            raise _Fallback
    except AttributeError:  # a JSON value that is no object
        raise _Fallback from None
    return payloads


def _types(values: list, allowed: set, nullable: bool) -> None:
    found = set(map(type, values))
    if not found <= (allowed | {_NONE} if nullable else allowed):
        raise _Fallback


def _array(values: list, kind: str) -> pa.Array:
    try:
        return pa.array(values, type=_ARROW_TYPES[kind])
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        raise _Fallback from None


def _column(col: schema.Column, values: list) -> pa.Array:
    """One column, checked by the contract as a whole; as Arrow, in the registry type (dates as
    UTC timestamps)."""
    _types(values, _PYTHON_TYPES[col.kind], col.nullable)
    arr = _array(values, col.kind)
    present = arr.drop_null()
    if col.kind in ("integer", "float"):
        if not contract.check_numbers(col, present.to_numpy(zero_copy_only=False)).all():
            raise _Fallback
    elif col.kind != "boolean" and not contract.check_texts(col, present)[0].all():
        raise _Fallback
    if col.kind == "date":
        arr = contract.date_timestamps(arr)
    return arr


def _keys(records: list, ids: list) -> pa.Array:
    arr = _column(schema.KEY_COLUMN, ids)
    if not all(rec.key is not None and rec.key == user_id.encode() for rec, user_id in zip(records, ids)):
        raise _Fallback
    return arr


def _event_times(values: list, now: datetime) -> pa.Array:
    """Event times as UTC nanoseconds, each distinct value checked once (a snapshot shares one)."""
    _types(values, _PYTHON_TYPES["timestamp"], nullable=False)
    nanos = {}
    for value in set(values):
        try:
            nanos[value] = pd.Timestamp(contract.check(schema.EVENT_TIME_COLUMN, value, now)).value
        except (contract.Violation, OverflowError, ValueError):
            raise _Fallback from None
    stamps = np.fromiter(map(nanos.__getitem__, values), dtype=np.int64, count=len(values))
    return pa.array(stamps.view("datetime64[ns]"), type=pa.timestamp("ns")).cast(pa.timestamp("ns", tz="UTC"))


def _columnar(table: schema.Table, records: list, now: datetime) -> pd.DataFrame:
    payloads = _payloads(table, records)
    arrays = {
        schema.KEY: _keys(records, [p[schema.KEY] for p in payloads]),
        schema.SNAPSHOT_TIME: _event_times([p[schema.EVENT_TIME] for p in payloads], now),
    }
    for col in table.columns:
        arrays[col.name] = _column(col, [p[col.name] for p in payloads])
    arrays[schema.EVENT_SNAPSHOT] = _column(
        schema.SNAPSHOT_COLUMN, [p[schema.EVENT_SNAPSHOT] for p in payloads]
    )
    frame = pa.table([arrays[name] for name in push_columns(table)], names=push_columns(table)).to_pandas(
        types_mapper=_PANDAS_TYPES.get
    )
    return frame.drop_duplicates([schema.KEY, schema.SNAPSHOT_TIME], keep="last")


__all__ = ["TableBatch", "decode_table_batch"]
