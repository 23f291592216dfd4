"""Whether the consumer's Kafka client is stuck although it raises nothing.

A client can stop making progress without an error (kafka-python 3.0 after a broker restart):
it stays outside its group, or stops fetching what its partitions hold, or has every commit
refused. Each is a condition with a clock (:class:`Since`); one that holds for longer than its
limit asks for a new client (``Outage.rebuild_wanted``), which rejoins at the committed offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaConsumer

from consumer.outage import Outage
from streamflow import kafka_clients

log = logging.getLogger("consumer")


class Since:
    """How long a condition has held: started by the first ``held()``, ended by ``clear()``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.start: float | None = None

    def held(self) -> float:
        """The condition holds now: seconds since it began (0 the first time)."""
        now = self.clock()
        if self.start is None:
            self.start = now
        return now - self.start

    def clear(self) -> None:
        self.start = None

    @property
    def holding(self) -> bool:
        return self.start is not None


class ClientHealth:
    """The three clocks of one client (a new client starts with new ones), and the checks that
    read them. ``join_timeout`` bounds the time outside the group and without a successful commit;
    ``stall_timeout`` the time without records while the partitions hold some."""

    def __init__(
        self,
        outage: Outage,
        group_id: str,
        join_timeout: float,
        stall_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.outage = outage
        self.group_id = group_id
        self.join_timeout = join_timeout
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.unjoined = Since(clock)
        """Outside the group (not joined, or rejoining)."""
        self.stalled = Since(clock)
        """No records although the assigned partitions hold more."""
        self.uncommitted = Since(clock)
        """Every commit refused although batches are written."""
        self._last_waiting = float("-inf")

    def _stuck(self, clock: Since, limit: float, message: str, *args) -> None:
        """Ask for a new client when ``clock`` has held longer than ``limit`` (then it restarts)."""
        seconds = clock.held()
        if seconds > limit:
            log.warning(message, seconds, *args)
            clock.clear()
            self.outage.rebuild_wanted = True

    def check_joined(self, client: KafkaConsumer) -> None:
        """A member that stays outside its group for ``join_timeout`` has a stuck client."""
        if kafka_clients.joined(client):
            self.unjoined.clear()
            return
        self._stuck(
            self.unjoined,
            self.join_timeout,
            "not in group for %.0f s (group %s, member %s): the client is stuck joining",
            self.group_id,
            kafka_clients.member_state(client),
        )

    def commit_failed(self, client: KafkaConsumer) -> None:
        """Commits that keep failing while records still come (a member whose group state never
        recovers from a broker restart: it fetches, but every commit is refused) mean a stuck
        client."""
        self._stuck(
            self.uncommitted,
            self.join_timeout,
            "no commit has succeeded for %.0f s although batches were written (member %s): "
            "the client is stuck",
            kafka_clients.member_state(client),
        )

    def probe(self, client: KafkaConsumer) -> None:
        """While no records come: does the broker still answer (ends or extends an outage), and
        does the client still fetch what the assigned partitions hold?"""
        assigned = self.outage.call("assignment", client.assignment, default=set())
        if not assigned:
            # Nothing to ask about (a member of a large group may own no partition). No metadata
            # refresh either: a forced re-bootstrap here kept a joining member from ever getting
            # its assignment. But a member that stays outside the group has a stuck client.
            self.stalled.clear()
            self.waiting(client, "no partition assigned")
            self.check_joined(client)
            return
        self.check_joined(client)  # assigned partitions, yet outside the group: commits are refused
        # One request, bounded; positions as the client knows them (asking for them would block
        # while the group rebalances and keep this member from rejoining).
        ends = self.outage.call("end_offsets", client.end_offsets, list(assigned), timeout_ms=3_000)
        if ends is None:
            return
        self.outage.ok()
        behind = unknown = 0
        for tp in assigned:
            position = kafka_clients.known_position(client, tp)
            if position is None:  # resolved within a moment when the coordinator works
                unknown += 1
            else:
                behind += max(0, ends.get(tp, 0) - position)
        if not behind and not unknown:
            self.stalled.clear()
            return
        self.waiting(
            client,
            f"{len(assigned)} partitions assigned, {behind} records behind, "
            f"{unknown} without a known position",
        )
        self._stuck(
            self.stalled,
            self.stall_timeout,
            "no records for %.0f s although the assigned partitions hold %d more (%d without a "
            "known position): the client is stuck",
            behind,
            unknown,
        )

    def waiting(self, client: KafkaConsumer, why: str) -> None:
        """While no records come: one line per 30 s with what the client knows of its group."""
        now = self.clock()
        if now - self._last_waiting < 30:
            return
        self._last_waiting = now
        log.info("waiting for records: %s; member %s", why, kafka_clients.member_state(client))
