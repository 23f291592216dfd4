"""One rule for every value: every door gives the contract's verdict, value and reason (no I/O
but temporary CSV files).

Hypothesis draws values for every field of the registry: valid ones, values at and just past
every bound, and hostile ones (Unicode digits and letters, whitespace and control characters at
either end, zero-width and combining characters, lone surrogates, overlong strings, NaN and
infinities, -0, exponents, integers past 2**63, dates and times at and past the edges, with and
without zones). Each value goes through every door that can carry it:

- ``event``: :func:`streamflow.events.decode`, the consumer's event-by-event path;
- ``event batch``: :func:`streamflow.event_batch.decode_table_batch`, the column-wise path (a
  value it refuses must send the batch event by event, with the same reason);
- ``push``: :func:`streamflow.push_validation.validate_frame` of an object frame (what ``feast
  serve``'s /push makes of JSON, and a user's ``store.push``), and of a typed frame where the
  value fits the column's dtype;
- ``csv``: :func:`streamflow.batch.validate.check_file` of a file holding the value's text;
- ``api`` and ``cli`` for the user id: the API's validator (path and body) and its fast path,
  and ``streamflow lookup``'s check.

Every door must agree with :func:`streamflow.contract.check`: the same verdict, the same
normalized value, the same field and reason. The profile ``contract-long`` (HYPOTHESIS_PROFILE=
contract-long) runs many more examples; ``make test`` runs the derandomized default.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import namedtuple
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from api import fast_path, models
from streamflow import contract, event_batch, events, online_features, schema
from streamflow.batch.validate import check_file
from streamflow.push_validation import PushValidationError, push_columns, validate_frame
from streamflow.topics import topic_of

settings.register_profile(
    "contract",
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "contract-long",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "contract")
if PROFILE not in ("contract", "contract-long"):
    PROFILE = "contract"

UTC = timezone.utc
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
AS_OF = "2024-01-31T00:00:00+00:00"
USER = "7590-VHVEG"
Record = namedtuple("Record", "topic key value timestamp offset")
Accepted = namedtuple("Accepted", "value")
Refused = namedtuple("Refused", "field rule")


# --- the fields and their values -------------------------------------------------------------------

FIELDS: list[tuple[schema.Table, schema.Column]] = [
    (schema.TABLES_BY_NAME["users"], schema.KEY_COLUMN),
    (schema.TABLES_BY_NAME["users"], schema.EVENT_TIME_COLUMN),
    (schema.TABLES_BY_NAME["users"], schema.SNAPSHOT_COLUMN),
    *((t, c) for t in schema.TABLES for c in t.columns),
]


def field_id(field) -> str:
    table, column = field
    return f"{table.name}.{column.name}"


def valid_value(column: schema.Column):
    """A JSON value that keeps the column's contract."""
    kind = column.kind
    if column is schema.KEY_COLUMN:
        return USER
    if column is schema.SNAPSHOT_COLUMN:
        return "month_000"
    if kind == "timestamp":
        return AS_OF
    if kind == "date":
        return "2020-02-29"
    if kind == "category":
        return column.choices[0]
    if kind == "boolean":
        return True
    if kind == "integer":
        return int(column.min or 0)
    if kind == "float":
        return float(column.min or 0)
    raise AssertionError(kind)


HOSTILE_EDGES = [" ", "\n", "\r\n", "\t", "\x00", "\x0b", "\u200b", "\u0301", "\u00a0", "\ufeff", "\u2028"]
UNICODE_DIGITS = "٠١٢٣٤٥٦٧٨٩０１２３４５６７８９"
UNICODE_LETTERS = "ÀÉÎÕÜßАВЕКМНОРСТХ"  # Latin-1 and Cyrillic capitals that look like A..Z
SURROGATES = ["\ud800", "\udfff"]


def _mutations(text: str) -> st.SearchStrategy:
    """A valid text made hostile: a character added at either end, one replaced, or stretched."""
    if not text:
        return st.just(text)
    edge = st.sampled_from(HOSTILE_EDGES + SURROGATES)
    index = st.integers(0, len(text) - 1)
    lookalike = st.sampled_from(list(UNICODE_DIGITS + UNICODE_LETTERS) + ["-", "_", ".", "z"])
    return st.one_of(
        st.tuples(edge).map(lambda e: text + e[0]),
        st.tuples(edge).map(lambda e: e[0] + text),
        st.tuples(index, lookalike).map(lambda t: text[: t[0]] + t[1] + text[t[0] + 1 :]),
        st.tuples(index, edge).map(lambda t: text[: t[0]] + t[1] + text[t[0] :]),
        st.just(text * 8),
        st.just(text.lower()),
        st.just(text.upper()),
    )


