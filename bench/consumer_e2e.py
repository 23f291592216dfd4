"""2. Consumer end to end vs a bare poll loop of its own Kafka client (the limit) and vs stock push.

Ours: month_000 of N users (6 events per user) is replayed into fresh topics first (not timed);
then ``consumer.runner.StreamConsumer`` (in-process, store opened and group joined in its
constructor) polls, decodes and validates, writes online AND offline, commits, until drained.
Events/s are counted from the first batch to the last commit (the group join before it is shown
apart). Baseline: the same rows, as typed frames read from the same CSV files, pushed in batches of
the same size with stock ``FeatureStore.push(push_source, frame, to=PushMode.ONLINE)`` into a
store whose online store is Feast's stock PostgreSQL class: no Kafka, no validation, no offline
write, no commit.

The limit: a bare poll loop of the same client (``kafka_clients.group_consumer``, same settings and
``max_poll_records``) in a fresh group over the same topics, that does nothing with the records: from
its first record to its last. Ours can at best reach it (the ratio ours / bare says how close).
"""

from __future__ import annotations

import os
import time
import uuid

from feast.data_source import PushMode

from bench import common  # noqa: I001  (first: sets the benchmark environment)
from streamflow import schema
from streamflow.batch.validate import read_snapshot
from streamflow.push_validation import push_columns
from streamflow.topics import table_topics

NAME = "consumer_e2e"


def produce(folder) -> int:
    from producer.replay import Replayer, make_producer

    replayer = Replayer(make_producer())
    try:
        stats = replayer.replay([folder])
    finally:
        replayer.producer.close()
    return stats.total_acked


def mark_batches(consumer) -> dict[str, float]:
    """Wrap a consumer's batching and commit: the returned marks get the time its first batch is
    polled (``first_batch``) and its last commit returns (``last_commit``), what benchmark 2 counts."""
    marks: dict[str, float] = {}
    offsets = consumer.client.offsets  # the commit protocol of the consumer's (first) client
    batch_of, commit = consumer.batch_of, offsets.commit

    def timed_batch(records):
        marks.setdefault("first_batch", time.perf_counter())
        return batch_of(records)

    def timed_commit(offsets):
        ok = commit(offsets)
        marks["last_commit"] = time.perf_counter()
        return ok

    consumer.batch_of, offsets.commit = timed_batch, timed_commit
    return marks


