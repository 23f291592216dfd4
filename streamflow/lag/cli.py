"""`streamflow lag`: a consumer group's lag per partition, in messages and seconds, with statuses.

    streamflow lag [--group G] [--json] [--watch [SECONDS]] [--window N] [--samples N]

Prints the columns of ``kafka-consumer-groups.sh --describe`` plus LAG-SECONDS (age of the oldest
unconsumed event, by its produce time) and a Burrow-style STATUS, then per-topic and group totals.
A status compares samples, so without --watch the command takes --samples samples (default 3)
--interval seconds apart (default 1) and reports the last one evaluated over all of them; with
--watch it samples every SECONDS (default 5) until interrupted (or --samples are taken) and the
statuses are evaluated over the last --window samples. --json prints the same data as one JSON
object (with --watch: one object per line).

While Kafka cannot be reached the command prints one line "Kafka unreachable at <servers>: ..."
(on stderr, no traceback) and exits with code 4; with --watch it prints that line each round
instead of the table and goes on: the table comes back by itself once the broker answers (the
rounds that failed do not count as --samples). Likewise, --watch reports topics that do not exist
(yet) each round instead of exiting with code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from typing import Any, TextIO

from streamflow import logs
from streamflow.errors import ServiceUnavailable, StreamflowError
from streamflow.lag import options
from streamflow.lag.monitor import GroupLag, LagMonitor
from streamflow.lag.status import GroupStatus, Status, StatusEvaluator, group_status

log = logging.getLogger("streamflow.lag")

COLUMNS = (
    "GROUP",
    "TOPIC",
    "PARTITION",
    "CURRENT-OFFSET",
    "LOG-END-OFFSET",
    "LAG",
    "LAG-SECONDS",
    "DRAIN-SECONDS",
    "CONSUMER-ID",
    "HOST",
    "CLIENT-ID",
    "STATUS",
)
TOTAL_COLUMNS = ("GROUP", "TOPIC", "PARTITIONS", "LAG", "LAG-SECONDS", "DRAIN-SECONDS", "STATUS")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamflow lag",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[4:]),
    )
    options.add_group_and_topics(p, "report")
    p.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=5.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 5) until interrupted",
    )
    p.add_argument(
        "--window",
        type=int,
        default=5,
        metavar="N",
        help="samples the statuses are evaluated over (default %(default)s)",
    )
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="an unmoved committed offset with lag is STOP after this long, STALL before (default: 60 s)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="samples to take (default 3, or unlimited with --watch)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between samples without --watch (default %(default)s)",
    )
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="connection and request timeout (default %(default)s)",
    )
    return p


# -- rendering ----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def report(sample: GroupLag, status: GroupStatus) -> dict[str, Any]:
    """The JSON document of one sample and its evaluation."""
    doc = sample.to_dict()
    doc["status"] = status.status.value
    doc["samples"] = status.samples
    doc["consume_rate"] = status.to_dict()["consume_rate"]
    doc["drain_seconds"] = status.to_dict()["drain_seconds"]
    for topic_doc in doc["topics"]:
        statuses = []
        drains: list[float | None] = []
        for pdoc in topic_doc["partitions"]:
            ps = status.partitions.get((pdoc["topic"], pdoc["partition"]))
            pdoc["status"] = ps.status.value if ps else Status.UNKNOWN.value
            pdoc["status_reason"] = ps.reason if ps else "not evaluated"
            pdoc["consume_rate"] = round(ps.consume_rate, 3) if ps and ps.consume_rate is not None else None
            pdoc["drain_seconds"] = (
                round(ps.drain_seconds, 3) if ps and ps.drain_seconds is not None else None
            )
            drains.append(pdoc["drain_seconds"])
            statuses.append(Status(pdoc["status"]))
        topic_doc["status"] = group_status(statuses).value
        topic_doc["drain_seconds"] = (
            None if any(d is None for d in drains) else max((d for d in drains if d is not None), default=0.0)
        )
    return doc


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() + "\n")


def render(sample: GroupLag, status: GroupStatus, out: TextIO) -> None:
    """The lag report as text: one row per partition, one per topic, then the group's summary."""
    doc = report(sample, status)
    rows: list[tuple[str, ...]] = [COLUMNS]
    totals: list[tuple[str, ...]] = [TOTAL_COLUMNS]
    notes: list[str] = []
    for topic in doc["topics"]:
        for p in topic["partitions"]:
            rows.append(_partition_row(sample.group, p))
            if p["status"] not in (Status.OK.value, Status.UNKNOWN.value, Status.NEW.value):
                notes.append(f"{p['topic']}[{p['partition']}] {p['status']}: {p['status_reason']}")
        totals.append(
            (
                sample.group,
                topic["topic"],
                str(len(topic["partitions"])),
                str(topic["lag"]),
                _seconds(topic["lag_seconds"]),
                _seconds(topic["drain_seconds"]),
                topic["status"],
            )
        )
    _table(rows, out)
    out.write("\n")
    _table(totals, out)
    out.write("\n")
    _summary(sample, status, notes, out)


def _partition_row(group: str, p: dict) -> tuple[str, ...]:
    return (
        group,
        p["topic"],
        str(p["partition"]),
        str(p["committed_offset"]) if p["committed_offset"] is not None else "-",
        str(p["log_end_offset"]),
        str(p["lag"]),
        _seconds(p["lag_seconds"]),
        _seconds(p["drain_seconds"]),
        p["consumer_id"] or "-",
        p["host"] or "-",
        p["client_id"] or "-",
        p["status"],
    )


