"""streamflow-consumer: one member of the consumer group that feeds Feast's push sources.

    streamflow consume [--group G] [--until-drained] [--metrics-port 9108] [--max-outage SECONDS]
                       [--processes N]

Run several processes with the same group to share the partitions (``--processes N`` runs N of
them under one supervisor: consumer/supervisor.py). SIGTERM/SIGINT finish the
current batch (or abandon it, uncommitted, while its writes are being retried), commit what was
written and leave the group. No error of the Kafka client ends it: each is one log line, then a
backoff; a client that keeps failing is replaced by a new one that rejoins the group. It exits
(code 4) only when Kafka stays unreachable longer than --max-outage, if given.

It connects to PostgreSQL as the consumer's role (POSTGRES_CONSUMER_USER; streamflow.db_roles), never as
the owner, and stops at once (code 2, one line saying to run `streamflow apply`) when that role cannot
log in or lacks a grant.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading

from consumer import supervisor
from streamflow import config, logs
from streamflow.errors import StreamflowError

log = logging.getLogger("consumer")


def parser() -> argparse.ArgumentParser:
    env = config.settings().consumer  # every default below: its STREAMFLOW_* variable (streamflow config)
    p = argparse.ArgumentParser(prog="streamflow consume", description=__doc__.splitlines()[0])
    p.add_argument("--group", default=env.group, help="consumer group (default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=env.max_batch,
        help="most events per poll (what is polled while a batch is written is written and "
        "committed together, up to 50,000 events)",
    )
    p.add_argument(
        "--until-drained",
        action="store_true",
        help="stop once every assigned partition is consumed to its end",
    )
    p.add_argument("--max-idle", type=float, default=None, help="stop after this many seconds without events")
    p.add_argument(
        "--instance-id",
        default=env.instance_id,
        help="static group membership: a restarted consumer with the same id resumes its "
        "partitions at once instead of after the session timeout (15 s); one id per process "
        "(with --processes, member i gets ID-i)",
    )
    _add_operations(p, env)
    return p


def _add_operations(p: argparse.ArgumentParser, env: config.Consumer) -> None:
    """Metrics, workers, topics, outage budget and scale-out."""
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env.metrics_port,
        help="serve Prometheus metrics on this port (with --processes, member i on PORT+i)",
    )
    p.add_argument(
        "--metrics-addr",
        default=env.metrics_addr,
        help="address of the metrics server (0.0.0.0 in a container)",
    )
    p.add_argument(
        "--write-processes",
        type=int,
        default=env.write_processes,
        metavar="N",
        help="worker processes that decode and write the batches, outside the loop's interpreter "
        "lock (default: %(default)s; 0: in this process)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of topics created (default: STREAMFLOW_PARTITIONS, 4)",
    )
    p.add_argument(
        "--max-outage",
        type=float,
        metavar="SECONDS",
        default=env.max_outage,
        help="exit (code 4) once Kafka has been unreachable this long; default: wait forever",
    )
    p.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N members of the group, each its own process, under a supervisor that forwards "
        "SIGTERM/SIGINT to all and restarts a member that crashes; member i (0..N-1) gets "
        "--metrics-port PORT+i and --instance-id ID-i (default 1: this process consumes)",
    )
    p.add_argument("--member", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    config.use_role("consumer")  # this process and its --processes members (streamflow.db_roles)
    if args.member is None and args.processes > 1:
        if args.metrics_port and args.metrics_port + args.processes - 1 > 65535:
            p.error(f"--metrics-port {args.metrics_port} + --processes {args.processes}: ports beyond 65535")
        logs.setup()
        return supervisor.main(args, argv)
    logs.setup()
    if args.member is None:
        return consume(args)
    supervisor.tag_member_logs(args.member)
    try:
        return consume(args)
    finally:
        supervisor.ignore_stop_signals()


def consume(args: argparse.Namespace) -> int:
    """Run this process's member of the group until it is stopped, drained or idle; the exit code."""
    # `kill -USR1 <pid>` prints every thread's stack to stderr: where a stuck consumer waits
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # The write workers import Feast and open the store while this process imports the rest and
    # connects to Kafka: started first, before the imports below.
    from consumer.write_workers import WriteWorkers

    workers = WriteWorkers(args.write_processes) if args.write_processes > 0 else None
    try:
        return _consume(args, workers)
    except BaseException:
        if workers is not None:
            workers.close()  # the consumer owns them once it exists (and closes them itself)
        raise


def _consume(args: argparse.Namespace, workers) -> int:
    from consumer.outage import Outage
    from consumer.runner import StreamConsumer
    from consumer.settings import ConsumerSettings
    from streamflow import kafka_clients
    from streamflow.kafka_topics import ensure_topics
    from streamflow.topics import dead_letter_topic, table_topics

    settings = ConsumerSettings(
        group_id=args.group,
        max_batch=args.max_batch,
        until_drained=args.until_drained,
        max_idle_seconds=args.max_idle,
        instance_id=args.instance_id,
        max_outage=args.max_outage,
        write_processes=args.write_processes,
    )
    starting = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: starting.set())
    signal.signal(signal.SIGINT, lambda *_: starting.set())
    if args.member is not None:
        supervisor.accept_signals()
    try:
        outage = Outage(kafka_clients.settings().bootstrap_servers, starting, max_outage=args.max_outage)
        outage.connect(
            "creating the topics",
            lambda: ensure_topics(table_topics() + [dead_letter_topic()], partitions=args.partitions),
        )
        consumer = StreamConsumer(settings, stopping=starting, workers=workers)
    except StreamflowError as exc:
        if workers is not None:
            workers.close()
        if starting.is_set():
            log.info("stopped while starting")
            return 0
        log.error("%s", exc)
        return exc.exit_code
    return _run(consumer, args)


def _run(consumer, args: argparse.Namespace) -> int:
    """Serve the metrics, stop on SIGTERM/SIGINT after the current batch, run; the exit code."""
    if args.metrics_port:
        consumer.metrics.serve(args.metrics_port, args.metrics_addr)
        log.info("metrics on http://%s:%d/metrics", args.metrics_addr, args.metrics_port)

    def stop(signum, _frame):
        if consumer.stopping.is_set():  # a member gets Ctrl-C from the terminal and from its supervisor
            return
        log.info(
            "signal %s: finishing the current batch, then leaving the group", signal.Signals(signum).name
        )
        consumer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stats = consumer.run()
    except StreamflowError as exc:  # the outage budget ran out
        log.error("%s", exc)
        return exc.exit_code
    tag = "" if args.member is None else f"[member {args.member}] "
    print(
        tag
        + "consumed {consumed:.0f}, written {written:.0f}, dead-lettered {dead_lettered:.0f}, "
        "batches {batches:.0f}, write retries {write_retries:.0f}".format(**stats)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