def _days_around(day: date) -> list[str]:
    out = []
    for delta in (-1, 0, 1):
        try:
            out.append((day + timedelta(days=delta)).isoformat())
        except OverflowError:
            pass
    return out


def text_values(column: schema.Column) -> st.SearchStrategy:
    kind = column.kind
    if kind == "id":
        valid = st.just(valid_value(column))
        if column is schema.KEY_COLUMN:
            valid = st.from_regex(rf"\A{contract.USER_ID.pattern}\Z", fullmatch=True)
        else:
            valid = st.from_regex(rf"\A{contract.SNAPSHOT_ID.pattern}\Z", fullmatch=True)
        return st.one_of(valid, valid.flatmap(_mutations), st.just("x" * 65))
    if kind == "category":
        choices = st.sampled_from(column.choices)
        return st.one_of(choices, choices.flatmap(_mutations), st.just(""))
    if kind == "date":
        lo, hi = contract.DATE_RANGE
        edges = [
            *_days_around(lo),
            *_days_around(hi),
            "2023-02-29",
            "2024-02-29",
            "2024-13-01",
            "10000-01-01",
        ]
        days = st.dates(date(1, 1, 1), date(9999, 12, 31)).map(date.isoformat)
        return st.one_of(
            st.sampled_from(edges),
            days,
            days.flatmap(_mutations),
            st.just("2024-01-31T00:00:00Z"),
            st.just("2024-1-31"),
            st.just("20240131"),
        )
    if kind == "timestamp":
        early = contract.EARLIEST_EVENT_TIME
        late = NOW + contract.FUTURE_TOLERANCE
        micro = timedelta(microseconds=1)
        edges = [
            t.isoformat()
            for t in (
                early,
                early - micro,
                late,
                late + micro,
                early.astimezone(timezone(timedelta(hours=-5))),
            )
        ]
        edges += [
            "2024-01-31T00:00:00Z",
            "2024-01-31T00:00:00",
            "2024-01-31 00:00:00Z",
            "2024-01-31T00:00:00z",
            "2024-01-31T00:00:00.1234567Z",
            "2024-01-31T24:00:00Z",
            "2024-01-31T00:00:00+24:00",
            "9999-12-31T23:59:59-05:00",
            "2024-01-31",
        ]
        times = st.datetimes(datetime(1990, 1, 1), datetime(2030, 1, 1), timezones=st.just(UTC)).map(
            datetime.isoformat
        )
        return st.one_of(st.sampled_from(edges), times, times.flatmap(_mutations))
    raise AssertionError(kind)


def number_values(column: schema.Column) -> st.SearchStrategy:
    lo, hi = column.min, column.max
    kind = column.kind
    if kind == "boolean":
        return st.one_of(
            st.booleans(),
            st.sampled_from([0, 1, "true", "True", "false", 1.0]),
        )
    if kind == "integer":
        edges = [int(lo) - 1, int(lo), int(hi), int(hi) + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, -0]
        return st.one_of(
            st.sampled_from(edges),
            st.integers(int(lo), int(hi)),
            st.integers(),
            st.sampled_from([1.0, 0.5, float(hi), 1e3, True, False, "1", " 1", "1\n", "١", "1e3", "0x10"]),
        )
    if kind == "float":
        tiny = 5e-324
        edges = [lo, lo - tiny, -tiny, -0.0, hi, hi + hi * 1e-15, math.nextafter(hi, math.inf), 1e308]
        edges += [math.inf, -math.inf, math.nan, 2**63, int(hi), int(hi) + 1]
        return st.one_of(
            st.sampled_from(edges),
            st.floats(lo, hi),
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([True, "1.5", "NaN", "inf", "1e3", " 2.5"]),
        )
    raise AssertionError(kind)


def values_for(column: schema.Column) -> st.SearchStrategy:
    base = (
        text_values(column)
        if column.kind in ("id", "category", "date", "timestamp")
        else number_values(column)
    )
    return st.one_of(base, st.just(None), st.sampled_from([[], {}, 3.5, "x"]))


