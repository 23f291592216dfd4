"""The PostgreSQL warehouse: tables generated from the registry, and the merges into them.

For each table of ``schema.TABLES`` there are two tables:

- the base table (``table.base_table``): one row per user, the newest values seen, with the
  ``as_of`` of the snapshot they came from (and the course's extra columns, left NULL);
- the snapshot table (``table.snapshot_table``): one row per user and ``as_of``, the history
  Feast reads its batch sources from, with the snapshot id and ``loaded_at``.

Writers fill a TEMP staging table (``create_staging_table`` + ``copy_rows`` or ``copy_csv``),
then ``upsert_snapshot_rows`` merges it into both tables, inside the caller's transaction:

- snapshot table: ``ON CONFLICT (user_id, as_of) DO UPDATE ... WHERE ... IS DISTINCT FROM``,
  so writing the same rows again changes nothing (not even ``loaded_at``);
- base table: ``ON CONFLICT (user_id) DO UPDATE ... WHERE base.as_of <= excluded.as_of``,
  so an older row never overwrites a newer one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from streamflow import schema
from streamflow.errors import StreamflowError

KEY = schema.KEY
AS_OF = schema.SNAPSHOT_TIME
SNAPSHOT = schema.EVENT_SNAPSHOT
LOADED_AT = "loaded_at"

_SCHEMA_LOCK = 0x5F_57_41_52  # pg_advisory_xact_lock key: one ensure_schema at a time

# format_type() spelling of the SQL types the registry uses, to check existing tables.
_FORMAT_TYPE = {
    "TEXT": "text",
    "BIGINT": "bigint",
    "DOUBLE PRECISION": "double precision",
    "BOOLEAN": "boolean",
    "DATE": "date",
    "TIMESTAMPTZ": "timestamp with time zone",
}


class MergeCounts(NamedTuple):
    """Rows inserted or changed by one merge."""

    snapshot: int
    base: int


Cursorish = psycopg.Connection | psycopg.Cursor


def _cursor(conn: Cursorish) -> psycopg.Cursor:
    return conn.cursor() if isinstance(conn, psycopg.Connection) else conn


def _connection(conn: Cursorish) -> psycopg.Connection:
    return conn if isinstance(conn, psycopg.Connection) else conn.connection


def _column_list(table: schema.Table, columns: Sequence[str] | None) -> list[str]:
    """The registry columns to write (all of them by default), checked against the registry."""
    if columns is None:
        return table.feature_names
    for name in columns:
        table.column(name)  # KeyError for a column the registry does not know
    return list(columns)


def _ids(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _not_null(column: schema.Column) -> sql.SQL:
    return sql.SQL("") if column.nullable else sql.SQL(" NOT NULL")


# --- DDL -----------------------------------------------------------------------------------------


def base_table_ddl(table: schema.Table) -> sql.Composed:
    """CREATE TABLE IF NOT EXISTS for the base table: one row per user, newest values."""
    parts = [sql.SQL("{} TEXT PRIMARY KEY").format(sql.Identifier(KEY))]
    parts += [
        sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(c.sql_type), _not_null(c))
        for c in table.columns
    ]
    parts += [
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(sql_type))
        for name, sql_type in table.extra_base_columns
    ]
    parts.append(sql.SQL("{} TIMESTAMPTZ NOT NULL").format(sql.Identifier(AS_OF)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.Identifier(table.base_table), sql.SQL(", ").join(parts)
    )


def snapshot_table_ddl(table: schema.Table) -> sql.Composed:
    """CREATE TABLE IF NOT EXISTS for the snapshot table: one row per user and as_of."""
    parts = [
        sql.SQL("{} TEXT NOT NULL").format(sql.Identifier(KEY)),
        sql.SQL("{} TIMESTAMPTZ NOT NULL").format(sql.Identifier(AS_OF)),
    ]
    parts += [
        sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(c.sql_type), _not_null(c))
        for c in table.columns
    ]
    parts += [
        sql.SQL("{} TEXT").format(sql.Identifier(SNAPSHOT)),
        sql.SQL("{} TIMESTAMPTZ NOT NULL DEFAULT now()").format(sql.Identifier(LOADED_AT)),
        sql.SQL("PRIMARY KEY ({}, {})").format(sql.Identifier(KEY), sql.Identifier(AS_OF)),
    ]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.Identifier(table.snapshot_table), sql.SQL(", ").join(parts)
    )


def _expected_columns(table: schema.Table) -> dict[str, dict[str, str]]:
    """{table name: {column: format_type spelling}} of the two tables of one registry table."""
    cols = {c.name: _FORMAT_TYPE[c.sql_type] for c in table.columns}
    base = {KEY: "text", **cols, AS_OF: _FORMAT_TYPE["TIMESTAMPTZ"]}
    base.update({name: _FORMAT_TYPE[t] for name, t in table.extra_base_columns})
    snap = {
        KEY: "text",
        AS_OF: _FORMAT_TYPE["TIMESTAMPTZ"],
        **cols,
        SNAPSHOT: "text",
        LOADED_AT: _FORMAT_TYPE["TIMESTAMPTZ"],
    }
    return {table.base_table: base, table.snapshot_table: snap}


def ensure_schema(conn: Cursorish, tables: Sequence[schema.Table] = schema.TABLES) -> None:
    """Create the base and snapshot tables that do not exist yet; check the ones that do.

    Runs in a transaction of its own, or in a savepoint of the caller's. An existing table
    whose columns do not match the registry raises ``StreamflowError``.
    """
    expected: dict[str, dict[str, str]] = {}
    for t in tables:
        expected.update(_expected_columns(t))
    with _connection(conn).transaction():
        cur = _cursor(conn)
        missing = [
            name
            for (name,) in cur.execute(
                "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(quote_ident(name)) IS NULL",
                (list(expected),),
            ).fetchall()
        ]
        if missing:
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type: serialise.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for t in tables:
                cur.execute(base_table_ddl(t))
                cur.execute(snapshot_table_ddl(t))
        found: dict[str, dict[str, str]] = {}
        for rel, col, typ in cur.execute(
            """
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            WHERE c.oid = ANY (SELECT to_regclass(quote_ident(n)) FROM unnest(%s::text[]) n)
              AND a.attnum > 0 AND NOT a.attisdropped
            """,
            (list(expected),),
        ).fetchall():
            found.setdefault(rel, {})[col] = typ
    problems = []
    for rel, cols in expected.items():
        have = found.get(rel, {})
        for col, typ in cols.items():
            if col not in have:
                problems.append(f"{rel}.{col} is missing")
            elif have[col] != typ:
                problems.append(f"{rel}.{col} is {have[col]}, the registry says {typ}")
    if problems:
        raise StreamflowError(
            "the warehouse tables do not match the table registry: "
            + "; ".join(problems)
            + " (drop or migrate those tables)"
        )


def drop_schema(conn: Cursorish, tables: Sequence[schema.Table] = schema.TABLES) -> None:
    """Drop the base and snapshot tables (for tests and resets)."""
    names = [n for t in tables for n in (t.base_table, t.snapshot_table)]
    _cursor(conn).execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_ids(names)))


def ensure_database(settings=None) -> None:
    """Create the configured database when it does not exist (tests and benchmarks use their own).

    Connects to the default ``streamflow`` database with the same user, which needs CREATEDB
    (scripts/services.sh grants it).
    """
    from streamflow import config

    settings = settings or config.postgres()
    admin = settings.with_database("streamflow")
    with psycopg.connect(admin.conninfo, autocommit=True, connect_timeout=5) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.database,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.database)))


# --- staging -------------------------------------------------------------------------------------


def staging_columns(table: schema.Table, columns: Sequence[str] | None = None) -> list[str]:
    """Columns of a staging table, in order: user_id, as_of, the columns, snapshot."""
    return [KEY, AS_OF, *_column_list(table, columns), SNAPSHOT]


def create_staging_table(
    cur: psycopg.Cursor,
    table: schema.Table,
    name: str,
    columns: Sequence[str] | None = None,
    *,
    as_of: datetime | None = None,
    snapshot: str | None = None,
) -> sql.Identifier:
    """Create (or re-create) a TEMP staging table that is dropped at commit.

    Its columns are ``staging_columns(table, columns)``, all nullable (the merge's target
    tables enforce NOT NULL). ``as_of`` and ``snapshot``, when given, become the defaults of
    those columns, so a COPY of just the file's columns fills them in.
    Must run inside a transaction (with autocommit, ON COMMIT DROP drops it at once).
    """
    ident = sql.Identifier(name)
    cols = [
        sql.SQL("{} TEXT").format(sql.Identifier(KEY)),
        sql.SQL("{} TIMESTAMPTZ{}").format(
            sql.Identifier(AS_OF),
            sql.SQL(" DEFAULT {}").format(sql.Literal(as_of)) if as_of is not None else sql.SQL(""),
        ),
    ]
    cols += [
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(table.column(c).sql_type))
        for c in _column_list(table, columns)
    ]
    cols.append(
        sql.SQL("{} TEXT{}").format(
            sql.Identifier(SNAPSHOT),
            sql.SQL(" DEFAULT {}").format(sql.Literal(snapshot)) if snapshot is not None else sql.SQL(""),
        )
    )
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(ident, sql.SQL(", ").join(cols)))
    return ident


def copy_rows(cur: psycopg.Cursor, staging: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """COPY Python rows (tuples in ``columns`` order) into a staging table; returns the count."""
    n = 0
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(staging), _ids(columns))
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def arrow_csv(table: pa.Table) -> pa.Buffer:
    """An Arrow table as CSV for ``copy_csv`` (no header), by Arrow's C++ writer.

    Every valid value is quoted and a null is an unquoted empty field, so COPY tells NULL from an
    empty string; floats at shortest round-trip precision.
    """
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))
    return sink.getvalue()


def copy_csv(
    cur: psycopg.Cursor,
    staging: str,
    columns: Sequence[str],
    data: bytes | memoryview | pa.Buffer | Iterable[bytes | memoryview | pa.Buffer],
    *,
    header: bool = True,
    force_null: Sequence[str] = (),
    chunk_size: int = 1 << 20,
) -> None:
    """COPY UTF-8 CSV (unquoted empty = NULL) into a staging table, in one COPY statement.

    ``data`` is a bytes-like object, or an iterable of them (pieces of whole lines, taken one at
    a time: a big file need not be in memory). An exception raised while it is iterated aborts
    the COPY, and so the caller's transaction, and is raised again. ``force_null`` columns are
    NULL for a quoted empty value too. The bytes must already be validated: PostgreSQL's error
    for a bad value names no file line.
    """
    options: list[sql.Composable] = [sql.SQL("FORMAT csv"), sql.SQL("ENCODING 'UTF8'")]
    if header:
        options.append(sql.SQL("HEADER true"))
    if force_null:
        options.append(sql.SQL("FORCE_NULL ({})").format(_ids(force_null)))
    stmt = sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
        sql.Identifier(staging), _ids(columns), sql.SQL(", ").join(options)
    )
    pieces: Iterable[bytes | memoryview | pa.Buffer] = (
        [data] if isinstance(data, (bytes, bytearray, memoryview, pa.Buffer)) else data
    )
    with cur.copy(stmt) as copy:
        for piece in pieces:
            view = memoryview(piece)
            for start in range(0, len(view), chunk_size):
                copy.write(view[start : start + chunk_size])


# --- merges --------------------------------------------------------------------------------------
#
# Each merge is one INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE <changed>. The SELECT
# first drops the staged rows that would change nothing (a LEFT JOIN on the target: a hash
# join for big batches, index probes for small ones), so a reload of 1,000,000 unchanged rows
# costs a join instead of 1,000,000 conflict checks.
# The ON CONFLICT clause and its WHERE stay: they make the merge correct when another
# transaction writes the same keys at the same time.


def _staged(staging: str, names: list[str], distinct_on: list[str], order: Sequence[sql.Composable]):
    """The staged rows, aliased s; one per distinct_on key (newest by order, then last staged)."""
    if not distinct_on:
        return sql.SQL("{} AS s").format(sql.Identifier(staging))
    # ctid order is insertion order in a staging table that is only appended to.
    return sql.SQL("(SELECT DISTINCT ON ({}) {} FROM {} ORDER BY {}) AS s").format(
        _ids(distinct_on),
        _ids(names),
        sql.Identifier(staging),
        sql.SQL(", ").join([*map(sql.Identifier, distinct_on), *order, sql.SQL("ctid DESC")]),
    )


def _row(alias: str, names: list[str]) -> sql.Composed:
    return sql.SQL("ROW({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(n)) for n in names)
    )


def _changed(a: str, b: str, names: list[str]) -> sql.Composed:
    """ROW(a.x, a.y) IS DISTINCT FROM ROW(b.x, b.y): NULL-safe "some value differs"."""
    return sql.SQL("{} IS DISTINCT FROM {}").format(_row(a, names), _row(b, names))


def _not_older(old: str, new: str) -> sql.Composed:
    """old.as_of <= new.as_of AND (the base table's guard: an older row never wins)."""
    return sql.SQL("{}.{} <= {}.{} AND ").format(
        sql.Identifier(old), sql.Identifier(AS_OF), sql.Identifier(new), sql.Identifier(AS_OF)
    )


def _merge_statement(
    target: str,
    staged: sql.Composable,
    names: list[str],
    key: list[str],
    updated: list[str],
    *,
    newer_only: bool,
    touch: list[str],
) -> sql.Composed:
    """INSERT the staged rows (s) that are new or change a stored row (o); its rowcount is the
    rows written."""
    stmt = sql.SQL(
        "INSERT INTO {target} AS t ({names}) "
        "SELECT {s_names} FROM {staged} LEFT JOIN {target} AS o ON {join} "
        "WHERE o.{first_key} IS NULL OR ({old_guard}{changed_old}) "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {t_guard}{changed_t}"
    ).format(
        target=sql.Identifier(target),
        names=_ids(names),
        s_names=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(n)) for n in names),
        staged=staged,
        join=sql.SQL(" AND ").join(sql.SQL("o.{0} = s.{0}").format(sql.Identifier(k)) for k in key),
        first_key=sql.Identifier(key[0]),
        old_guard=_not_older("o", "s") if newer_only else sql.SQL(""),
        changed_old=_changed("o", "s", updated),
        key=_ids(key),
        sets=sql.SQL(", ").join(
            [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(n)) for n in updated]
            + [sql.SQL("{} = now()").format(sql.Identifier(n)) for n in touch]
        ),
        t_guard=_not_older("t", "excluded") if newer_only else sql.SQL(""),
        changed_t=_changed("t", "excluded", updated),
    )
    return stmt


