"""The event contract between producer and consumer, built on the table registry.

One Kafka record per snapshot row: key = user_id (UTF-8), value = a JSON object with the row's
columns plus ``event_timestamp`` (the snapshot's as_of, ISO 8601, UTC) and ``snapshot`` (its id);
headers ``table`` and ``event_timestamp``. Event time travels in the payload and a header, never
as the record timestamp (historical record timestamps make time-based retention delete segments
at once, KAFKA-7910).

:func:`decode` is the consumer's strict validation: it either returns a typed row or raises
:class:`InvalidEvent` with a reason fit for the dead-letter topic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import numpy as np
import orjson
import pandas as pd

from streamflow import contract, schema
from streamflow.topics import table_of_topic

MAX_EVENT_BYTES = 1_000_000
"""Largest event value accepted (bytes); larger ones are dead-lettered."""


class InvalidEvent(ValueError):
    """An event that does not satisfy the contract; ``reason`` says why (for the DLQ).

    When a field breaks its contract, ``field`` names it and ``rule`` is the contract's reason
    (:attr:`streamflow.contract.Violation.reason`, the same text at every door).
    """

    def __init__(self, reason: str, field: str | None = None, rule: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.rule = rule

    @classmethod
    def of(cls, violation: contract.Violation) -> InvalidEvent:
        return cls(str(violation), violation.field, violation.reason)


@dataclass(frozen=True, slots=True)
class Event:
    table: schema.Table
    user_id: str
    event_time: datetime
    snapshot: str | None
    values: dict[str, Any]
    """Feature values, typed (bool, int, float, str, None; dates as UTC datetimes)."""


# --- producing -------------------------------------------------------------------------------


def _json_value(column: schema.Column, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if column.kind == "date":
        return value.isoformat()[:10] if hasattr(value, "isoformat") else str(value)[:10]
    if column.kind == "integer":
        return int(value)
    if column.kind == "float":
        return float(value)
    if column.kind == "boolean":
        return bool(value)
    return str(value)


def encode_value(table: schema.Table, row: dict[str, Any], as_of: date, snapshot: str) -> bytes:
    """JSON value of the event for one snapshot row (row maps column names to values)."""
    payload = {schema.KEY: row[schema.KEY]}
    for col in table.columns:
        payload[col.name] = _json_value(col, row.get(col.name))
    payload[schema.EVENT_TIME] = schema.as_of_timestamp(as_of).isoformat()
    payload[schema.EVENT_SNAPSHOT] = snapshot
    return orjson.dumps(payload)


def _json_fragments(column: schema.Column, values: Any) -> list[bytes]:
    """The JSON text of every value of one typed column (registry dtype), as encode_value writes
    it: the same orjson serialization of the same Python values, done for the whole column."""
    array = pd.array(values) if not isinstance(values, pd.api.extensions.ExtensionArray) else values
    null = np.asarray(pd.isna(array), dtype=bool)
    kind = column.kind
    if kind == "date":
        stamps = pd.DatetimeIndex(array)
        if stamps.tz is not None:
            stamps = stamps.tz_convert("UTC").tz_localize(None)
        # the UTC day, as Timestamp.isoformat()[:10] has it (4-digit years: datetime64[ns] holds 1677-2262)
        days = stamps.to_numpy(dtype="datetime64[ns]").astype("datetime64[D]").astype("S10").tolist()
        out = [b'"%b"' % d for d in days]
        for i in np.flatnonzero(null).tolist():
            out[i] = b"null"
        return out
    if kind in ("integer", "float", "boolean"):
        dtype, fill = {"integer": ("int64", 0), "float": ("float64", 0.0), "boolean": ("bool", False)}[kind]
        plain = array.to_numpy(dtype=dtype, na_value=fill).tolist()  # Python ints, floats, bools
        for i in np.flatnonzero(null).tolist():
            plain[i] = None
        # A JSON list of numbers, true, false and null has no comma but between its items; orjson
        # writes NaN and infinities as null, as encode_value does.
        return orjson.dumps(plain)[1:-1].split(b",") if plain else []
    texts: dict[Any, bytes] = {}
    out = []
    for value in array.to_numpy(dtype=object, na_value=None).tolist():
        text = texts.get(value)
        if text is None:
            text = texts[value] = b"null" if value is None else orjson.dumps(str(value))
        out.append(text)
    return out


def encode_frame(
    table: schema.Table, frame: pd.DataFrame, as_of: date, snapshot: str
) -> tuple[list[bytes], list[bytes]]:
    """Keys and JSON values of the events of many snapshot rows at once, column by column.

    ``frame`` holds the key and the table's columns in the registry's dtypes (what
    ``read_snapshot`` returns). The values are byte for byte what :func:`encode_value` gives for
    each row (tests/test_producer_encoding.py checks it): every column is serialized by orjson as a
    whole, the constant fields once, and each event is one formatting of a per-table template.
    """
    ids = frame[schema.KEY].to_numpy(dtype=object, na_value=None).tolist()
    keys = [user_id.encode() for user_id in ids]
    # When no id needs escaping in JSON (the registry's id pattern), its JSON text is the key in
    # quotes: the JSON list of all ids is then exactly the quoted keys joined by commas (any
    # escape would make it longer).
    plain_ids = orjson.dumps(ids) == b'["' + b'","'.join(keys) + b'"]' if keys else True

    def literal(*parts: Any) -> bytes:  # JSON text of names and constants, escaped for the template
        return b"".join(p if isinstance(p, bytes) else orjson.dumps(p) for p in parts).replace(b"%", b"%%")

    template = b"".join(
        [
            literal(b"{", schema.KEY, b":"),
            b'"%b"' if plain_ids else b"%b",
            *(literal(b",", col.name, b":") + b"%b" for col in table.columns),
            literal(
                b",",
                schema.EVENT_TIME,
                b":",
                schema.as_of_timestamp(as_of).isoformat(),
                b",",
                schema.EVENT_SNAPSHOT,
                b":",
                snapshot,
                b"}",
            ),
        ]
    )
    columns = [keys if plain_ids else [orjson.dumps(i) for i in ids]]
    columns += [_json_fragments(col, frame[col.name].array) for col in table.columns]
    return keys, [template % parts for parts in zip(*columns)]


def headers(table: schema.Table, as_of: date, replay: str | None = None) -> list[tuple[str, bytes]]:
    """The headers of a table's events: table, event time and (sent by a replay) the replay's id."""
    out = [
        (schema.EVENT_TABLE_HEADER, table.name.encode()),
        (schema.EVENT_TIME_HEADER, schema.as_of_timestamp(as_of).isoformat().encode()),
    ]
    if replay is not None:
        out.append((schema.REPLAY_HEADER, replay.encode()))
    return out


# --- consuming -------------------------------------------------------------------------------


class _Contract:
    """What decode checks of one table's events, prepared once."""

    __slots__ = ("fields", "field_set", "checkers")

    def __init__(self, table: schema.Table):
        self.fields = (schema.KEY, *table.feature_names, schema.EVENT_TIME, schema.EVENT_SNAPSHOT)
        self.field_set = frozenset(self.fields)
        self.checkers = tuple((c.name, contract.checker(c)) for c in table.columns)


