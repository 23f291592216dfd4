"""Validation of what is pushed into Feast, against the table registry.

Stock Feast fails late and vaguely on a malformed push (a bare ``KeyError``, ``ValueError`` or
``AssertionError`` from pandas or pyarrow) and silently coerces some bad values (``7.9`` into an
Int64 becomes 7). Everything StreamFlow pushes goes through :func:`validate_frame` first, which
raises :class:`PushValidationError` naming the push, the row, the user and the field. Pushes that
reach Feast some other way (``feast serve`` /push, a user's own ``store.push``) are checked by our
provider and offline store with the same function (streamflow.feast_stores.validation).

Times are taken as Feast's own online path takes them: datetimes (naive ones are UTC) and ISO 8601
strings, with ``Z``, an offset or none (UTC), converted by :func:`utc_times` and nowhere else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from streamflow import schema
from streamflow.errors import StreamflowError


class PushValidationError(StreamflowError, ValueError):
    """A frame that does not match its table in the registry."""


def push_columns(table: schema.Table) -> list[str]:
    """Columns of a push frame (and of the batch source it writes to), in order."""
    return [schema.KEY, schema.SNAPSHOT_TIME, *table.feature_names, schema.EVENT_SNAPSHOT]


def utc_times(values: pd.Series) -> pd.Series:
    """Event times or dates of a push as a UTC timestamp column: the one conversion of times.

    Accepted as Feast's online path accepts them: datetime columns and objects (naive ones are UTC)
    and ISO 8601 strings ("2024-01-31T00:00:00Z", "2024-01-31T02:00:00+02:00", naive
    "2024-01-31T00:00:00" = UTC, "2024-01-31"). Anything else becomes NaT (the callers report it):
    numbers too, which Feast would read as nanoseconds since 1970.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def _fail(where: str, frame: pd.DataFrame, mask: np.ndarray, field: str, what: str) -> None:
    idx = np.flatnonzero(mask)
    pos = int(idx[0])
    user = frame[schema.KEY].iloc[pos] if schema.KEY in frame else "?"
    value = frame[field].iloc[pos]
    if isinstance(value, np.generic):
        value = value.item()  # -4, not np.int64(-4)
    more = f" ({len(idx) - 1} more rows like it)" if len(idx) > 1 else ""
    raise PushValidationError(
        f"{where}: row {pos} (user {user}), field {field}: {what} (got {value!r}){more}"
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _numbers(where: str, frame: pd.DataFrame, field: str, present: np.ndarray, what: str) -> np.ndarray:
    """The column as float64 (NaN for nulls); a non-numeric value fails, naming its row."""
    s = frame[field]
    if pd.api.types.is_bool_dtype(s):
        _fail(where, frame, present, field, what)
    if not pd.api.types.is_numeric_dtype(s):
        ok = s.map(_is_number).to_numpy(dtype=bool)
        bad = present & ~ok
        if bad.any():
            _fail(where, frame, bad, field, what)
        s = pd.to_numeric(s.where(ok), errors="coerce")
    return s.to_numpy(dtype="float64", na_value=np.nan)


def _check_range(
    where: str, frame: pd.DataFrame, col: schema.Column, values: np.ndarray, present: np.ndarray
) -> None:
    low = col.min if col.min is not None else -np.inf
    high = col.max if col.max is not None else np.inf
    bad = present & ((values < low) | (values > high))
    if bad.any():
        _fail(where, frame, bad, col.name, f"out of range [{col.min}, {col.max}]")


def _check_column(where: str, frame: pd.DataFrame, col: schema.Column) -> pd.Series:
    s = frame[col.name]
    null = s.isna().to_numpy()
    if not col.nullable and null.any():
        _fail(where, frame, null, col.name, "must not be null")
    present = ~null
    if col.kind in ("int", "float"):
        what = "expected an integer" if col.kind == "int" else "expected a number"
        values = _numbers(where, frame, col.name, present, what)
        bad = present & ~np.isfinite(values)
        if bad.any():
            _fail(where, frame, bad, col.name, "expected a finite number" if col.kind == "float" else what)
        if col.kind == "int":
            bad = present & (np.floor(values) != values)
            if bad.any():
                _fail(where, frame, bad, col.name, what)
        _check_range(where, frame, col, values, present)
        if col.kind == "int":
            out = pd.array(np.where(present, values, 0).astype("int64"), dtype="Int64")
            out[~present] = pd.NA
            out = pd.Series(out, index=s.index)
        else:
            out = pd.Series(pd.array(values, dtype="Float64"), index=s.index)
            out[~present] = pd.NA
    elif col.kind == "bool":
        if not pd.api.types.is_bool_dtype(s):
            ok = s.map(lambda v: v is None or isinstance(v, (bool, np.bool_)) or v is pd.NA).to_numpy(
                dtype=bool
            )
            if (~ok).any():
                _fail(where, frame, ~ok, col.name, "expected true or false")
        out = s.astype("boolean")
    elif col.kind == "str":
        if isinstance(s.dtype, pd.StringDtype):
            ok = np.ones(len(s), dtype=bool)
        else:
            ok = s.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool) | null
        if (~ok).any():
            _fail(where, frame, ~ok, col.name, "expected a string")
        if col.choices is not None:
            bad = present & ~s.isin(col.choices).to_numpy()
            if bad.any():
                _fail(where, frame, bad, col.name, f"expected one of {', '.join(col.choices)}")
        out = s.astype("string")
    elif col.kind == "date":
        out = utc_times(s)
        bad = present & out.isna().to_numpy()
        if bad.any():
            _fail(where, frame, bad, col.name, "expected a date YYYY-MM-DD")
    else:  # pragma: no cover - the registry only has the kinds above
        raise AssertionError(col.kind)
    return out


