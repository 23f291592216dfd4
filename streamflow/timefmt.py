"""The one format of times and dates that StreamFlow prints (CLI, API, JSON): ISO 8601 in UTC with
``Z`` for instants, ``YYYY-MM-DD`` for days."""

from __future__ import annotations

from datetime import date, datetime, timezone


def iso_utc(ts: datetime) -> str:
    """``2024-01-31T00:00:00Z`` (a naive datetime is taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def iso_ms(ms: int | float | None) -> str | None:
    """Epoch milliseconds (a Kafka record's timestamp) as ISO UTC ``Z`` to the millisecond; None for
    None or a negative (absent) timestamp."""
    if ms is None or ms < 0:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_day(value: date | datetime) -> str:
    """``2024-01-31``: the UTC day of an instant, or the date itself."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.date().isoformat()
    return value.isoformat()


def feature_value(value, kind: str):
    """A feature value as printed: days as ``YYYY-MM-DD``, instants as ISO UTC ``Z``, NaN as None,
    anything else as it is."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if kind == "date" and isinstance(value, (date, datetime)):
        return iso_day(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    return value
