"""The value contract: what a valid value of every field is, and the one check of it.

The table registry (:mod:`streamflow.schema`) declares each column as data: its kind (one of
:data:`KINDS`), nullability, bounds, allowed categories, format, maximum length and whether it is
ASCII. This module turns a declaration into checks, and every door a value comes in by uses
them, never a rule of its own:

- :func:`check` and :func:`checker`: one value as JSON carries it, or as a cell of a pandas frame
  holds it (the consumer's per-event decode, push validation of object columns, the API, the CLI);
- :func:`check_texts`: a whole column of text, as a CSV file or a string column carries it
  (the loader, the consumer's column-wise decode and push validation of string columns);
- :func:`check_numbers`: a whole numeric column, already typed (the column-wise decode, push
  validation of typed columns).

Every rule failing gives one reason, :func:`expectation` (``field <name>: expected ...``), or
:data:`NULL` for a missing value, whichever door refuses it. Matching is always full-string; every
format is ASCII (a Unicode digit, a zero-width or combining character, a space or a line break at
either end fails it). The contract's table in the docs is generated from the registry
(:func:`markdown_table`, checked by tests/test_contract_docs.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cache, lru_cache
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# --- kinds and formats -----------------------------------------------------------------------------

KINDS = ("id", "date", "timestamp", "integer", "float", "boolean", "category")
"""The kinds of value a column can hold."""


@dataclass(frozen=True)
class Format:
    """The text format of an id: a full-string pattern of ASCII classes, its longest length, and how
    the reason describes it."""

    pattern: str
    """Regular expression without anchors, the same in Python's ``re`` and RE2 (Arrow, pydantic)."""
    max_length: int
    described: str


class Column(Protocol):
    """What the contract reads of a field: ``streamflow.schema.Column`` is one (the registry
    imports this module, so the rules name no type of the registry's)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def nullable(self) -> bool: ...
    @property
    def min(self) -> float | None: ...
    @property
    def max(self) -> float | None: ...
    @property
    def choices(self) -> tuple[str, ...] | None: ...
    @property
    def format(self) -> Format | None: ...
    def __hash__(self) -> int: ...  # the rules derived from a field are cached per field


USER_ID = Format(r"[0-9]{4}-[A-Z]{5}", 10, "a user id like 7590-VHVEG (4 digits, '-', 5 capital letters)")
SNAPSHOT_ID = Format(
    r"[A-Za-z0-9_.-]{1,64}", 64, "a snapshot id like month_000 (1 to 64 letters, digits, '_', '.' or '-')"
)
DATE = Format(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", 10, "a date YYYY-MM-DD")
TIMESTAMP = Format(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})",
    32,
    "an ISO 8601 time with a zone, like 2024-01-31T00:00:00+00:00 or 2024-01-31T00:00:00Z",
)
SNAPSHOT_FOLDER = re.compile(r"month_([0-9]{3})", re.ASCII)
"""A snapshot folder name (use fullmatch): month_NNN, NNN months after January 2024."""
_INTEGER_TEXT = r"-?[0-9]+"
_FLOAT_TEXT = r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_ZERO_TEXT = r"-?0*\.?0*(?:[eE][+-]?[0-9]+)?"
BOOLEAN_TEXT = ("True", "False")
"""How a CSV file writes a boolean (JSON writes true and false)."""

DATE_RANGE = (date(1678, 1, 1), date(2261, 12, 31))
"""Days a date may hold: what pandas' datetime64[ns] can represent."""

EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
"""The earliest event time accepted."""
FUTURE_TOLERANCE = timedelta(days=1)
"""How far past the present an event time may be (clocks disagree)."""

NULL = "must not be null"
"""The reason for a missing value in a column that is not nullable (CSV: an empty field)."""

_UTC = timezone.utc
_EPOCH_DAY = date(1970, 1, 1).toordinal()


class Violation(ValueError):
    """A value that breaks the contract of its field.

    ``field`` names the field, ``reason`` is the rule's text (:func:`expectation` or :data:`NULL`),
    ``value`` the value refused. ``str()`` gives ``field <field>: <reason> (got <value>)``.
    """

    def __init__(self, field: str, reason: str, value: Any = None):
        self.field = field
        self.reason = reason
        self.value = value
        super().__init__(f"field {field}: {reason} (got {show(value)})")


def show(value: Any, limit: int = 40) -> str:
    """A value as a reason quotes it: repr, control characters escaped, cut at ``limit`` characters."""
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _bounds(column: Column) -> str:
    lo, hi = column.min, column.max
    if lo is not None and hi is not None:
        return f" from {_fmt(lo)} to {_fmt(hi)}"
    if lo is not None:
        return f" of at least {_fmt(lo)}"
    if hi is not None:
        return f" of at most {_fmt(hi)}"
    return ""


