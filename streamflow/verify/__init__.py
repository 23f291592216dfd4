"""``streamflow verify``: online, offline and snapshot parity, per user and feature view.

For every feature view of the table registry (``schema.TABLES``) and every user: the online
value (what the API and Feast's online lookup serve) must equal the newest offline row at or
before the check time (the row a point-in-time training set built now would see), and, given a
snapshot folder, that offline row must equal the folder's CSV row. "Equal" is defined in
``streamflow.verify.values``; the online event time must also be the offline row's ``as_of``
(and the snapshot's, with a folder): the ``event_timestamp`` pseudo-column of the report.

How (``query``, ``compare``): one SQL query per view joins the newest offline rows, the online
table and the staged snapshot by user id in PostgreSQL; the result is read through a server-side
cursor in chunks of ``compare.CHUNK_ROWS`` rows, so memory does not grow with the users. All views
are read in one REPEATABLE READ transaction: one consistent state of the database. A consumer
writing meanwhile is not an error, but a user whose online row was written and offline row not
yet (or the reverse) shows as a mismatch: verify a drained pipeline.

Feast is not imported (its import alone takes seconds): the online tables are read directly, in
the layout of ``streamflow.feast_stores.online``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import date, datetime, timezone
from pathlib import Path

import psycopg

from streamflow import config, schema
from streamflow.errors import ServiceUnavailable, StreamflowError, first_line
from streamflow.verify import compare, query
from streamflow.verify.report import Report

log = logging.getLogger("streamflow.verify")

WORK_MEM = "64MB"
"""work_mem of the verify transaction: the joins' hashes and sorts of 1,000,000 users stay in memory."""


def select_tables(views: Sequence[str] | None) -> list[schema.Table]:
    """The registry tables of the named feature views (or table names); every table by default."""
    if not views:
        return list(schema.TABLES)
    chosen, unknown = [], []
    for name in views:
        by_view = (t for t in schema.TABLES if t.feature_view == name)
        table = schema.TABLES_BY_NAME.get(name) or next(by_view, None)
        if table is None:
            unknown.append(name)
        elif table not in chosen:
            chosen.append(table)
    if unknown:
        known = ", ".join(t.feature_view for t in schema.TABLES)
        raise StreamflowError(f"unknown feature view(s) {', '.join(unknown)}; known: {known}")
    return chosen


def snapshot_day(folder: Path, as_of: date | None = None) -> date:
    if as_of is not None:
        return as_of
    try:
        return schema.snapshot_as_of(Path(folder).resolve().name)
    except ValueError as exc:
        raise StreamflowError(f"{folder}: {exc} (--snapshot-as-of YYYY-MM-DD)") from None


def connect() -> psycopg.Connection:
    settings = config.postgres()
    try:
        return psycopg.connect(settings.conninfo, connect_timeout=10)
    except psycopg.OperationalError as exc:
        reason = first_line(exc)
        raise ServiceUnavailable(f"PostgreSQL is not reachable at {settings.describe()}: {reason}") from None


def verify(
    snapshot_dir: Path | str | None = None,
    views: Sequence[str] | None = None,
    examples: int = 5,
    *,
    snapshot_as_of: date | None = None,
    now: datetime | None = None,
    project: str | None = None,
) -> Report:
    """Compare online, offline (and snapshot) values of every user; returns the report.

    Raises ServiceUnavailable when PostgreSQL cannot be reached, DataValidationError for a bad
    snapshot folder, StreamflowError for missing tables or unknown views. Mismatches are in the
    report (``report.ok``), not raised.
    """
    started = time.perf_counter()
    tables = select_tables(views)
    project = project or config.feast_project()
    now = now or datetime.now(timezone.utc)
    folder = Path(snapshot_dir) if snapshot_dir is not None else None
    day = snapshot_day(folder, snapshot_as_of) if folder is not None else None
    with connect() as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        try:
            with conn.transaction():
                reports = _compare(conn, tables, project, now, folder, day, examples)
        except psycopg.OperationalError as exc:
            reason = first_line(exc)
            raise ServiceUnavailable(
                f"PostgreSQL at {config.postgres().describe()} failed during verify: {reason}"
            ) from None
        except psycopg.Error as exc:
            raise StreamflowError(f"verify: PostgreSQL refused a query: {exc}") from None
        database = conn.info.dbname
    return Report(
        checked_at=now,
        database=database,
        project=project,
        views=reports,
        snapshot_dir=folder,
        snapshot_as_of=day,
        seconds=time.perf_counter() - started,
    )


def _compare(conn, tables, project: str, now: datetime, folder: Path | None, day: date | None, examples: int):
    """Inside verify's transaction: check the tables, stage the snapshot (if any), compare each view."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL TIME ZONE 'UTC'")
        cur.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        query.check_tables(cur, project, tables)
        staged = (
            query.stage_snapshot(cur, folder, day, tables) if folder is not None and day is not None else None
        )
    reports = {}
    for table in tables:
        reports[table.feature_view] = view = compare.compare_view(conn, table, project, now, staged, examples)
        log.info(
            "%s: %s users, %s mismatches in %.2f s",
            view.view,
            f"{view.users:,}",
            f"{view.mismatches:,}",
            view.seconds,
        )
    return reports


__all__ = ["Report", "verify"]