def _summary(sample: GroupLag, status: GroupStatus, notes: list[str], out: TextIO) -> None:
    members = f"{sample.members} member{'s' if sample.members != 1 else ''}"
    span = ""
    if status.samples > 1:
        span = f" over {status.samples} samples"
    out.write(
        f"group {sample.group} ({sample.state}, {members}): lag {sample.lag} messages, "
        f"oldest unconsumed event {_seconds(sample.lag_seconds)} s old, status {status.status.value}{span}\n"
    )
    if status.consume_rate is not None and sample.lag > 0 and status.status != Status.NEW:
        drain = (
            f"drains in {_seconds(status.drain_seconds)} s"
            if status.drain_seconds is not None
            else "does not drain at this rate"
        )
        out.write(f"consuming {status.consume_rate:,.1f} events/s over the window: {drain}\n")
    if status.status == Status.UNKNOWN:
        out.write("status UNKNOWN: one sample cannot tell progress; take more (--samples, --watch)\n")
    for note in notes:
        out.write(f"  {note}\n")
    if status.status == Status.NEW or (
        sample.members == 0 and sample.topics and all(p.committed_offset is None for p in sample.partitions)
    ):
        out.write(
            f"no commits yet: group {sample.group} has no members and no committed offsets "
            f"(it never consumed, or was deleted); lag counts from the log start\n"
        )
    if sample.missing_topics:
        out.write(f"note: topics not on the broker: {', '.join(sample.missing_topics)}\n")


# -- main ---------------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _unreachable(exc: ServiceUnavailable) -> None:
    """The one line of a sample that could not reach Kafka ("Kafka unreachable at ...")."""
    message = " ".join(str(exc).split())  # one line, whatever the cause's text holds
    print(
        message if message.startswith("Kafka unreachable") else f"error: {message}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.window < 2:
        parser().error("--window must be at least 2")
    if args.watch is not None and args.watch <= 0:
        parser().error("--watch SECONDS must be positive")
    if args.samples is not None and args.samples < 1:
        parser().error("--samples must be at least 1")
    level = logs.configured_level("WARNING")
    logs.setup(level)
    if level != "DEBUG":
        # kafka-python logs every refused connection at ERROR; the one-line error below says it.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    samples = args.samples if args.samples is not None else (None if args.watch is not None else 3)
    interval = args.watch if args.watch is not None else args.interval
    evaluator = StatusEvaluator(
        window=args.window, stop_after_seconds=args.stop_after, min_samples=min(2, args.window)
    )
    out = sys.stdout
    clear = args.watch is not None and not args.json and out.isatty()
    monitor = LagMonitor(
        args.bootstrap,
        group=args.group,
        topics=args.topics,
        timeout=args.timeout,
        read_timeout=min(3.0, args.timeout),
    )
    interrupted = threading.Event()
    try:
        with _interruptible(interrupted):
            return _sample_loop(args, monitor, evaluator, out, clear, samples, interval, interrupted)
    except ServiceUnavailable as exc:
        _unreachable(exc)
        return exc.exit_code
    except StreamflowError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:  # a second ^C, or one before the handler was in place
        return 0 if args.watch is not None else 130
    finally:
        monitor.close()


@contextlib.contextmanager
def _interruptible(interrupted: threading.Event):
    """SIGINT and SIGTERM set ``interrupted`` instead of raising inside the Kafka client (which
    may swallow the KeyboardInterrupt or be left unable to close): the loop ends after the sample
    in progress, whose requests are bounded by --timeout. A second SIGINT interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        if interrupted.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        interrupted.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _sample_loop(
    args,
    monitor: LagMonitor,
    evaluator: StatusEvaluator,
    out: TextIO,
    clear: bool,
    samples: int | None,
    interval: float,
    interrupted: threading.Event,
) -> int:
    stopped = 0 if args.watch is not None else 130
    taken = 0
    while not interrupted.is_set():
        started = time.monotonic()
        try:
            sample = monitor.sample()
        except ServiceUnavailable as exc:
            if args.watch is None:
                raise
            # The monitor dropped its clients: the next round reconnects from scratch.
            if clear:
                out.write("\033[2J\033[H")
                out.flush()
            _unreachable(exc)
            interrupted.wait(max(0.0, interval - (time.monotonic() - started)))
            continue
        if not sample.topics:
            _error(
                f"none of the topics exist on Kafka at {monitor.bootstrap}: "
                f"{', '.join(sample.missing_topics)} (nothing produced yet?)"
            )
            if args.watch is None:
                return 1
            # --watch goes on: the topics may be created (or a restarted broker know them again).
            interrupted.wait(max(0.0, interval - (time.monotonic() - started)))
            continue
        status = evaluator.add(sample)
        taken += 1
        last = samples is not None and taken >= samples
        if args.watch is not None or last:
            if args.json:
                out.write(json.dumps(report(sample, status)) + "\n")
            else:
                if clear:
                    out.write("\033[2J\033[H")
                elif args.watch is not None and taken > 1:
                    out.write("\n")
                render(sample, status, out)
            out.flush()
        if last:
            return 0
        interrupted.wait(max(0.0, interval - (time.monotonic() - started)))
    return stopped


if __name__ == "__main__":
    sys.exit(main())
