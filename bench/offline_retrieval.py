"""6. Offline retrieval: our training set vs stock ``get_historical_features`` with a pandas entity frame.

For each size (default 7,043 and 100,000 users) the warehouse is loaded with both months of that
many users, then the point-in-time training set for 2024-01-31 (every feature and the label) is
built twice on the same entities:

* ours: ``streamflow.training.build_training_set`` (the entity set passed as SQL,
  ``training.entity_query``: no upload);
* stock: a FeatureStore whose offline store is ``type: postgres``, given the same entities as a
  pandas DataFrame, which Feast uploads row by row (``executemany`` INSERT) before the same query.

Both frames are compared (sorted by user) to show they are the same training set.
"""

from __future__ import annotations

import time

import pandas as pd

from bench import common  # noqa: I001  (first: sets the benchmark environment)
from streamflow import schema, training

NAME = "offline_retrieval"
AS_OF = schema.SNAPSHOTS["month_000"]


def entity_frame() -> pd.DataFrame:
    with common.connect() as conn:
        rows = conn.execute(training.entity_query(AS_OF)).fetchall()
    frame = pd.DataFrame(rows, columns=[schema.KEY, "event_timestamp"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def stock(entities: pd.DataFrame) -> pd.DataFrame:
    job = common.stock_store().get_historical_features(entity_df=entities, features=training.feature_refs())
    return job.to_df().sort_values(schema.KEY, kind="stable").reset_index(drop=True)


def same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    cols = sorted(set(a.columns) & set(b.columns))
    if len(a) != len(b) or len(cols) < len(training.feature_refs()):
        return False
    try:
        pd.testing.assert_frame_equal(a[cols], b[cols], check_dtype=False, check_exact=False)
    except AssertionError:
        return False
    return True


def run(args) -> dict:
    rows, details = [], {}
    for users in args.offline_users:
        common.load_warehouse(users)
        entities = entity_frame()
        training.build_training_set(AS_OF, entity_df=entities.head(50))  # warm-up: registry, engines
        stock(entities.head(50))
        started = time.perf_counter()
        with common.profiled(f"{NAME}_{users}"):
            ours_frame = training.build_training_set(AS_OF)
        ours = time.perf_counter() - started
        started = time.perf_counter()
        stock_frame = stock(entities)
        base = time.perf_counter() - started
        equal = same(ours_frame, stock_frame)
        common.say(
            f"  {users:,} users: ours {ours:.2f} s, stock {base:.2f} s, "
            f"{len(ours_frame):,} vs {len(stock_frame):,} rows, same training set: {equal}"
        )
        goal, met = ("≥ 3×", base / ours >= 3) if users >= 100_000 else ("", None)
        rows.append(
            common.row(
                "6 offline retrieval",
                f"training set, {users:,} users, seconds",
                ours,
                base,
                "s",
                goal,
                met,
                higher_is_better=False,
                note=f"{users:,} users: same training set: {'yes' if equal else 'NO'}.",
            )
        )
        details[users] = {
            "ours_seconds": ours,
            "stock_seconds": base,
            "rows": len(ours_frame),
            "stock_rows": len(stock_frame),
            "same": equal,
        }
    details["method"] = (
        "warehouse loaded with both months; training set for 2024-01-31; ours passes the "
        "entity set as SQL, stock uploads it from a DataFrame; timed after a 50-user warm-up."
    )
    return {"rows": rows, "details": details}