@functools.lru_cache(maxsize=256)
def _registry_snapshot_merge(
    name: str, staging: str, columns: tuple[str, ...] | None, dedupe: bool
) -> sql.Composed:
    """_snapshot_merge of a registry table, composed once per (table, staging, columns, dedupe):
    the consumer merges every batch with the same statement, and composing it cost 1.7 ms."""
    return _snapshot_merge(schema.table(name), staging, columns, dedupe)


def _snapshot_merge(
    table: schema.Table, staging: str, columns: Sequence[str] | None, dedupe: bool
) -> sql.Composed:
    cols = _column_list(table, columns)
    names = [KEY, AS_OF, *cols, SNAPSHOT]
    key = [KEY, AS_OF]
    staged = _staged(staging, names, key if dedupe else [], [])
    return _merge_statement(
        table.snapshot_table, staged, names, key, [*cols, SNAPSHOT], newer_only=False, touch=[LOADED_AT]
    )


def merge_into_snapshot_table(
    cur: psycopg.Cursor,
    table: schema.Table,
    staging: str,
    columns: Sequence[str] | None = None,
    *,
    dedupe: bool = True,
) -> int:
    """Upsert staged rows into the snapshot table; returns rows inserted or changed.

    A row whose values (and snapshot id) equal the stored ones is left alone, ``loaded_at``
    included; a changed row gets the new values and ``loaded_at = now()``. ``dedupe`` keeps
    the last staged row per (user_id, as_of): needed when a batch can hold the same key
    twice, skippable (faster) when the caller knows the keys are unique.
    """
    if schema.TABLES_BY_NAME.get(table.name) is table:
        key = tuple(columns) if columns is not None else None
        cur.execute(_registry_snapshot_merge(table.name, staging, key, dedupe))
    else:  # a table built elsewhere (not the registry's): composed for this call
        cur.execute(_snapshot_merge(table, staging, columns, dedupe))
    return cur.rowcount


