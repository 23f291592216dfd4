"""The comparison of one feature view, chunk by chunk over the joined stream of ``query.view_query``.

Online against offline, per chunk: the offline rows are encoded column-wise into the online
table's row format (``value_encoding.encode_rows``, the bytes the consumer's push and
``materialize`` write) and compared with the stored bytes. Equal bytes mean equal values; only a
row whose bytes differ is decoded (``value_encoding.decode_elements``) and compared column by
column by the rules of ``values``, so a row written some other way (another feature order, a
float32 feature) is not reported unless a value really differs. Which users each side has, the
event times, the feature names and the offline row against the snapshot are compared in SQL
(a status and a bitmask per row): Python looks at a row one by one only when something differs.

A thread fetches the next chunk while this one is compared, so PostgreSQL and Python work at
the same time; at most ``PREFETCH`` chunks wait. Nothing is kept per user beyond the chunks.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa

from streamflow import logs, schema
from streamflow.feast_stores.value_encoding import decode_elements, encode_rows
from streamflow.verify import query
from streamflow.verify.query import EVENT_TIME_DIFFERS, IN_OFFLINE, IN_ONLINE, IN_SNAPSHOT, NAMES_DIFFER
from streamflow.verify.report import EVENT_TIME, ViewReport
from streamflow.verify.values import MISSING, VALUE_TYPES, online_equals, show, show_online

CHUNK_ROWS = 10_000
"""Rows fetched from the server-side cursor at a time."""
PREFETCH = 2

_ARROW_TYPES = {
    "category": pa.string(),
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
}
_BOTH = IN_OFFLINE | IN_ONLINE
_NO_ROW = "<no row>"


class _Layout:
    """Positions of one view's columns in the joined stream."""

    def __init__(self, table: schema.Table, snapshot: bool):
        self.columns = table.columns
        n = len(table.columns)
        self.user, self.status, self.as_of = range(3)
        self.off = list(range(3, 3 + n))
        self.names, self.vals, self.event_ts = 3 + n, 4 + n, 5 + n
        self.bits = 6 + n if snapshot else None
        self.snap = list(range(7 + n, 7 + 2 * n)) if snapshot else []
        self.features = [(c.name, VALUE_TYPES[c.kind]) for c in table.columns]
        self.feature_names = table.feature_names
        self.plain = _BOTH | (IN_SNAPSHOT if snapshot else 0)
        """The status of a user with nothing to report."""


def compare_view(
    conn: psycopg.Connection,
    table: schema.Table,
    project: str,
    now,
    snapshot: query.StagedSnapshot | None,
    examples: int,
) -> ViewReport:
    """Stream one view's joined rows and count what differs; inside the caller's transaction."""
    started = time.perf_counter()
    report = ViewReport(table.feature_view, table.name, examples, snapshot is not None)
    if snapshot is not None:
        report.snapshot_rows = snapshot.rows[table.name]
    layout = _Layout(table, snapshot is not None)
    from tqdm import tqdm

    with (
        conn.cursor(name=f"verify_{table.name}", binary=True) as cur,
        tqdm(desc=table.feature_view, unit=" users", disable=not logs.progress_enabled(), leave=False) as bar,
    ):
        cur.execute(query.view_query(table, project, snapshot), query.query_params(table, now))
        for rows in _prefetched(cur, CHUNK_ROWS):
            _compare_chunk(rows, layout, report, snapshot)
            bar.update(len(rows))
    report.seconds = time.perf_counter() - started
    return report


def _prefetched(cur: psycopg.ServerCursor, size: int) -> Iterator[list[tuple]]:
    """The cursor's rows in chunks, the next ones fetched by a thread meanwhile."""
    chunks: queue.Queue = queue.Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cur.fetchmany(size)
                chunks.put(rows)
                if not rows:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            chunks.put(exc)

    worker = threading.Thread(target=fetch, name="verify-fetch", daemon=True)
    worker.start()
    try:
        while True:
            item = chunks.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # let a blocked put() finish, then the thread ends
            try:
                chunks.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()


def _compare_chunk(
    rows: list[tuple], layout: _Layout, report: ViewReport, snapshot: query.StagedSnapshot | None
) -> None:
    n = len(rows)
    cols = list(zip(*rows))
    status = np.fromiter(cols[layout.status], dtype=np.int32, count=n)
    report.users += n
    report.offline += int(np.count_nonzero(status & IN_OFFLINE))
    report.online += int(np.count_nonzero(status & IN_ONLINE))
    arrow = pa.table(
        {c.name: pa.array(cols[i], _ARROW_TYPES[c.kind]) for c, i in zip(layout.columns, layout.off)}
    )
    expected = encode_rows(arrow, layout.features)
    vals = cols[layout.vals]
    both = np.flatnonzero((status & _BOTH) == _BOTH).tolist()
    differ = [i for i in both if vals[i] != expected[i]]
    odd = status != layout.plain
    if layout.bits is not None:
        odd |= np.fromiter(cols[layout.bits], dtype=np.int64, count=n) != 0
    look = sorted(set(differ).union(np.flatnonzero(odd).tolist()))
    report.rows_decoded += len(differ)
    differ_set = set(differ)
    for i in look:
        _compare_row(rows[i], int(status[i]), i in differ_set, layout, report, snapshot)