def id_format(column: Column) -> Format:
    """The format of a column of kind id, date or timestamp."""
    if column.kind == "date":
        return DATE
    if column.kind == "timestamp":
        return TIMESTAMP
    if column.format is None:
        raise ValueError(f"column {column.name} of kind {column.kind} has no format")
    return column.format


@cache
def expectation(column: Column) -> str:
    """The reason given when a present value of the column breaks its contract."""
    kind = column.kind
    if kind == "id":
        return f"expected {id_format(column).described}"
    if kind == "date":
        lo, hi = DATE_RANGE
        return f"expected {DATE.described} from {lo} to {hi}"
    if kind == "timestamp":
        return (
            f"expected {TIMESTAMP.described}, from {EARLIEST_EVENT_TIME:%Y-%m-%d} "
            f"to {FUTURE_TOLERANCE.days} day past the present"
        )
    if kind == "integer":
        return f"expected an integer{_bounds(column)}"
    if kind == "float":
        return f"expected a finite number{_bounds(column)}"
    if kind == "boolean":
        return "expected a boolean (JSON true or false, CSV True or False)"
    if kind == "category":
        return "expected one of " + ", ".join(repr(c) for c in column.choices or ())
    raise ValueError(f"column {column.name} has unknown kind {kind!r}")


# --- one value ------------------------------------------------------------------------------------


@cache
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.ASCII)


def arrow_regex(fmt: Format) -> str:
    """The format as an RE2 pattern for Arrow's match_substring_regex: anchored at both ends of the
    text (RE2's ``$`` is the end of the text, never before a final line break)."""
    return f"^(?:{fmt.pattern})$"


def _fits(fmt: Format, text: str) -> bool:
    return len(text) <= fmt.max_length and text.isascii() and _regex(fmt.pattern).fullmatch(text) is not None


