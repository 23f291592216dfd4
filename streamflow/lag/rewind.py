"""`streamflow rewind`: move a stopped consumer group back on purpose, so that it replays events.

    streamflow rewind --to earliest|latest|<ISO 8601 time> [--group G] [--topic T ...] [--dry-run]

Kafka's own tool (``kafka-consumer-groups --reset-offsets``) does the same, but a lag monitor
cannot tell its rewind from an accident (expired offsets, a consumer that lost its commits), and
reports REWIND: an error. This command first writes a *rewind mark* -- the offsets it resets to,
with the time, as the committed offsets of the group ``<group>.rewinds``, which no consumer
writes to -- and then resets the group. ``streamflow lag``, ``/lag`` and the metrics then report
the rewound partitions as REPLAY, not as an alarm.

The group must have no active member (Kafka refuses commits from outside a live group): stop
its consumers first. ``--to <time>`` moves each partition to the first event produced at or
after that time (to the log end where there is none).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from kafka import TopicPartition
from kafka.admin import OffsetSpec, OffsetTimestamp
from kafka.structs import OffsetAndMetadata

from streamflow import logs
from streamflow.errors import StreamflowError
from streamflow.lag import options
from streamflow.lag.marks import REPLAY_MARK, marks_group
from streamflow.lag.monitor import LagMonitor


class RewindRefused(StreamflowError):
    exit_code = 1


def parser() -> argparse.ArgumentParser:

    p = argparse.ArgumentParser(
        prog="streamflow rewind",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[4:]),
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="earliest|latest|TIME",
        help="where to move the group: the log start, the log end, or a time (ISO 8601)",
    )
    options.add_group_and_topics(p, "rewind")
    p.add_argument("--dry-run", action="store_true", help="print the new offsets, change nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)"
    )
    return p


def target(to: str):
    """The OffsetSpec / OffsetTimestamp for ``--to``; a clear error for anything else."""
    if to == "earliest":
        return OffsetSpec.EARLIEST
    if to == "latest":
        return OffsetSpec.LATEST
    try:
        when = datetime.fromisoformat(to)
    except ValueError:
        raise RewindRefused(
            f"--to {to!r}: expected earliest, latest or an ISO 8601 time (e.g. 2026-12-03T09:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return OffsetTimestamp(int(when.timestamp() * 1000))


def rewind(monitor: LagMonitor, to: str, dry_run: bool = False) -> list[dict]:
    """Mark, then reset the group's offsets; returns one row per partition (old and new offsets).
    Raises RewindRefused while the group has members."""
    spec = target(to)
    sample = monitor.sample()
    if sample.members:
        raise RewindRefused(
            f"group {monitor.group} has {sample.members} active member(s): stop its consumers "
            f"first (Kafka refuses offsets from outside a live group)"
        )
    tps = [TopicPartition(p.topic, p.partition) for p in sample.partitions]
    if not tps:
        raise RewindRefused(f"no partitions to rewind (topics missing: {', '.join(sample.missing_topics)})")
    admin = monitor.admin
    found = monitor.call(
        "looking up the new offsets",
        admin.list_partition_offsets,  # noqa: SLF001
        {tp: spec for tp in tps},
    )
    rows = []
    for p in sample.partitions:
        tp = TopicPartition(p.topic, p.partition)
        new = found[tp].offset
        if new is None or new < 0:  # no event at or after the time: the log end
            new = p.log_end_offset
        new = max(p.log_start_offset, min(new, p.log_end_offset))
        rows.append(
            {
                "topic": p.topic,
                "partition": p.partition,
                "from": p.position,
                "to": new,
                "replays": max(0, p.position - new),
            }
        )
    if dry_run:
        return rows
    now = datetime.now(timezone.utc)
    mark = f"{REPLAY_MARK} {now.isoformat().replace('+00:00', 'Z')}"
    offsets = {TopicPartition(r["topic"], r["partition"]): r["to"] for r in rows}
    _alter(
        monitor, marks_group(monitor.group), {tp: OffsetAndMetadata(o, mark, -1) for tp, o in offsets.items()}
    )
    _alter(monitor, monitor.group, {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
    return rows


def _alter(monitor: LagMonitor, group: str, offsets: dict) -> None:
    result = monitor.call(
        f"setting the offsets of group {group}",  # noqa: SLF001
        monitor.admin.alter_group_offsets,
        group,
        offsets,
    )
    failed = {tp: err for tp, err in (result or {}).items() if getattr(err, "errno", 0)}
    if failed:
        tp, err = next(iter(failed.items()))
        raise RewindRefused(
            f"Kafka refused the offsets of group {group} for {len(failed)} partition(s), "
            f"e.g. {tp.topic}[{tp.partition}]: {err.__name__}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(logs.configured_level("WARNING"))
    try:
        with LagMonitor(args.bootstrap, group=args.group, topics=args.topics) as monitor:
            rows = rewind(monitor, args.to, dry_run=args.dry_run)
    except StreamflowError as exc:
        print(
            " ".join(str(exc).split()) if str(exc).startswith("Kafka unreachable") else f"error: {exc}",
            file=sys.stderr,
        )
        return exc.exit_code
    total = sum(r["replays"] for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "group": args.group,
                    "to": args.to,
                    "dry_run": args.dry_run,
                    "partitions": rows,
                    "replays": total,
                }
            )
        )
        return 0
    width = max(len(r["topic"]) for r in rows)
    for r in rows:
        print(f"{r['topic']:<{width}}  [{r['partition']}]  {r['from']} -> {r['to']}")
    verb = "would rewind" if args.dry_run else "rewound"
    print(
        f"{verb} group {args.group} on {len(rows)} partitions: {total:,} events to replay"
        + (
            ""
            if args.dry_run
            else "; start its consumers: `streamflow lag` reports the rewound "
            "partitions as REPLAY while they catch up"
        )
    )
    return 0
