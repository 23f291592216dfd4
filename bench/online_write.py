"""1. Online write: our StreamflowOnlineStore vs stock PostgreSQLOnlineStore, on the same rows.

The same list of (EntityKeyProto, {feature: ValueProto}, event_ts, created_ts) tuples, N users x
the subs_profile_fv features, goes to each store's ``online_write_batch`` in batches: first as
inserts into empty tables, then again as updates with a newer event time and changed values.
Stock: one row per feature, ``executemany`` of INSERT ... ON CONFLICT, behind a GIN full-text
index (the view has String features); ours: one row per user and view, COPY + one merge.
"""

from __future__ import annotations

import contextlib
import random
import time
from datetime import datetime, timedelta, timezone

from feast.infra.online_stores.postgres_online_store.postgres import PostgreSQLOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from bench import common  # noqa: I001  (first: sets the benchmark environment)
from streamflow import schema
from streamflow.datagen.generate import user_ids
from streamflow.feast_stores.online import StreamflowOnlineStore

TABLE = schema.table("subscriptions")
NAME = "online_write"


def _value(col: schema.Column, rng: random.Random, step: int) -> ValueProto:
    if col.kind == "integer":
        return ValueProto(int64_val=rng.randrange(0, 72) + step)
    if col.kind == "float":
        return ValueProto(double_val=round(rng.uniform(18, 120), 2) + step)
    if col.kind == "boolean":
        return ValueProto(bool_val=rng.random() < 0.5)
    return ValueProto(string_val=rng.choice(col.choices))


def make_rows(users: list[str], event_ts: datetime, step: int, seed: int = 1) -> list[tuple]:
    rng = random.Random(seed + step)
    rows = []
    for user in users:
        key = EntityKeyProto(join_keys=[schema.KEY], entity_values=[ValueProto(string_val=user)])
        values = {c.name: _value(c, rng, step) for c in TABLE.columns}
        rows.append((key, values, event_ts, event_ts))
    return rows


def write_all(store, repo_config, view, rows: list[tuple], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        store.online_write_batch(repo_config, view, rows[i : i + batch], None)
    return time.perf_counter() - started


def run(args) -> dict:
    ours_fs, stock_fs = common.our_store(), common.stock_store()
    view = ours_fs.get_feature_view(TABLE.feature_view)
    stores = {
        "stock": (PostgreSQLOnlineStore(), stock_fs.config, f"{common.STOCK_PROJECT}_{view.name}"),
        "ours": (StreamflowOnlineStore(), ours_fs.config, f"{ours_fs.config.project}_{view.name}"),
    }
    users = list(user_ids(7, 0, args.users))
    t1 = datetime(2024, 1, 31, tzinfo=timezone.utc)
    phases = {"inserts": make_rows(users, t1, 0), "updates": make_rows(users, t1 + timedelta(days=29), 1)}
    features = len(TABLE.columns)

    with common.connect(autocommit=True) as conn:
        for store, repo_config, table in stores.values():  # warm-up: connections, caches
            write_all(store, repo_config, view, phases["inserts"][:200], args.batch)
            conn.execute(f'TRUNCATE "{table}"')

    seconds: dict[str, dict[str, float]] = {}
    for phase, rows in phases.items():
        for side, (store, repo_config, _table) in stores.items():
            ctx = common.profiled(f"{NAME}_{phase}") if side == "ours" else contextlib.nullcontext()
            with ctx:
                seconds.setdefault(phase, {})[side] = write_all(store, repo_config, view, rows, args.batch)
            common.say(f"  {phase:8} {side:5}: {len(rows):,} rows in {seconds[phase][side]:.2f} s")

    with common.connect() as conn:
        counts = {
            side: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for side, (_s, _c, table) in stores.items()
        }

    out_rows = []
    for phase in phases:
        ours, stock = (common.rate(len(users), seconds[phase][s]) for s in ("ours", "stock"))
        goal, met = ("≥ 4× on updates", ours / stock >= 4) if phase == "updates" else ("", None)
        out_rows.append(common.row("1 online write", f"{phase}, rows/s", ours, stock, "rows/s", goal, met))
        out_rows.append(
            common.row(
                "1 online write", f"{phase}, feature values/s", ours * features, stock * features, "values/s"
            )
        )
    return {
        "rows": out_rows,
        "details": {
            "users": len(users),
            "features_per_row": features,
            "batch": args.batch,
            "seconds": seconds,
            "table_rows_after": counts,
            "method": "same tuples to each store's online_write_batch, in batches; tables emptied "
            "before the inserts; stock tables made by its own update() (feast apply)",
        },
    }
