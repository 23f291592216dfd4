"""What was re-driven: the PostgreSQL table ``streamflow_redrives`` (see :mod:`streamflow.dead_letters`).

One row per dead letter ever claimed by a redrive. ``pending``: claimed, maybe sent, not known to be
acknowledged; ``done``: acknowledged, with the partition and offset it got in its target topic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg

from streamflow import config
from streamflow.errors import ServiceUnavailable, StreamflowError

log = logging.getLogger(__name__)

TABLE = "streamflow_redrives"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    dlq_topic        TEXT        NOT NULL,
    dlq_partition    INTEGER     NOT NULL,
    dlq_offset       BIGINT      NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('pending', 'done')),
    target_topic     TEXT        NOT NULL,
    target_partition INTEGER,
    target_offset    BIGINT,
    claimed_at       TIMESTAMPTZ NOT NULL,
    redriven_at      TIMESTAMPTZ,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
)
"""

PENDING, DONE = "pending", "done"


@dataclass(frozen=True)
class Redrive:
    """One row: a dead letter claimed (pending) or re-driven (done)."""

    dlq_partition: int
    dlq_offset: int
    state: str
    target_topic: str
    target_partition: int | None
    target_offset: int | None
    claimed_at: datetime
    redriven_at: datetime | None

    @property
    def id(self) -> str:
        return f"{self.dlq_partition}:{self.dlq_offset}"


def unreachable(what: str, exc: BaseException) -> ServiceUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = config.postgres().describe()
    return ServiceUnavailable(f"{what}: PostgreSQL at {where} is not reachable ({first})")


class Ledger:
    """The redrive rows of one dead-letter topic, on one autocommit connection.

    ``writable``: create the table if needed and hold the topic's advisory lock (one redrive at a
    time; released when the connection closes, a crashed process's too)."""

    def __init__(self, dlq_topic: str, writable: bool = False):
        self.dlq_topic = dlq_topic
        self.writable = writable
        try:
            self.conn = psycopg.connect(config.postgres().conninfo, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise unreachable("opening the redrive ledger", exc) from None
        try:
            if writable:
                self._lock()
                try:
                    self.conn.execute(DDL)
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    pass  # created meanwhile by a redrive of another dead-letter topic
            row = self.conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
            assert row is not None  # a SELECT without FROM returns one row
            self.exists = row[0] is not None
        except psycopg.OperationalError as exc:
            self.close()
            raise unreachable("opening the redrive ledger", exc) from None
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s))", (f"{TABLE}:{self.dlq_topic}",)
        ).fetchone()
        assert row is not None  # a SELECT without FROM returns one row
        got = row[0]
        if not got:
            raise StreamflowError(
                f"another redrive of {self.dlq_topic} is running (it holds the lock "
                f"{TABLE}:{self.dlq_topic}); try again when it is done"
            )

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def _run(self, what: str, query: str, params: tuple = ()) -> list[tuple]:
        try:
            cur = self.conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError as exc:
            raise unreachable(what, exc) from None

    def rows(self, state: str | None = None) -> dict[str, Redrive]:
        """The topic's rows by dead-letter id (``partition:offset``), of one state or all."""
        if not self.exists:
            return {}
        where = " AND state = %s" if state else ""
        found = self._run(
            "reading the redrive ledger",
            f"""
            SELECT dlq_partition, dlq_offset, state, target_topic, target_partition, target_offset,
                   claimed_at, redriven_at
            FROM {TABLE} WHERE dlq_topic = %s{where}""",
            (self.dlq_topic, *([state] if state else [])),
        )
        return {f"{r[0]}:{r[1]}": Redrive(*r) for r in found}

    def claim(self, letters: list[tuple[int, int, str]], at: datetime) -> set[str]:
        """Claim dead letters ``(partition, offset, target topic)`` as pending, in one committed
        transaction; returns the ids claimed (not those another run has already)."""
        if not letters:
            return set()
        parts, offsets, targets = (list(x) for x in zip(*letters))
        claimed = self._run(
            "claiming dead letters in the redrive ledger",
            f"""
            INSERT INTO {TABLE} (dlq_topic, dlq_partition, dlq_offset, state, target_topic, claimed_at)
            SELECT %s, p, o, 'pending', t, %s
            FROM unnest(%s::integer[], %s::bigint[], %s::text[]) AS c(p, o, t)
            ON CONFLICT DO NOTHING
            RETURNING dlq_partition, dlq_offset""",
            (self.dlq_topic, at, parts, offsets, targets),
        )
        return {f"{p}:{o}" for p, o in claimed}

    def mark_done(self, sent: list[tuple[int, int, int, int]], at: datetime) -> None:
        """Dead letters ``(partition, offset, target partition, target offset)`` acknowledged."""
        if not sent:
            return
        parts, offsets, tparts, toffsets = (list(x) for x in zip(*sent))
        self._run(
            "recording re-driven dead letters",
            f"""
            UPDATE {TABLE} r SET state = 'done', target_partition = s.tp, target_offset = s.t_o,
                   redriven_at = %s
            FROM unnest(%s::integer[], %s::bigint[], %s::integer[], %s::bigint[]) AS s(p, o, tp, t_o)
            WHERE r.dlq_topic = %s AND r.dlq_partition = s.p AND r.dlq_offset = s.o
              AND r.state = 'pending'""",
            (at, parts, offsets, tparts, toffsets, self.dlq_topic),
        )

    def release(self, ids: list[tuple[int, int]]) -> None:
        """Drop pending claims whose dead letter was never sent (they may be claimed again)."""
        if not ids:
            return
        parts, offsets = (list(x) for x in zip(*ids))
        self._run(
            "releasing redrive claims",
            f"""
            DELETE FROM {TABLE} r USING unnest(%s::integer[], %s::bigint[]) AS s(p, o)
            WHERE r.dlq_topic = %s AND r.dlq_partition = s.p AND r.dlq_offset = s.o
              AND r.state = 'pending'""",
            (parts, offsets, self.dlq_topic),
        )
