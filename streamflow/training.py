"""Offline retrieval: a point-in-time correct training set for one snapshot date.

For every user labelled at ``as_of``, Feast's ``get_historical_features`` joins each feature
view's newest row at or before that time (so month_000's features for 2024-01-31, even after
month_001 was loaded or streamed), plus that month's churn label.
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import date
from pathlib import Path

import pandas as pd

from streamflow import config, logs, schema
from streamflow.errors import StreamflowError
from streamflow.feature_store import database_errors, get_store

log = logging.getLogger("streamflow.training")


def feature_refs(include_label: bool = True) -> list[str]:
    tables = list(schema.FEATURE_TABLES) + ([schema.LABEL_TABLE] if include_label else [])
    return [f"{t.feature_view}:{c}" for t in tables for c in t.feature_names]


def entity_query(as_of: date) -> str:
    """The users labelled at as_of, with that time as the point in time of the join."""
    ts = schema.as_of_timestamp(as_of).isoformat()
    return (
        f"SELECT {schema.KEY}, {schema.SNAPSHOT_TIME} AS event_timestamp "
        f"FROM {schema.LABEL_TABLE.snapshot_table} WHERE {schema.SNAPSHOT_TIME} = '{ts}'"
    )


def build_training_set(as_of: date, entity_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features and label of every user labelled at as_of (or of the given entity frame)."""
    store = get_store()
    with database_errors("training set"):
        job = store.get_historical_features(
            entity_df=entity_df if entity_df is not None else entity_query(as_of),
            features=feature_refs(),
        )
        frame = job.to_df()
    return frame.sort_values(schema.KEY, kind="stable").reset_index(drop=True)


def summarize(frame: pd.DataFrame) -> str:
    label = schema.LABEL_TABLE.feature_names[0]
    lines = [f"rows: {len(frame)}, columns: {len(frame.columns)}"]
    if len(frame):
        lines.append(f"churn rate: {frame[label].astype('float').mean():.1%}")
        nulls = frame.isna().sum()
        nulls = nulls[nulls > 0]
        lines.append("nulls: " + (", ".join(f"{k}={v}" for k, v in nulls.items()) if len(nulls) else "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamflow training-set", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=schema.SNAPSHOTS["month_000"],
        help="snapshot date YYYY-MM-DD (default: 2024-01-31)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="parquet file (default: out/training_<as_of>.parquet)"
    )
    args = parser.parse_args(argv)
    logs.setup()
    out = args.out or config.REPO_ROOT / "out" / f"training_{args.as_of.isoformat()}.parquet"
    started = time.perf_counter()
    try:
        frame = build_training_set(args.as_of)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    if frame.empty:
        log.error("no labelled users at %s: load or stream that snapshot first", args.as_of)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    print(f"training set for {args.as_of} -> {out} ({time.perf_counter() - started:.1f} s)")
    print(summarize(frame))
    return 0