def median_run(runs: list[dict]) -> dict:
    """The run of median ``seconds`` (of an odd number of runs)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def consume(batch: int) -> dict:
    from consumer.runner import ConsumerSettings, StreamConsumer

    consumer = StreamConsumer(
        ConsumerSettings(
            group_id=f"bench-{uuid.uuid4().hex[:8]}",
            max_batch=batch,
            until_drained=True,
            max_idle_seconds=120,
        )
    )
    workers = consumer.writer.workers
    if workers is not None:  # steady state: every write worker started (benchmark 9 times the start)
        workers.wait_ready(every=True)
    marks = mark_batches(consumer)
    write = consumer.writer.write_table

    def profiled_write(*args):  # the writer threads' own profile (pyinstrument follows one thread)
        with common.profiled(f"{NAME}_writer", append=True):
            return write(*args)

    if common.PROFILE:
        consumer.writer.write_table = profiled_write
    started = time.perf_counter()
    with common.profiled(NAME):
        stats = consumer.run()
    common.flush_profiles()
    stats["run_seconds"] = time.perf_counter() - started
    stats["join_seconds"] = marks.get("first_batch", started) - started
    stats["seconds"] = marks.get("last_commit", started) - marks.get("first_batch", started)
    return stats


def empty_stores() -> None:
    """Our project's online tables and the snapshot tables emptied: every run of ours inserts, as
    the first did (a replay into stores that hold the same rows writes nothing, and is faster)."""
    project = os.environ["FEAST_PROJECT"]
    with common.connect(autocommit=True) as conn:
        for table in schema.TABLES:
            conn.execute(f'TRUNCATE "{project}_{table.feature_view}", "{table.snapshot_table}"')


def bare_poll(events: int, batch: int) -> dict:
    """Read the same records with the same client and settings, doing nothing with them."""
    from streamflow import kafka_clients

    client = kafka_clients.group_consumer(f"bench-bare-{uuid.uuid4().hex[:8]}", max_poll_records=batch)
    try:
        client.subscribe(table_topics())
        seen, first, deadline = 0, None, time.monotonic() + 300
        poll_wall = poll_cpu = 0.0  # in the poll calls after the first records (bench.consumer_split)
        while seen < events and time.monotonic() < deadline:
            started, started_cpu = time.perf_counter(), time.thread_time()
            records = client.poll(timeout_ms=500)
            if first is not None:
                poll_wall += time.perf_counter() - started
                poll_cpu += time.thread_time() - started_cpu
            elif records:
                first = time.perf_counter()
            seen += sum(len(recs) for recs in records.values())
        last = time.perf_counter()
    finally:
        client.close(autocommit=False)
    if seen < events:
        raise RuntimeError(f"bare poll loop read {seen:,} of {events:,} records within 300 s")
    return {"records": seen, "seconds": last - (first or last), "poll": [poll_wall, poll_cpu]}


def stock_push(folder, batch: int) -> tuple[int, float]:
    store = common.stock_store()
    frames = read_snapshot(folder)
    as_of = schema.as_of_timestamp(schema.snapshot_as_of(folder.name))
    pushes = []
    for table in schema.TABLES:
        frame = frames[table.name].assign(**{schema.SNAPSHOT_TIME: as_of, schema.EVENT_SNAPSHOT: folder.name})
        frame = frame[push_columns(table)]
        pushes += [(table.push_source, frame.iloc[i : i + batch]) for i in range(0, len(frame), batch)]
    store.push(pushes[0][0], pushes[0][1].head(10), to=PushMode.ONLINE)  # warm-up: connection, registry
    started = time.perf_counter()
    for source, frame in pushes:
        store.push(source, frame, to=PushMode.ONLINE)
    return sum(len(f) for _, f in pushes), time.perf_counter() - started


def run(args) -> dict:
    common.use_topics("consumer")
    folder = common.snapshots(args.users)["month_000"]
    events = produce(folder)
    common.say(f"  produced {events:,} events (not timed)")
    ours_runs = []
    for _ in range(1 if common.PROFILE else 3):  # a short run: the median of three, each on emptied stores
        empty_stores()
        ours_runs.append(consume(args.batch))
    ours = median_run(ours_runs)
    ours_times = ", ".join(f"{r['seconds']:.2f}" for r in ours_runs)
    common.say(
        f"  ours : {ours['written']:,.0f} events written in {ours['seconds']:.2f} s "
        f"(+{ours['join_seconds']:.2f} s group join), {ours['batches']:.0f} batches "
        f"(median of {ours_times})"
    )
    runs = [bare_poll(events, args.batch) for _ in range(3)]  # a short run: the median of three
    bare = median_run(runs)
    times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    common.say(f"  bare : {bare['records']:,} records polled in {bare['seconds']:.2f} s (median of {times})")
    rows, seconds = stock_push(folder, args.batch)
    common.say(f"  stock: {rows:,} rows pushed online in {seconds:.2f} s")
    ours_rate, stock_rate = common.rate(ours["written"], ours["seconds"]), common.rate(rows, seconds)
    bare_rate = common.rate(bare["records"], bare["seconds"])
    limit = common.row(
        "2 consumer end to end",
        "events/s (ours: Kafka→validate→online+offline→commit; baseline: a bare "
        "poll loop of the same client, same records)",
        ours_rate,
        bare_rate,
        "events/s",
        "≥ 0.6× (stretch 0.8×)",
        ours_rate >= 0.6 * bare_rate,
        note=f"ours including the group join: {common.rate(ours['written'], ours['run_seconds']):,.0f} "
        "events/s.",
    )
    peer = common.row(
        "2 consumer end to end",
        "events/s (ours as above; baseline: stock push ONLINE only, no Kafka, no offline write)",
        ours_rate,
        stock_rate,
        "events/s",
        "≥ 1.5×",
        ours_rate >= 1.5 * stock_rate,
    )
    return {
        "rows": [limit, peer],
        "details": {
            "users": args.users,
            "events": events,
            "batch": args.batch,
            "ours": ours,
            "ours_runs": [r["seconds"] for r in ours_runs],
            "bare_poll": bare,
            "bare_poll_runs": runs,
            "stock": {"rows": rows, "seconds": seconds},
            "method": "events produced first (not timed); our consumer in-process, from its first "
            "batch to its last commit (median of 3, each in a fresh group on emptied stores); "
            "a bare poll loop of the same client (median of 3); "
            "stock push of the same rows (typed frames of the same CSVs) in batches of the "
            "same size, online only.",
        },
    }
