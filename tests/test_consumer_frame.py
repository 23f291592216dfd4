"""The consumer's push frames (no I/O): typed like the registry, times exact, last event wins."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from streamflow import events, schema
from streamflow.event_batch import events_frame, utc_times
from streamflow.push_validation import validate_frame

UTC = timezone.utc


def test_utc_times_equal_pandas_conversion():
    values = [
        datetime(2024, 1, 31, tzinfo=UTC),
        None,
        datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC),
        datetime(2024, 1, 31, tzinfo=UTC),
        datetime(1700, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2261, 12, 31, tzinfo=UTC) + timedelta(microseconds=7),
    ]
    expected = pd.Series(pd.to_datetime(values, utc=True))
    pd.testing.assert_series_equal(utc_times(values), expected, check_names=False)


def test_events_frame_is_typed_and_keeps_the_last_duplicate():
    table = schema.table("usage_agg_30d")
    jan = datetime(2024, 1, 31, tzinfo=UTC)

    def event(user: str, hours: float, skips: int | None) -> events.Event:
        values = {c.name: 1.0 if c.kind == "float" else 1 for c in table.columns}
        values |= {"watch_hours_30d": hours, "skips_7d": skips}
        return events.Event(table=table, user_id=user, event_time=jan, snapshot="month_000", values=values)

    frame = events_frame(
        table, [event("0001-AAAAA", 1.5, 3), event("0002-BBBBB", 2.0, None), event("0001-AAAAA", 9.0, 4)]
    )
    assert list(frame.columns) == [
        schema.KEY,
        schema.SNAPSHOT_TIME,
        *table.feature_names,
        schema.EVENT_SNAPSHOT,
    ]
    assert frame[schema.KEY].tolist() == ["0002-BBBBB", "0001-AAAAA"]
    assert frame["watch_hours_30d"].tolist() == [2.0, 9.0]
    assert frame["skips_7d"].isna().tolist() == [True, False]
    for col in table.columns:
        assert str(frame[col.name].dtype) == col.pandas_dtype, col.name
    assert (frame[schema.SNAPSHOT_TIME] == pd.Timestamp(jan)).all()
    valid = frame[frame["skips_7d"].notna()].reset_index(drop=True)  # skips_7d is not nullable
    pd.testing.assert_frame_equal(validate_frame(table, valid), valid)