def validate_frame(table: schema.Table, frame: pd.DataFrame, where: str = "push") -> pd.DataFrame:
    """Check a push frame against the registry; return it typed, with columns in push order."""
    expected = push_columns(table)
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise PushValidationError(
            f"{where} ({table.push_source}): columns do not match table {table.name}: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    frame = frame.reset_index(drop=True)
    out = {}
    keys = frame[schema.KEY]
    if isinstance(keys.dtype, pd.StringDtype):
        bad = ~keys.str.fullmatch(schema.USER_ID_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)
    else:
        bad = ~keys.map(lambda v: isinstance(v, str) and bool(schema.USER_ID_PATTERN.match(v))).to_numpy(
            dtype=bool
        )
    if bad.any():
        _fail(where, frame, bad, schema.KEY, "expected a user id like 7590-VHVEG")
    out[schema.KEY] = keys.astype("string")
    ts = frame[schema.SNAPSHOT_TIME]
    null = ts.isna().to_numpy()
    if null.any():
        _fail(where, frame, null, schema.SNAPSHOT_TIME, "must not be null")
    times = utc_times(ts)
    bad = times.isna().to_numpy()
    if bad.any():
        _fail(
            where,
            frame,
            bad,
            schema.SNAPSHOT_TIME,
            "expected an ISO 8601 timestamp like 2024-01-31T00:00:00Z (no offset: UTC)",
        )
    out[schema.SNAPSHOT_TIME] = times
    for col in table.columns:
        out[col.name] = _check_column(f"{where} ({table.push_source})", frame, col)
    snap = frame[schema.EVENT_SNAPSHOT]
    if isinstance(snap.dtype, pd.StringDtype):
        lengths = snap.str.len()
        bad = (snap.notna() & ~lengths.between(1, 64)).fillna(False).to_numpy(dtype=bool)
    else:
        bad = ~snap.map(
            lambda v: v is None or v is pd.NA or (isinstance(v, str) and 0 < len(v) <= 64)
        ).to_numpy(dtype=bool)
    if bad.any():
        _fail(where, frame, bad, schema.EVENT_SNAPSHOT, "expected a snapshot id or null")
    out[schema.EVENT_SNAPSHOT] = snap.astype("string")
    return pd.DataFrame(out)
