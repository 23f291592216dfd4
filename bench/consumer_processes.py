"""2b. Consumer scale-out: ``streamflow consume --processes 2`` vs ``--processes 1``, end to end.

month_000 of N users (6 events per user) is replayed into fresh topics once (not timed). Then
each command runs as a subprocess with ``--until-drained`` in a fresh group over the same events,
on emptied stores (each run inserts the same rows, instead of the second one finding them
written): ``python -m consumer.cli --processes K --until-drained --max-batch B``. Timed from
the process start to its exit (process start-up, imports, group join, consumption, leaving the
group), and apart from the first 'wrote' log line (the first batch written by any member) to the
exit: the consumption without the start-up and the join. Log lines are time-stamped as they
arrive through a pipe (the log format itself has seconds only).

On this machine the 2 cores are shared by the members, PostgreSQL and the broker: a second
process helps only as far as one member leaves a core idle (waiting on PostgreSQL or Kafka).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

from bench import common  # noqa: I001  (first: sets the benchmark environment)
from bench.consumer_e2e import produce

NAME = "consumer_processes"
WROTE = re.compile(r"\bwrote \d+ (?:rows|events)\b")  # consumer.runner: "wrote N events of TABLE" (DEBUG)
SUMMARY = re.compile(r"consumed (\d+), written (\d+),")


def consume(processes: int, batch: int) -> dict:
    """One ``consume --processes N --until-drained`` run in a fresh group; its timings and counts."""
    command = [
        sys.executable,
        "-m",
        "consumer.cli",
        "--group",
        f"bench-{uuid.uuid4().hex[:8]}",
        "--processes",
        str(processes),
        "--until-drained",
        "--max-batch",
        str(batch),
    ]
    env = {**os.environ, "STREAMFLOW_LOG_LEVEL": "DEBUG"}  # DEBUG: one 'wrote' line per table and batch
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=common.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    first_write, lines = None, []
    for line in proc.stdout:
        if first_write is None and WROTE.search(line):
            first_write = time.perf_counter()
        lines.append(line.rstrip("\n"))
    code = proc.wait()
    ended = time.perf_counter()
    if code != 0:
        raise RuntimeError(
            f"consume --processes {processes} exited with code {code}: " + "\n".join(lines[-15:])
        )
    if first_write is None:  # the figures after the first write would silently be the whole run
        raise RuntimeError(f"consume --processes {processes}: no 'wrote N events' line in its DEBUG log")
    written = [int(w) for _, w in (SUMMARY.search(ln).groups() for ln in lines if SUMMARY.search(ln))]
    return {
        "processes": processes,
        "seconds": ended - started,
        "first_write_seconds": (first_write or ended) - started,
        "after_first_write_seconds": ended - (first_write or started),
        "written": sum(written),
        "written_per_member": written,
    }


def run(args) -> dict:
    common.use_topics("processes")
    folder = common.snapshots(args.users)["month_000"]
    events = produce(folder)
    common.say(f"  produced {events:,} events (not timed)")
    runs = {}
    for processes in (1, 2):
        common.reset()  # empty stores: both runs insert the same rows
        runs[processes] = r = consume(processes, args.batch)
        if r["written"] < events:
            raise RuntimeError(f"--processes {processes} wrote {r['written']} of {events} events")
        common.say(
            f"  --processes {processes}: {r['written']:,} written {r['written_per_member']} in "
            f"{r['seconds']:.1f} s from start to exit, "
            f"first write after {r['first_write_seconds']:.1f} s"
        )
    one, two = runs[1], runs[2]
    whole = [common.rate(events, r["seconds"]) for r in (two, one)]
    consuming = [common.rate(events, r["after_first_write_seconds"]) for r in (two, one)]
    return {
        "rows": [
            common.row(
                "2b consumer scale-out",
                "events/s, process start → exit (ours: --processes 2; "
                "baseline: --processes 1), --until-drained",
                *whole,
                "events/s",
                note=f"start-up and join: {two['first_write_seconds']:.1f} s with 2 processes, "
                f"{one['first_write_seconds']:.1f} s with 1 (both on the same 2 cores).",
            ),
            common.row(
                "2b consumer scale-out", "events/s, first write → exit (same runs)", *consuming, "events/s"
            ),
        ],
        "details": {
            "users": args.users,
            "events": events,
            "batch": args.batch,
            "runs": runs,
            "method": "events produced first (not timed); each command a subprocess in a fresh group "
            "over the same events, stores emptied before each; timed from process start "
            "to exit, and from the first 'wrote' log line (as it arrives) to exit.",
        },
    }