def merge_into_base_table(
    cur: psycopg.Cursor,
    table: schema.Table,
    staging: str,
    columns: Sequence[str] | None = None,
    *,
    dedupe: bool = True,
) -> int:
    """Upsert staged rows into the base table, newest as_of wins; returns rows inserted or changed.

    A stored row with a newer as_of is kept; an equal row is left alone. ``dedupe`` keeps
    the newest staged row per user (needed when a batch can hold a user twice).
    """
    cols = _column_list(table, columns)
    names = [KEY, *cols, AS_OF]
    order = [sql.SQL("{} DESC").format(sql.Identifier(AS_OF))]
    staged = _staged(staging, names, [KEY] if dedupe else [], order)
    statement = _merge_statement(
        table.base_table, staged, names, [KEY], [*cols, AS_OF], newer_only=True, touch=[]
    )
    cur.execute(statement)
    return cur.rowcount


def upsert_snapshot_rows(
    cur: psycopg.Cursor,
    table: schema.Table,
    staging: str,
    columns: Sequence[str] | None = None,
    *,
    dedupe: bool = True,
) -> MergeCounts:
    """Merge a staging table into the table's snapshot table and its base table.

    The staging table has ``staging_columns(table, columns)`` (``create_staging_table``).
    Runs in the caller's transaction: nothing is committed here.
    """
    return MergeCounts(
        snapshot=merge_into_snapshot_table(cur, table, staging, columns, dedupe=dedupe),
        base=merge_into_base_table(cur, table, staging, columns, dedupe=dedupe),
    )