_CONTRACTS: dict[int, tuple[schema.Table, _Contract]] = {}
_KEY = contract.checker(schema.KEY_COLUMN)
_SNAPSHOT = contract.checker(schema.SNAPSHOT_COLUMN)


def _contract(table: schema.Table) -> _Contract:
    """The table's contract, prepared once per Table object (looked up by identity: hashing a
    frozen Table hashes all its columns, which cost more than the rest of decode's lookups)."""
    known = _CONTRACTS.get(id(table))
    if known is not None and known[0] is table:
        return known[1]
    prepared = _Contract(table)
    _CONTRACTS[id(table)] = (table, prepared)  # the table is kept: its id is never reused
    return prepared


def _field(check, value: Any) -> Any:
    try:
        return check(value)
    except contract.Violation as exc:
        raise InvalidEvent.of(exc) from None


def decode(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    now: datetime | None = None,
    table: schema.Table | None = None,
) -> Event:
    """Validate one Kafka record against the contract; raise InvalidEvent with the reason.

    ``table`` is the topic's table when the caller resolved it already (once per partition).
    """
    table = table or table_of_topic(topic)
    if table is None:
        raise InvalidEvent(f"unknown table: topic {topic!r} belongs to no table of the registry")
    if value is None:
        raise InvalidEvent("empty value (tombstone)")
    if len(value) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"payload of {len(value)} bytes is over the limit of {MAX_EVENT_BYTES}")
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidEvent(f"not a JSON object but {type(payload).__name__}")
    prepared = _contract(table)
    if payload.keys() != prepared.field_set:
        missing = [f for f in prepared.fields if f not in payload]
        extra = [f for f in payload if f not in prepared.field_set]
        raise InvalidEvent(
            f"fields do not match table {table.name}: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    user_id = _field(_KEY, payload[schema.KEY])
    if key is None:
        raise InvalidEvent("record has no key (expected the user_id)")
    if key != user_id.encode():
        raise InvalidEvent(f"record key {key[:40]!r} does not match user_id {user_id}")
    now = now or datetime.now(timezone.utc)
    event_time = _field(
        lambda v: contract.check(schema.EVENT_TIME_COLUMN, v, now), payload[schema.EVENT_TIME]
    )
    snapshot = _field(_SNAPSHOT, payload[schema.EVENT_SNAPSHOT])
    try:
        values = {name: check(payload[name]) for name, check in prepared.checkers}
    except contract.Violation as exc:
        raise InvalidEvent.of(exc) from None
    return Event(table=table, user_id=user_id, event_time=event_time, snapshot=snapshot, values=values)