# --- the doors ------------------------------------------------------------------------------------


def reference(column: schema.Column, value):
    try:
        return Accepted(plain(contract.check(column, value, NOW)))
    except contract.Violation as exc:
        return Refused(exc.field, exc.reason)


def plain(value):
    """A normalized value as plain Python (pandas' and NumPy's scalars, NA, NaT unwrapped)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_carries(value) -> bool:
    """Whether JSON (orjson) carries the value as it is: not NaN or an infinity (null in JSON), no
    lone surrogate (not UTF-8), no integer past 64 bits."""
    try:
        return orjson.loads(orjson.dumps(value)) == value
    except (orjson.JSONEncodeError, TypeError):
        return False


def event_payload(table: schema.Table, column: schema.Column, value) -> tuple[bytes, bytes]:
    payload = {schema.KEY: USER}
    for col in table.columns:
        payload[col.name] = valid_value(col)
    payload[schema.EVENT_TIME] = AS_OF
    payload[schema.EVENT_SNAPSHOT] = "month_000"
    payload[column.name] = value
    key = value.encode() if column is schema.KEY_COLUMN and isinstance(value, str) else USER.encode()
    return key, orjson.dumps(payload)


def event_door(table, column, value):
    key, data = event_payload(table, column, value)
    try:
        event = events.decode(topic_of(table), key, data, now=NOW, table=table)
    except events.InvalidEvent as exc:
        return Refused(exc.field, exc.rule)
    if column is schema.KEY_COLUMN:
        return Accepted(event.user_id)
    if column is schema.EVENT_TIME_COLUMN:
        return Accepted(event.event_time)
    if column is schema.SNAPSHOT_COLUMN:
        return Accepted(event.snapshot)
    return Accepted(plain(event.values[column.name]))


def frame_value(column: schema.Column, frame: pd.DataFrame, row: int = 0):
    name = schema.SNAPSHOT_TIME if column is schema.EVENT_TIME_COLUMN else column.name
    return plain(frame[name].iloc[row])


def batch_door(table, column, value):
    good_key, good = event_payload(table, schema.KEY_COLUMN, "0000-AAAAA")
    key, data = event_payload(table, column, value)
    recs = [Record(topic_of(table), good_key, good, 0, 0), Record(topic_of(table), key, data, 0, 1)]
    batch = event_batch.decode_table_batch(table, recs, NOW)
    if batch.bad:
        assert not batch.columnar, "the column-wise path refused nothing itself: it only accepts"
        [(_, exc)] = batch.bad
        return Refused(exc.field, exc.rule)
    assert batch.columnar, f"the column-wise path refused what decode accepts: {value!r}"
    return Accepted(frame_value(column, batch.frame.reset_index(drop=True), row=len(batch.frame) - 1))


def push_frame(table, column, cells) -> pd.DataFrame:
    data = {
        schema.KEY: pd.Series([USER], dtype=object),
        schema.SNAPSHOT_TIME: pd.Series([AS_OF], dtype=object),
        **{c.name: pd.Series([valid_value(c)], dtype=object) for c in table.columns},
        schema.EVENT_SNAPSHOT: pd.Series(["month_000"], dtype=object),
    }
    name = schema.SNAPSHOT_TIME if column is schema.EVENT_TIME_COLUMN else column.name
    data[name] = cells
    return pd.DataFrame(data)[push_columns(table)]


def push_door(table, column, cells):
    try:
        frame = validate_frame(table, push_frame(table, column, cells), now=NOW)
    except PushValidationError as exc:
        field = schema.EVENT_TIME if exc.field == schema.SNAPSHOT_TIME else exc.field
        return Refused(field, exc.rule)
    return Accepted(frame_value(column, frame))


def typed_cells(column: schema.Column, value) -> pd.Series | None:
    """The value in a column of the registry's dtype, where that dtype holds it as it is."""
    kind = column.kind
    if kind in ("id", "category") and isinstance(value, str):
        return pd.Series([value], dtype="string")
    if kind == "integer" and type(value) is int and -(2**63) <= value < 2**63:
        return pd.Series([value], dtype="Int64")
    if kind == "float" and type(value) is float and not math.isnan(value):
        return pd.Series([value], dtype="Float64")
    if kind == "boolean" and type(value) is bool:
        return pd.Series([value], dtype="boolean")
    return None


CSV_TEXT_KINDS = ("id", "category", "date")


