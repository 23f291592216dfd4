"""`streamflow produce`: replay snapshot folders as Kafka events.

    streamflow produce --snapshots month_000 month_001 [--rate N | --speedup X]

A snapshot is a folder name under the data directory ($STREAMFLOW_DATA_DIR, default data/)
or a path. Exit code 0 when every event was acknowledged by the broker, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from kafka.errors import KafkaError

from producer.replay import DELIVERY_TIMEOUT, Replayer, make_producer, prepare_topics
from streamflow import config, logs, schema
from streamflow.errors import StreamflowError

log = logging.getLogger("producer")


def resolve_folder(name: str) -> Path:
    path = Path(name)
    if path.is_dir():
        return path
    candidate = config.data_dir() / name
    if candidate.is_dir():
        return candidate
    raise StreamflowError(f"snapshot folder not found: {name} (looked in . and {config.data_dir()})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamflow produce", description=__doc__.splitlines()[0])
    p.add_argument("snapshot_args", nargs="*", metavar="SNAPSHOT", help="snapshot folders or names")
    p.add_argument(
        "--snapshots",
        nargs="+",
        default=None,
        help="snapshot folders or names (event-time order is enforced)",
    )
    p.add_argument("--tables", nargs="+", choices=[t.name for t in schema.TABLES], default=None)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    pace.add_argument(
        "--speedup",
        type=float,
        default=None,
        help="pace by event time: one month of event time takes 1/X of a month",
    )
    p.add_argument("--partitions", type=int, default=None, help="partitions of topics created (default 4)")
    p.add_argument(
        "--delivery-timeout",
        type=float,
        default=DELIVERY_TIMEOUT,
        metavar="SECONDS",
        help="give up on an event the broker has not acknowledged after this long, retries "
        "included; it is reported and the exit code is 1 (default %(default).0f)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup()
    names = (args.snapshots or []) + args.snapshot_args
    if not names:
        names = ["month_000", "month_001"]
    try:
        folders = [resolve_folder(n) for n in names]
        tables = [schema.table(n) for n in args.tables] if args.tables else None
        prepare_topics(args.partitions)
        replayer = Replayer(
            make_producer(delivery_timeout=args.delivery_timeout),
            rate=args.rate,
            speedup=args.speedup,
            progress=not args.no_progress and logs.progress_enabled(),
        )
    except (StreamflowError, ValueError) as exc:
        log.error("%s", exc)
        return getattr(exc, "exit_code", 2)

    def stop(signum, _frame):
        log.warning(
            "signal %s: stopping after the events already sent are flushed", signal.Signals(signum).name
        )
        replayer.stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stats = replayer.replay(folders, tables=tables)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    finally:
        try:
            replayer.producer.close(timeout=10)
        except KafkaError as exc:  # events still unacknowledged: counted below, not a traceback
            log.error("closing the producer: %s", exc)
    print(stats.summary())
    if stats.total_failed or stats.unacknowledged:
        log.error(
            "%d events failed and %d were not acknowledged",
            stats.total_failed,
            stats.unacknowledged - stats.total_failed,
        )
        for err in stats.errors[:5]:
            log.error("  %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