def _compare_row(
    row: tuple,
    status: int,
    vals_differ: bool,
    layout: _Layout,
    report: ViewReport,
    snapshot: query.StagedSnapshot | None,
) -> None:
    """One user whose row has something to report."""
    user = row[layout.user]
    bad = False
    if status & _BOTH == _BOTH:
        if vals_differ or status & NAMES_DIFFER:
            bad |= _compare_online(row, layout, report)
        if status & EVENT_TIME_DIFFERS:
            bad = True
            _record(report, row, layout, EVENT_TIME, "online_offline", snapshot)
    elif status & IN_ONLINE:
        report.only_online.add(user)
    elif status & IN_OFFLINE:
        report.only_offline.add(user)
    if snapshot is not None:
        assert layout.bits is not None  # compare_view lays out the snapshot columns when there is a snapshot
        if status & IN_OFFLINE and not status & IN_SNAPSHOT:
            report.not_in_snapshot.add(user)
        elif status & IN_SNAPSHOT and not status & IN_OFFLINE:
            report.only_snapshot.add(user)
        elif row[layout.bits]:
            bad = True
            _compare_snapshot(row, row[layout.bits], layout, report, snapshot)
    if bad:
        report.users_with_mismatches += 1


def _online_elements(row: tuple, layout: _Layout) -> dict[str, tuple[str | None, Any]]:
    """The online row's values by feature name (the names column is NULL when they are the view's)."""
    names = row[layout.names].split(",") if row[layout.names] is not None else layout.feature_names
    return dict(zip(names, decode_elements(row[layout.vals])))


def _compare_online(row: tuple, layout: _Layout, report: ViewReport) -> bool:
    """Decode a row whose bytes differ and record the columns whose values differ."""
    online = _online_elements(row, layout)
    bad = False
    for col, i in zip(layout.columns, layout.off):
        if not online_equals(col.kind, online.get(col.name, MISSING), row[i]):
            bad = True
            _record(report, row, layout, col.name, "online_offline", None, online)
    return bad


def _compare_snapshot(
    row: tuple, bits: int, layout: _Layout, report: ViewReport, snapshot: query.StagedSnapshot
) -> None:
    n = len(layout.columns)
    for j, col in enumerate(layout.columns):
        if bits & (1 << j):
            _record(report, row, layout, col.name, "offline_snapshot", snapshot)
    if bits & (1 << n):
        _record(report, row, layout, EVENT_TIME, "offline_snapshot", snapshot)


def _record(
    report: ViewReport,
    row: tuple,
    layout: _Layout,
    name: str,
    kind: str,
    snapshot: query.StagedSnapshot | None,
    online: dict | None = None,
) -> None:
    """Count one mismatch of a column; keep it as an example while the column has few."""
    mismatches = report.column(name)
    setattr(mismatches, kind, getattr(mismatches, kind) + 1)
    user = row[layout.user]
    if mismatches.examples and mismatches.examples[-1]["user_id"] == user:
        mismatches.examples[-1]["differs"].append(kind)  # the same value, against the other side too
        return
    if not mismatches.wants_example():
        return
    in_online = row[layout.status] & IN_ONLINE
    example: dict[str, Any] = {"user_id": user}
    if name == EVENT_TIME:
        example["online"] = show(row[layout.event_ts]) if in_online else _NO_ROW
        example["offline"] = show(row[layout.as_of])
        snap_value = schema.as_of_timestamp(snapshot.as_of) if snapshot is not None else None
    else:
        j = layout.feature_names.index(name)
        col = layout.columns[j]
        if in_online:
            online = online if online is not None else _online_elements(row, layout)
            example["online"] = show_online(col.kind, online.get(name, MISSING))
        else:
            example["online"] = _NO_ROW
        example["offline"] = show(row[layout.off[j]])
        differs = layout.bits is not None and row[layout.bits] & (1 << j)
        snap_value = row[layout.snap[j]] if differs else row[layout.off[j]]
    if layout.bits is not None:
        example["snapshot"] = show(snap_value) if row[layout.status] & IN_SNAPSHOT else _NO_ROW
    example["differs"] = [kind]
    mismatches.examples.append(example)