def csv_text(column: schema.Column, value) -> str | None:
    """The CSV field for a value, or None where CSV cannot carry it as such: a CSV field is text
    (empty is null), and a number or boolean column reads its literal."""
    if value is None:
        return ""
    if isinstance(value, str):
        if value == "" or any("\ud800" <= ch <= "\udfff" for ch in value):
            return None  # empty is null in CSV; a lone surrogate is no UTF-8
        return value if column.kind in CSV_TEXT_KINDS else None  # a number's text: see the test below
    if column.kind in CSV_TEXT_KINDS:
        return None
    if isinstance(value, bool):
        return contract.BOOLEAN_TEXT[0] if value else contract.BOOLEAN_TEXT[1]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


def csv_door(table, column, text: str, tmp: Path):
    row = {c.name: valid_value(c) for c in table.columns}
    row = {k: (contract.BOOLEAN_TEXT[0] if v is True else v) for k, v in row.items()}
    row[schema.KEY] = USER
    row[column.name] = text
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.header)
    writer.writerow([row[name] for name in table.header])
    path = tmp / table.file
    path.write_text(out.getvalue(), encoding="utf-8")
    checked = check_file(path, table)
    if checked.problems:
        problems = [p for p in checked.problems if p.column == column.name]
        assert problems == checked.problems, f"problems beyond the field: {checked.problems}"
        [problem] = problems
        assert problem.line == 2
        return Refused(problem.column, problem.what)
    return Accepted(plain(checked.frame[column.name].iloc[0]))


USER_ID = TypeAdapter(models.UserId)


def api_door(value):
    try:
        out = USER_ID.validate_python(value)
    except ValidationError as exc:
        [err] = exc.errors()
        assert err["type"] == models.CONTRACT_ERROR
        return Refused(err["ctx"]["field"], err["ctx"]["rule"])
    return Accepted(out)


# --- the differential test -----------------------------------------------------------------------


def compare_doors(table: schema.Table, column: schema.Column, value, tmp_path: Path) -> None:
    """Every door that can carry the value gives the contract's verdict on it."""
    expected = reference(column, value)
    verdicts = {}
    if json_carries(value):
        verdicts["event"] = event_door(table, column, value)
        verdicts["event batch"] = batch_door(table, column, value)
    if not isinstance(value, (list, dict)):
        verdicts["push"] = push_door(table, column, pd.Series([value], dtype=object))
        typed = typed_cells(column, value)
        if typed is not None:
            verdicts["push, typed"] = push_door(table, column, typed)
    text = csv_text(column, value) if column is not schema.EVENT_TIME_COLUMN else None
    if text is not None and column is not schema.SNAPSHOT_COLUMN:
        verdicts["csv"] = csv_door(table, column, text, tmp_path)
    if column is schema.KEY_COLUMN and isinstance(value, str):
        verdicts["api"] = api_door(value)
        verdicts["api fast path"] = Accepted(value) if fast_path._valid_id(value) else expected
        try:
            verdicts["cli"] = Accepted(online_features.check_user_ids([value])[0])
        except contract.Violation as exc:
            verdicts["cli"] = Refused(exc.field, exc.reason)
    assert verdicts, "no door carried the value"
    for door, verdict in verdicts.items():
        assert verdict == expected, f"{door} on {value!r}: {verdict} (the contract: {expected})"


@pytest.mark.parametrize("field", FIELDS, ids=field_id)
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_every_door_gives_the_contract_verdict(field, data, tmp_path):
    table, column = field
    compare_doors(table, column, data.draw(values_for(column), label="value"), tmp_path)


def corpus(column: schema.Column) -> list:
    """Every hostile change of the column's valid value, at either end and in the middle."""
    valid = valid_value(column)
    out = [valid, None, "", [], {}, 3.5, 2**63, -(2**63) - 1, math.nan, math.inf, -math.inf, -0.0, True, 0]
    text = valid if isinstance(valid, str) else repr(valid)
    for ch in HOSTILE_EDGES + SURROGATES + list("٣３Ａ"):
        out += [text + ch, ch + text, text[:1] + ch + text[1:], text[:-1] + ch]
    return out


@pytest.mark.parametrize("field", FIELDS, ids=field_id)
def test_every_door_gives_the_contract_verdict_on_every_hostile_change(field, tmp_path):
    table, column = field
    for value in corpus(column):
        compare_doors(table, column, value, tmp_path)