def is_null(value: Any) -> bool:
    """Whether a value is missing: None, pandas' NA or NaT, or a float NaN (a frame's null)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(value != value)
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' NA and NaT, without importing pandas


def _day(text: str) -> datetime | None:
    """A YYYY-MM-DD text as midnight UTC, None if it is no calendar day in DATE_RANGE."""
    if not _fits(DATE, text):
        return None
    return _day_of(text)


@lru_cache(maxsize=1 << 16)
def _day_of(text: str) -> datetime | None:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    lo, hi = DATE_RANGE
    return datetime(day.year, day.month, day.day, tzinfo=_UTC) if lo <= day <= hi else None


@lru_cache(maxsize=4096)
def _time_of(text: str) -> datetime | None:
    """An ISO 8601 time with a zone as UTC; None when it breaks the format or is no real time."""
    if not _fits(TIMESTAMP, text):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(_UTC)
    except (ValueError, OverflowError):
        return None


def _as_utc(value: datetime) -> datetime | None:
    """A datetime object (pandas Timestamp included) as UTC; naive ones are UTC."""
    try:
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    except (OverflowError, ValueError):
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _in_bounds(column: Column, value: float) -> bool:
    return (column.min is None or value >= column.min) and (column.max is None or value <= column.max)


def check(column: Column, value: Any, now: datetime | None = None) -> Any:
    """The value normalized, or :class:`Violation` naming the field and the rule it breaks.

    ``value`` is what JSON carries (str, int, float, bool, None) or a frame cell holds (NumPy
    scalars, ``pd.NA``, datetimes; NaN is null). Normalized: id and category str, date midnight
    UTC, timestamp UTC datetime, integer int, float float, boolean bool. ``now`` bounds timestamps
    (default: the present).
    """
    if is_null(value):
        if column.nullable:
            return None
        raise Violation(column.name, NULL, value)
    kind = column.kind
    out: Any = None
    if kind in ("id", "category"):
        if isinstance(value, str) and (
            _fits(id_format(column), value) if kind == "id" else value in (column.choices or ())
        ):
            out = str(value)
    elif kind == "date":
        if isinstance(value, str):
            out = _day(value)
        elif isinstance(value, datetime):
            utc = _as_utc(value)
            if utc is not None and utc == datetime(utc.year, utc.month, utc.day, tzinfo=_UTC):
                out = _day_of(utc.date().isoformat())
        elif isinstance(value, date):
            out = _day_of(value.isoformat())
    elif kind == "timestamp":
        if isinstance(value, str):
            out = _time_of(value)
        elif isinstance(value, datetime):
            out = _as_utc(value)
        if out is not None:
            high = (now or datetime.now(_UTC)) + FUTURE_TOLERANCE
            if not EARLIEST_EVENT_TIME <= out <= high:
                out = None
    elif kind == "integer":
        if _is_int(value) and _in_bounds(column, value):
            out = int(value)
    elif kind == "float":
        if _is_number(value) and math.isfinite(value) and _in_bounds(column, value):
            out = float(value)
    elif kind == "boolean":
        if isinstance(value, (bool, np.bool_)):
            out = bool(value)
    else:
        raise ValueError(f"column {column.name} has unknown kind {kind!r}")
    if out is None:
        raise Violation(column.name, expectation(column), value)
    return out


def checker(column: Column) -> Callable[[Any], Any]:
    """:func:`check` of one column, with a fast path for the common valid JSON value.

    Anything off the fast path goes to :func:`check`, which gives the same result or the
    :class:`Violation`. Timestamps are checked against the present at each call.
    """
    kind = column.kind
    lo = column.min if column.min is not None else -math.inf
    hi = column.max if column.max is not None else math.inf
    slow = column

    if kind == "integer":

        def fast(value):
            return value if type(value) is int and lo <= value <= hi else check(slow, value)

    elif kind == "float":

        def fast(value):  # value - value is 0.0 only for a finite float
            return (
                value
                if type(value) is float and lo <= value <= hi and value - value == 0.0
                else check(slow, value)
            )

    elif kind == "boolean":

        def fast(value):
            return value if value is True or value is False else check(slow, value)

    elif kind == "category":
        choices = frozenset(column.choices or ())

        def fast(value):
            return value if type(value) is str and value in choices else check(slow, value)

    elif kind == "id":
        fmt = id_format(column)
        size, match = fmt.max_length, _regex(fmt.pattern).fullmatch

        def fast(value):
            return (
                value
                if type(value) is str and len(value) <= size and value.isascii() and match(value)
                else check(slow, value)
            )

    elif kind == "date":

        def fast(value):
            out = _day(value) if type(value) is str else None
            return out if out is not None else check(slow, value)

    else:

        def fast(value):
            return check(slow, value)

    return fast


# --- whole columns ----------------------------------------------------------------------------------


def _np(mask: pa.Array) -> np.ndarray:
    """A boolean Arrow array as NumPy (null: False)."""
    return mask.fill_null(False).to_numpy(zero_copy_only=False)


def _matches(strings: pa.Array, fmt: Format) -> np.ndarray:
    ok = _np(pc.match_substring_regex(strings, arrow_regex(fmt)))
    ok &= _np(pc.less_equal(pc.utf8_length(strings), fmt.max_length))
    return ok & _np(pc.string_is_ascii(strings))


def _one_of(strings: pa.Array, choices: tuple[str, ...]) -> np.ndarray:
    """strings in choices (a few equality scans beat pc.is_in's hashing on short lists)."""
    ok = np.zeros(len(strings), dtype=bool)
    for choice in choices:
        ok |= _np(pc.equal(strings, choice))
    return ok


def _days(strings: pa.Array, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days since 1970 of the strings that fit the date format (ok), and which are real days in
    DATE_RANGE."""
    safe = pc.if_else(pa.array(ok), strings, "1970-01-01")
    real = ok.copy()
    try:
        days = pc.cast(safe, pa.date32()).cast(pa.int32()).to_numpy(zero_copy_only=False).astype(np.int64)
    except pa.ArrowInvalid:  # some impossible day (2023-02-30): find them one by one
        days = np.zeros(len(strings), dtype=np.int64)
        for i in np.flatnonzero(ok):
            day = _day_of(strings[int(i)].as_py())
            if day is None:
                real[i] = False
            else:
                days[i] = day.date().toordinal() - _EPOCH_DAY
    lo, hi = (d.toordinal() - _EPOCH_DAY for d in DATE_RANGE)
    real &= (days >= lo) & (days <= hi)
    return days, real


def _underflows(strings: pa.Array, values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Literals like 1e-400 that parse to 0 without being zero (PostgreSQL's float8 refuses them)."""
    tiny = np.zeros(len(values), dtype=bool)
    zeros = np.flatnonzero(ok & (values == 0))
    if len(zeros):
        literal = _np(pc.match_substring_regex(strings.take(pa.array(zeros)), f"^(?:{_ZERO_TEXT})$"))
        tiny[zeros[~literal]] = True
    return tiny


def check_numbers(column: Column, values: np.ndarray) -> np.ndarray:
    """Which of a typed numeric column's values (int64 or float64, no nulls) keep the contract of
    an integer or float column: finite (floats) and within the bounds."""
    ok = np.ones(len(values), dtype=bool)
    if values.dtype.kind == "f":
        ok &= np.isfinite(values)
    if column.min is not None:
        ok &= values >= column.min
    if column.max is not None:
        ok &= values <= column.max
    return ok


def check_texts(
    column: Column, strings: pa.Array, now: datetime | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A column of text checked as a whole: (ok, values).

    ``strings`` is a string array without nulls (a CSV field or a JSON string; an empty CSV field is
    the caller's null). ``ok[i]`` is whether ``strings[i]`` keeps the contract, exactly as
    :func:`check` of that text would for id, date, timestamp and category columns. Integer, float
    and boolean columns take their CSV text: ``-?[0-9]+``, a decimal or exponent literal, ``True``
    or ``False``. ``values`` is the typed column where the kind has one (int64, float64, bool, days
    since 1970 for dates; 0 where not ok), None for text kinds.
    """
    kind = column.kind
    if kind == "id":
        return _matches(strings, id_format(column)), None
    if kind == "category":
        return _one_of(strings, column.choices or ()), None
    if kind == "date":
        ok = _matches(strings, DATE)
        days, real = _days(strings, ok)
        return real, np.where(real, days, 0)
    if kind == "timestamp":
        ok = np.zeros(len(strings), dtype=bool)
        if len(strings):
            distinct = pc.unique(strings)
            good = []
            for text in distinct.to_pylist():
                try:
                    check(column, text, now)
                    good.append(text)
                except Violation:
                    pass
            ok = _np(pc.is_in(strings, value_set=pa.array(good, pa.string())))
        return ok, None
    if kind == "boolean":
        true = _np(pc.equal(strings, BOOLEAN_TEXT[0]))
        return true | _np(pc.equal(strings, BOOLEAN_TEXT[1])), true
    if kind == "integer":
        ok = _np(pc.match_substring_regex(strings, f"^(?:{_INTEGER_TEXT})$"))
        fits = ok & _np(pc.match_substring_regex(strings, r"^-?0*[0-9]{1,18}$"))
        # 19 digits and more: past what the bounds of any column allow, or past int64
        values = pc.cast(pc.if_else(pa.array(fits), strings, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        ok = fits & check_numbers(column, values)
        return ok, np.where(ok, values, 0)
    if kind == "float":
        ok = _np(pc.match_substring_regex(strings, f"^(?:{_FLOAT_TEXT})$"))
        values = pc.cast(pc.if_else(pa.array(ok), strings, "0"), pa.float64()).to_numpy(zero_copy_only=False)
        ok &= check_numbers(column, values) & ~_underflows(strings, values, ok)
        return ok, np.where(ok, values, 0.0)
    raise ValueError(f"column {column.name} has unknown kind {kind!r}")


def date_timestamps(days: pa.Array) -> pa.Array:
    """Dates that keep the contract (``YYYY-MM-DD`` text, nulls allowed) as midnight-UTC timestamps
    (nanoseconds), their normalized form in a frame."""
    return pc.strptime(days, format="%Y-%m-%d", unit="s").cast(pa.timestamp("ns", tz="UTC"))


# --- the contract as a table -------------------------------------------------------------------------


def _rules(column: Column) -> str:
    kind = column.kind
    if kind in ("id", "date", "timestamp"):
        fmt = id_format(column)
        text = f"`{fmt.pattern}`, at most {fmt.max_length} characters"
        if kind == "date":
            text += f", a calendar day from {DATE_RANGE[0]} to {DATE_RANGE[1]}"
        if kind == "timestamp":
            text += (
                f", from {EARLIEST_EVENT_TIME:%Y-%m-%d} to {FUTURE_TOLERANCE.days} day past the present; "
                "a datetime object without zone is UTC"
            )
        return text
    if kind == "category":
        return "one of " + ", ".join(f"`{c}`" for c in column.choices or ())
    if kind == "integer":
        return f"integer{_bounds(column)}; CSV `{_INTEGER_TEXT}`"
    if kind == "float":
        return f"finite number{_bounds(column)}; CSV a decimal or exponent literal"
    if kind == "boolean":
        return "JSON `true`/`false`, CSV `True`/`False`"
    return ""


def markdown_table(fields: Sequence[tuple[str, Column]]) -> str:
    """The contract of the given (table, column) pairs as a Markdown table (the docs' copy)."""
    lines = [
        "| table | field | kind | null | rule (full string, ASCII) | reason when refused |",
        "|---|---|---|---|---|---|",
    ]
    for table, column in fields:
        null = "allowed" if column.nullable else "no"
        cells = [table, f"`{column.name}`", column.kind, null, _rules(column), expectation(column)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
