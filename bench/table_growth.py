"""7b. The consumer into large tables vs into empty ones: the same events, the same process.

Issue 12 asks that the consumer's speed hold as the tables it merges into grow. The scale run's
"consumer alone" figure mixes in other things (a backlog of millions of events, the producer just
finished, the page cache), so this benchmark isolates the tables' size. It runs after ``--scale``
(``scale.run`` calls it last) or alone on the tables a scale run left
(``python -m bench.run --only table_growth``; it refuses to run on small tables).

Two sets of 20,000 users of their own (seeds 7 and 8: no user of the scale run's data), month_000,
120,000 events each, replayed into fresh topics beforehand (not timed). Our consumer
(``consumer.runner.StreamConsumer``, in-process, as in benchmark 2) consumes each set in a fresh
group:
  * large: into the stores as the scale run left them (1,000,000 users, both months), set 7, then set 8;
  * empty: the same two sets, each into emptied stores (as benchmark 2 does).
Every event is an insert in both cases (new users), so the work asked of PostgreSQL is the same
but for the size of the tables and their indexes. Reported: events/s (the better of the two runs of
each case), and per batch the wall time of the online merge (COPY into a staging table, then
``INSERT … ON CONFLICT`` into the online table) and of the offline merge (COPY, then the
snapshot-table merge), summed over the writer threads and divided by the batches.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter

from bench import common, consumer_e2e  # noqa: I001  (common first: sets the benchmark environment)
from streamflow import schema

NAME = "table_growth"
MIN_USERS = 500_000
"""Fewer users in the snapshot tables than this: not a large-table run (refused)."""
SEEDS = (7, 8)
USERS = 20_000


def stored_users() -> int:
    """Distinct users of the first table's snapshot table."""
    with common.connect() as conn:
        table = schema.TABLES[0].snapshot_table
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
        if exists is None:
            return 0
        return conn.execute(f'SELECT count(DISTINCT "{schema.KEY}") FROM "{table}"').fetchone()[0]


def _timed(counter: Counter, name: str, func):
    @functools.wraps(func)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            counter[name] += time.perf_counter() - started

    return timed


def consume_timed(batch: int) -> dict:
    """consumer_e2e.consume, with the wall time of the online and offline merges summed."""
    from streamflow.feast_stores import offline, online

    spent: Counter = Counter()
    merge_online, merge_offline = online.StreamflowOnlineStore._merge, offline.merge_rows
    online.StreamflowOnlineStore._merge = _timed(spent, "online", merge_online)
    offline.merge_rows = _timed(spent, "offline", merge_offline)
    try:
        stats = consumer_e2e.consume(batch)
    finally:
        online.StreamflowOnlineStore._merge, offline.merge_rows = merge_online, merge_offline
    batches = max(stats["batches"], 1)
    stats["online_merge_ms"] = spent["online"] / batches * 1000
    stats["offline_merge_ms"] = spent["offline"] / batches * 1000
    return stats


def _topics_with(seed: int, folder) -> str:
    prefix = common.use_topics(f"growth{seed}")
    events = consumer_e2e.produce(folder)
    common.say(f"  set {seed}: {events:,} events produced (not timed)")
    return prefix


def measure(batch: int = 5000) -> dict:
    users = stored_users()
    if users < MIN_USERS:
        raise RuntimeError(
            f"the snapshot tables hold {users:,} users, fewer than {MIN_USERS:,}: run "
            "`python -m bench.run --scale` (this benchmark runs at its end) first"
        )
    from streamflow.datagen.generate import generate

    folders = {}
    for seed in SEEDS:
        out = common.data_dir() / f"growth_{seed}"
        if not (out / "month_000" / "labels.csv").exists():
            generate(out, users=USERS, seed=seed, snapshots=("month_000",), progress=False)
        folders[seed] = out / "month_000"
    prefixes = {seed: _topics_with(seed, folders[seed]) for seed in SEEDS}
    runs: dict[str, list[dict]] = {"large": [], "empty": []}
    for case in ("large", "empty"):
        for seed in SEEDS:
            os.environ["STREAMFLOW_TOPIC_PREFIX"] = prefixes[seed]
            if case == "empty":
                consumer_e2e.empty_stores()
            stats = consume_timed(batch)
            runs[case].append(stats)
            common.say(
                f"  {case:5} set {seed}: {stats['written']:,.0f} events in {stats['seconds']:.2f} s, "
                f"{stats['batches']:.0f} batches, merges per batch online {stats['online_merge_ms']:.0f} ms, "
                f"offline {stats['offline_merge_ms']:.0f} ms"
            )
    best = {case: min(r, key=lambda s: s["seconds"]) for case, r in runs.items()}
    rate = {case: common.rate(s["written"], s["seconds"]) for case, s in best.items()}
    ratio = rate["large"] / rate["empty"] if rate["empty"] else None
    rows = [
        common.row(
            "7b table size",
            f"consumer events/s into tables of {users:,} users (ours) vs into empty tables (baseline), "
            "the same 120,000 new users' events",
            rate["large"],
            rate["empty"],
            "events/s",
            "≥ 0.8×",
            ratio is not None and ratio >= 0.8,
        ),
    ]
    for side in ("online", "offline"):
        rows.append(
            common.row(
                "7b table size",
                f"{side} merge, ms per batch, large vs empty tables (lower is better)",
                best["large"][f"{side}_merge_ms"],
                best["empty"][f"{side}_merge_ms"],
                "ms",
                higher_is_better=False,
            )
        )
    return {
        "rows": rows,
        "details": {
            "stored_users": users,
            "runs": runs,
            "method": __doc__.split("\n\n")[1].replace("\n", " ").strip(),
        },
    }


def run(args) -> dict:
    return measure(args.batch)
