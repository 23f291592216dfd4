"""Validation of what is pushed into Feast, against the table registry.

Stock Feast fails late and vaguely on a malformed push (a bare ``KeyError``, ``ValueError`` or
``AssertionError`` from pandas or pyarrow) and silently coerces some bad values (``7.9`` into an
Int64 becomes 7). Everything StreamFlow pushes goes through :func:`validate_frame` first, which
raises :class:`PushValidationError` naming the push, the row, the user and the field. Pushes that
reach Feast some other way (``feast serve`` /push, a user's own ``store.push``) are checked by our
provider and offline store with the same function (streamflow.feast_stores.validation).

Every cell is held to :mod:`streamflow.contract`, the rules the consumer's events and the CSV
loader are held to: times are datetimes (naive ones are UTC) or ISO 8601 strings with a zone;
dates are ``YYYY-MM-DD`` strings or datetimes at midnight UTC.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

from streamflow import contract, schema
from streamflow.errors import StreamflowError


class PushValidationError(StreamflowError, ValueError):
    """A frame that does not match its table in the registry.

    When a cell breaks its field's contract, ``field`` names the field, ``rule`` is the contract's
    reason and ``row`` the frame's row.
    """

    def __init__(
        self, message: str, field: str | None = None, rule: str | None = None, row: int | None = None
    ):
        super().__init__(message)
        self.field = field
        self.rule = rule
        self.row = row


_TIME_COLUMN = dataclasses.replace(schema.EVENT_TIME_COLUMN, name=schema.SNAPSHOT_TIME)
"""The event time of a push frame: the event's timestamp contract, under the column it has there."""


def push_columns(table: schema.Table) -> list[str]:
    """Columns of a push frame (and of the batch source it writes to), in order."""
    return [schema.KEY, schema.SNAPSHOT_TIME, *table.feature_names, schema.EVENT_SNAPSHOT]


def _fail(where: str, frame: pd.DataFrame, mask: np.ndarray, field: str, reason: str) -> None:
    idx = np.flatnonzero(mask)
    pos = int(idx[0])
    user = frame[schema.KEY].iloc[pos] if schema.KEY in frame else "?"
    more = f" ({len(idx) - 1} more rows like it)" if len(idx) > 1 else ""
    raise PushValidationError(
        f"{where}: row {pos} (user {user}), field {field}: {reason} "
        f"(got {contract.show(frame[field].iloc[pos])}){more}",
        field=field,
        rule=reason,
        row=pos,
    )


def _one_by_one(column: schema.Column, s: pd.Series, null: np.ndarray, now: datetime) -> tuple:
    """(ok, values): contract.check of every present cell (an object column: what JSON gave)."""
    ok = np.ones(len(s), dtype=bool)
    values: list = [None] * len(s)
    for i in np.flatnonzero(~null).tolist():
        try:
            values[i] = contract.check(column, s.iloc[i], now)
        except contract.Violation:
            ok[i] = False
    return ok, values


def _typed(column: schema.Column, values: list) -> pd.Series:
    if column.kind in ("date", "timestamp"):
        return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), utc=True))
    return pd.Series(pd.array(values, dtype=column.pandas_dtype))


def _arrow(texts: pd.Series) -> pa.Array | None:
    """A string column as Arrow; None when some text is no Unicode Arrow holds (a lone surrogate)."""
    try:
        return pa.array(texts.to_numpy(dtype=object), pa.string())
    except (pa.ArrowException, UnicodeError):
        return None


def _check_column(
    column: schema.Column, s: pd.Series, now: datetime
) -> tuple[np.ndarray, np.ndarray, pd.Series | None]:
    """(null, ok, typed): which cells are null, which keep the contract (null ones count as ok),
    and the column in its registry dtype (None when some cell does not keep it).

    Typed columns are checked as a whole; object columns (what ``feast serve``'s /push makes of
    JSON) one cell at a time. Both by the contract's rules.
    """
    null = s.isna().to_numpy(dtype=bool)
    present = ~null
    kind, dtype = column.kind, s.dtype
    ok = np.ones(len(s), dtype=bool)
    typed: pd.Series | None = None
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if kind in ("integer", "float") and numeric and (kind == "float" or pd.api.types.is_integer_dtype(dtype)):
        values = s.to_numpy(dtype="int64" if kind == "integer" else "float64", na_value=0)
        ok[present] = contract.check_numbers(column, values[present])
        typed = pd.Series(pd.array(values, dtype=column.pandas_dtype))
        typed[null] = pd.NA
    elif kind == "boolean" and pd.api.types.is_bool_dtype(dtype):
        typed = s.astype("boolean").reset_index(drop=True)
    elif kind in ("id", "category") and isinstance(dtype, pd.StringDtype) and (texts := _arrow(s[present])):
        ok[present] = contract.check_texts(column, texts)[0]
        typed = s.astype("string").reset_index(drop=True)
    elif kind in ("date", "timestamp") and pd.api.types.is_datetime64_any_dtype(dtype):
        typed = (s.dt.tz_localize("UTC") if s.dt.tz is None else s.dt.tz_convert("UTC")).reset_index(
            drop=True
        )
        if kind == "date":
            lo, hi = (pd.Timestamp(d, tz="UTC") for d in contract.DATE_RANGE)
            good = (typed == typed.dt.normalize()) & (typed >= lo) & (typed <= hi)
        else:
            good = (typed >= contract.EARLIEST_EVENT_TIME) & (typed <= now + contract.FUTURE_TOLERANCE)
        ok[present] = good.to_numpy(dtype=bool)[present]
    else:
        ok, values = _one_by_one(column, s, null, now)
        if ok.all():
            typed = _typed(column, values)
    if not column.nullable:
        ok &= present
    return null, ok, typed if ok.all() else None


def validate_frame(
    table: schema.Table, frame: pd.DataFrame, where: str = "push", now: datetime | None = None
) -> pd.DataFrame:
    """Check a push frame against the registry's contract; return it typed, with columns in push order.

    Every cell is checked by :mod:`streamflow.contract`, as an event's field would be: the key, the
    event time (SNAPSHOT_TIME, a timestamp bounded by ``now``, default the present), each feature
    and the snapshot. The first bad cell raises :class:`PushValidationError` naming the push, the
    row, the user, the field and the contract's reason.
    """
    expected = push_columns(table)
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        raise PushValidationError(
            f"{where} ({table.push_source}): columns do not match table {table.name}: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    frame = frame.reset_index(drop=True)
    now = now or datetime.now(timezone.utc)
    out = {}
    for column in (schema.KEY_COLUMN, _TIME_COLUMN, *table.columns, schema.SNAPSHOT_COLUMN):
        null, ok, typed = _check_column(column, frame[column.name], now)
        if typed is None:
            bad = ~ok
            if null[bad.argmax()]:  # the first bad cell is missing
                _fail(f"{where} ({table.push_source})", frame, bad & null, column.name, contract.NULL)
            _fail(
                f"{where} ({table.push_source})",
                frame,
                bad & ~null,
                column.name,
                contract.expectation(column),
            )
        out[column.name] = typed
    return pd.DataFrame(out)
