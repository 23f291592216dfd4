"""What one member of the consumer group is told: its group, its batch bounds, its timeouts.

``consumer.cli`` builds it from the command line and the ``STREAMFLOW_*`` settings; the tests and
benchmarks build it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamflow import config


@dataclass
class ConsumerSettings:
    """The settings of one :class:`consumer.runner.StreamConsumer`."""

    group_id: str = config.DEFAULT_CONSUMER_GROUP
    bootstrap: str = ""
    max_batch: int = 5000
    """Records one poll returns at most (``max_poll_records``)."""
    max_write_batch: int = 50_000
    """Events gathered from several polls while a batch is being written, at most: the loop waits
    for the write before it polls more (what is polled but not written is held in memory)."""
    poll_timeout_ms: int = 500
    """Milliseconds a poll waits for records (longer while the member joins its group:
    ``kafka_clients.poll_timeout_ms``)."""
    retry_initial: float = 0.5
    retry_max: float = 15.0
    until_drained: bool = False
    max_idle_seconds: float | None = None
    instance_id: str | None = None
    """Static group membership (KIP-345): a consumer restarted with the same instance id takes its
    partitions back at once, without waiting for the dead one's session to expire."""
    max_outage: float | None = None
    """Seconds Kafka may stay unreachable before the consumer gives up (None: wait forever)."""
    probe_interval: float = 2.0
    """While no records come, seconds between two checks that the broker still answers."""
    join_timeout: float = 30.0
    """Seconds a member may stay outside the group (not joined, no partition) before its client
    is replaced (a join that never completes, e.g. one sent just before a broker restart)."""
    hang_limit: float | None = None
    """Seconds a single client call may run before the watchdog closes the client (None: the
    request timeout plus 30 s)."""
    commit_timeout: float | None = None
    """Seconds one commit may retry inside the client before it counts as failed (None: the request
    timeout, 30 s, so that a commit sent during a short broker restart is made once the broker is
    back). A client whose commits keep failing for ``join_timeout`` is replaced."""
    write_processes: int = 2
    """Worker processes that push the batches' tables (``consumer.push_workers``), so that two
    tables are written at once outside the loop's interpreter lock; 0: the pushes run in two
    threads of the loop's own process."""
    switch_interval: float = 0.0005
    """Seconds a thread may hold Python's interpreter lock while another waits for it
    (``sys.setswitchinterval``, set while the loop runs; Python's default is 0.005): the loop's
    thread parses records in pure Python most of the time, and a writer thread gives the lock up
    and takes it back on every Arrow kernel and PostgreSQL round trip (docs/explanation/consumer.md)."""
    leave_timeout: float = 10.0
    """Seconds a stopping consumer keeps trying to commit the written batches whose commit failed
    (the group was rebalancing), back in its group, before it leaves; what stays uncommitted is
    read again by the partitions' next owner."""
    stall_timeout: float = 20.0
    """Seconds without records while assigned partitions lag before the client counts as stuck
    and is replaced (kafka-python 3.0 was seen to stop fetching after a broker restart without
    raising anything)."""
