"""Where benchmark 2's consumer spends its time: a diagnostic, not part of the suite.

``python -m bench.consumer_split [--users N] [--rounds R]`` replays month_000 of N users (6 events
per user) into fresh topics once, then, R times each, on emptied stores:

* **ours**: ``StreamConsumer`` in-process as it runs in production (tables decoded and pushed by
  its write worker processes), from its first batch to its last commit (as benchmark 2 counts),
  with its loop's steps timed (wall time and the loop thread's CPU): ``poll`` (kafka-python
  fetching and parsing), ``group`` (the records by table) and ``wait for writes, commit`` (the loop
  waiting for the writes of a batch, then committing it; the commit is also shown on its own);
* **ours, one process**: the same with ``write_processes=0``: decoding and pushing in writer
  threads of the consumer's own process, under its interpreter lock;
* **bare**: a bare poll loop of the same client, its poll calls timed the same way.

For each run of ours it also reads the process's CPU time and the machine's busy and idle CPU time
(``/proc/stat``) over the whole run (group join included):
a machine that is half idle while the consumer runs means a consumer bound by waits, not by CPU.
Prints a table; writes ``bench/results/consumer_split.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from bench import common, consumer_e2e  # noqa: I001  (common first: sets the benchmark environment)
from consumer.settings import ConsumerSettings

NAME = "consumer_split"
STEPS = {"poll": "poll", "batch_of": "group", "_commit_written": "wait for writes, commit"}


def machine_cpu() -> tuple[float, float]:
    """Seconds of busy and of idle CPU time of the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / 100, idle / 100


def timed_steps(consumer) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wrap the loop's steps of one consumer: per step, [wall seconds, loop-thread CPU seconds],
    counted from the first batch on (as benchmark 2 and the bare loop count: not the group join);
    and the marks of the first batch and the last commit."""
    spent = {label: [0.0, 0.0] for label in [*STEPS.values(), "of which commit"]}
    offsets = consumer.client.offsets
    commit = offsets.commit

    def timed_commit(offsets):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return commit(offsets)
        finally:
            spent["of which commit"][0] += time.perf_counter() - wall
            spent["of which commit"][1] += time.thread_time() - cpu

    offsets.commit = timed_commit
    marks = consumer_e2e.mark_batches(consumer)  # inside the step timers below
    polls = [0.0, 0.0]
    for method, label in STEPS.items():
        owner = consumer.client if method == "poll" else consumer  # the group client polls
        inner = getattr(owner, method)

        def step(*args, _inner=inner, _label=label, **kwargs):
            if _label == "group":
                # the polls since the last batch led to this one (those after the last batch, which
                # only wait until the partitions are seen drained, are not counted)
                spent["poll"][0] += polls[0]
                spent["poll"][1] += polls[1]
                polls[:] = [0.0, 0.0]
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return _inner(*args, **kwargs)
            finally:
                if "first_batch" in marks:
                    into = polls if _label == "poll" else spent[_label]
                    into[0] += time.perf_counter() - wall
                    into[1] += time.thread_time() - cpu

        setattr(owner, method, step)
    return spent, marks


def ours(events: int, write_processes: int) -> dict:
    from consumer.runner import ConsumerSettings, StreamConsumer

    consumer_e2e.empty_stores()
    consumer = StreamConsumer(
        ConsumerSettings(
            group_id=f"split-{uuid.uuid4().hex[:8]}",
            until_drained=True,
            max_idle_seconds=120,
            write_processes=write_processes,
        )
    )
    if consumer.writer.workers is not None:  # steady state: every write worker started
        consumer.writer.workers.wait_ready(every=True)
    spent, marks = timed_steps(consumer)
    busy, idle = machine_cpu()
    cpu = time.process_time()
    stats = consumer.run()
    cpu = time.process_time() - cpu
    busy2, idle2 = machine_cpu()
    if stats["written"] < events:
        raise RuntimeError(f"the consumer wrote {stats['written']:,.0f} of {events:,} events")
    return {
        "seconds": marks["last_commit"] - marks["first_batch"],
        "process_cpu": cpu,
        "machine_busy": busy2 - busy,
        "machine_idle": idle2 - idle,
        "steps": spent,
    }


def bare(events: int, batch: int) -> dict:
    run = consumer_e2e.bare_poll(events, batch)
    return {"seconds": run["seconds"], "steps": {"poll": run["poll"]}}


def show(label: str, run: dict) -> str:
    steps = ", ".join(f"{k} {w:.2f} s ({c:.2f} CPU)" for k, (w, c) in run["steps"].items())
    extra = ""
    if "machine_busy" in run:
        share = run["machine_busy"] / (run["machine_busy"] + run["machine_idle"])
        extra = f"; process CPU {run['process_cpu']:.2f} s; machine busy {share:.0%} of its 2 cores"
    return f"  {label:<24} {run['seconds']:.2f} s: {steps}{extra}"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.consumer_split", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    common.ensure_database()
    common.reset()
    common.use_topics(NAME)
    started = time.time()
    probe = common.speed_probe()
    try:
        events = consumer_e2e.produce(common.snapshots(args.users)["month_000"])
        common.say(f"produced {events:,} events; {args.rounds} rounds of each")
        results: dict[str, list[dict]] = {"ours": [], "ours, one process": [], "bare": []}
        for _ in range(args.rounds):  # interleaved: the machine's speed drifts
            results["ours"].append(ours(events, ConsumerSettings.write_processes))
            results["ours, one process"].append(ours(events, 0))
            results["bare"].append(bare(events, 5000))
    finally:
        common.delete_run_topics()
    medians = {label: consumer_e2e.median_run(runs) for label, runs in results.items()}
    print(
        f"{events:,} events, {args.rounds} rounds, medians (python loop {probe:.1f} ms at the start, "
        f"{common.speed_probe():.1f} ms at the end):"
    )
    for label, run in medians.items():
        print(show(label, run))
    for label in ("ours", "ours, one process"):
        ratio = medians["bare"]["seconds"] / medians[label]["seconds"]
        spread = ", ".join(f"{medians['bare']['seconds'] / r['seconds']:.2f}" for r in results[label])
        print(f"  {label} / bare: {ratio:.2f}x (each round against the median bare: {spread})")
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    out = common.RESULTS / f"{NAME}.json"
    out.write_text(json.dumps({"started": started, "events": events, "runs": results}, indent=1))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