# --- the rules the issue names, door by door -----------------------------------------------------

HOSTILE = [
    ("users", schema.KEY, USER + "\n"),
    ("users", schema.KEY, " " + USER),
    ("users", schema.KEY, "759٠-VHVEG"),
    ("users", "signup_date", "2020-01-01\n"),
    ("users", "signup_date", " 2020-01-01"),
    ("users", "signup_date", "2020-01-0١"),
    ("users", "user_gender", "Female\n"),
    ("users", "user_gender", " Male"),
    ("subscriptions", "contract_type", "One year\n"),
]


@pytest.mark.parametrize("table_name, name, value", HOSTILE)
def test_a_trailing_newline_leading_space_or_unicode_digit_is_refused_at_every_door(
    table_name, name, value, tmp_path
):
    table = schema.table(table_name)
    column = schema.KEY_COLUMN if name == schema.KEY else table.column(name)
    rule = contract.expectation(column)
    key, data = event_payload(table, column, value)
    with pytest.raises(events.InvalidEvent) as exc:
        events.decode(topic_of(table), key, data, now=NOW, table=table)
    assert (exc.value.field, exc.value.rule) == (name, rule)
    assert batch_door(table, column, value) == Refused(name, rule)
    assert push_door(table, column, pd.Series([value], dtype=object)) == Refused(name, rule)
    assert push_door(table, column, pd.Series([value], dtype="string")) == Refused(name, rule)
    assert csv_door(table, column, value, tmp_path) == Refused(name, rule)
    if column is schema.KEY_COLUMN:
        assert api_door(value) == Refused(name, rule)
        assert not fast_path._valid_id(value)
        with pytest.raises(contract.Violation, match="expected a user id"):
            online_features.check_user_ids([USER, value])


def test_the_reason_names_the_field_and_what_was_expected():
    column = schema.table("payments_agg_90d").column("failed_payments_90d")
    with pytest.raises(contract.Violation) as exc:
        contract.check(column, 5000)
    assert str(exc.value) == "field failed_payments_90d: expected an integer from 0 to 1000 (got 5000)"
    with pytest.raises(contract.Violation) as exc:
        contract.check(schema.KEY_COLUMN, USER + "\n")
    assert exc.value.reason == "expected a user id like 7590-VHVEG (4 digits, '-', 5 capital letters)"
    with pytest.raises(contract.Violation) as exc:
        contract.check(column, None)
    assert exc.value.reason == contract.NULL


def test_every_column_declares_a_kind_and_the_rules_of_its_kind():
    for table, column in FIELDS:
        assert column.kind in contract.KINDS, field_id((table, column))
        if column.kind in ("integer", "float"):
            assert column.min is not None and column.max is not None, field_id((table, column))
        assert reference(column, valid_value(column)) != Refused(column.name, contract.expectation(column))
    with pytest.raises(ValueError, match="unknown kind"):
        schema.Column("x", "str")
    with pytest.raises(ValueError, match="choices go with kind category"):
        schema.Column("x", "category")


@pytest.mark.parametrize(
    "text", ["1 ", " 1", "1\n", "+1", "١", "１", "1_000", "0x10", "1e3", "1.0", "1" * 19, "NaN", "True"]
)
def test_the_csv_text_of_an_integer_is_its_ascii_literal(text, tmp_path):
    table = schema.table("payments_agg_90d")
    column = table.column("failed_payments_90d")
    assert csv_door(table, column, text, tmp_path) == Refused(column.name, contract.expectation(column))


@pytest.mark.parametrize(
    "text", ["1.5 ", "\t1.5", "1.5\n", "١.5", "nan", "inf", "-Infinity", "1e400", "1e-400", "0x1p3"]
)
def test_the_csv_text_of_a_float_is_a_finite_ascii_literal(text, tmp_path):
    table = schema.table("subscriptions")
    column = table.column("monthly_fee")
    assert csv_door(table, column, text, tmp_path) == Refused(column.name, contract.expectation(column))


@pytest.mark.parametrize("text", ["true", "TRUE", "1", " True", "True\n", "Yes"])
def test_the_csv_text_of_a_boolean_is_true_or_false_capitalized(text, tmp_path):
    table = schema.table("users")
    column = table.column("has_family")
    assert csv_door(table, column, text, tmp_path) == Refused(column.name, contract.expectation(column))
