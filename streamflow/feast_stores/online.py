"""StreamFlow's Feast online store on PostgreSQL: newest event wins, one row per entity and view.

Named in feature_store.yaml as ``streamflow.feast_stores.online.StreamflowOnlineStore``.
What it changes against Feast's stock ``PostgreSQLOnlineStore`` (docs/explanation/feast-stores.md):

* **Newest wins.** A write never replaces a value with an older one: inside one batch the
  newest row per entity is kept (``DISTINCT ON``), and the merge into the table only updates a
  row whose stored event time is not newer. Replays and ``materialize`` of an older range leave
  newer values alone; writing the same event twice changes nothing (no new row version).
* **One row per entity and feature view** (the feature names, comma-separated, and their values
  as one serialized ``RepeatedValue``) instead of one row per feature, written by ``COPY`` into a
  staging table and one ``INSERT ... ON CONFLICT`` merge, instead of ``executemany``. No full-text index.
* **Connections that heal.** One ``psycopg_pool`` pool per process; a failed write rolls back
  and hands its connection back (broken ones are discarded), so a database outage never
  poisons later calls.

Reads go through :class:`OnlineReader`, the one public reader of these tables: the rows of several
views for a list of entity keys in one query, decoded by the caller's choice of decoder (Feast's
``ValueProto`` objects for ``online_read``, plain Python values for the API).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
from feast import Entity, FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.online_store import OnlineStore
from feast.infra.utils.postgres.connection_utils import _get_conn_kwargs, _get_conninfo
from feast.infra.utils.postgres.postgres_config import PostgreSQLConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import RepeatedValue
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from psycopg import sql
from psycopg_pool import ConnectionPool

from streamflow import schema
from streamflow.feast_stores import value_encoding
from streamflow.feast_stores.settings import DatabaseDefaults
from streamflow.feast_stores.value_encoding import decode_elements, element, string_entity_key

log = logging.getLogger(__name__)

STORE_TYPE: Final = "streamflow.feast_stores.online.StreamflowOnlineStore"


class StreamflowOnlineStoreConfig(DatabaseDefaults, PostgreSQLConfig):
    """The ``online_store:`` section; host, port, database, user and password default to
    StreamFlow's settings (streamflow.feast_stores.settings)."""

    type: Literal["streamflow.feast_stores.online.StreamflowOnlineStore"] = STORE_TYPE
    connect_timeout: int = 5
    """Seconds to wait for a new connection before giving up (an outage fails fast)."""


def table_name(project: str, view: FeatureView | str) -> str:
    return schema.online_table(project, view if isinstance(view, str) else view.name)


def encode_values(values) -> bytes:
    """The protobuf encoding of RepeatedValue(val=values), built without copying the messages."""
    return b"".join([element(value.SerializeToString()) for value in values])


def decode_values(raw: bytes) -> list[ValueProto]:
    return list(RepeatedValue.FromString(raw).val)


def entity_key_bytes(entity_key: EntityKeyProto, version: int) -> bytes:
    """Feast's serialize_entity_key, with a fast path for one string join key (user_id)."""
    if version >= 3 and len(entity_key.join_keys) == 1:
        value = entity_key.entity_values[0]
        if value.WhichOneof("val") == "string_val":
            return string_entity_key(entity_key.join_keys[0], value.string_val)
    return serialize_entity_key(entity_key, entity_key_serialization_version=version)


def string_key_bytes(join_key: str, value: str, version: int) -> bytes:
    """The stored entity key of an entity with one string join key (``entity_key_bytes`` without
    building a protobuf key first)."""
    if version >= 3:
        return string_entity_key(join_key, value)
    key = EntityKeyProto(join_keys=[join_key], entity_values=[ValueProto(string_val=value)])
    return serialize_entity_key(key, entity_key_serialization_version=version)


_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000
"""PostgreSQL's binary timestamps count microseconds from 2000-01-01 UTC."""


def binary_copy_payload(
    keys: Sequence[bytes] | pa.Array, names: str, vals: Sequence[bytes] | pa.Array, event_us: np.ndarray
) -> bytes:
    """A whole binary COPY stream of (entity_key, names, vals, event_ts, created_ts=NULL) rows.

    Built column-wise with Arrow kernels (keys and vals may be lists of bytes or Arrow binary
    arrays): psycopg's row-by-row formatter adapts every value of every row, and a Python loop
    over the rows was still a fifth of the consumer's write path.
    """
    if not (len(keys) == len(vals) == len(event_us)):
        raise ValueError(
            f"column lengths differ: {len(keys)} keys, {len(vals)} values, {len(event_us)} times"
        )
    keys = keys if isinstance(keys, pa.Array) else pa.array(keys, pa.binary())
    vals = vals if isinstance(vals, pa.Array) else pa.array(vals, pa.binary())
    if keys.null_count or vals.null_count:
        raise ValueError("entity keys and values must not be null")
    raw_names = names.encode("utf-8")
    # per row: field count, key length, key, names length, names, vals length, vals, then the
    # event time (length 8, microseconds from 2000-01-01) and a NULL created_ts (length -1)
    names_field = pa.scalar(struct.pack(">i", len(raw_names)) + raw_names, pa.binary())
    tail = np.empty((len(event_us), 16), dtype=np.uint8)
    tail[:, :4] = np.frombuffer(b"\x00\x00\x00\x08", dtype=np.uint8)
    stamps = (np.asarray(event_us, dtype=np.int64) - _PG_EPOCH_US).astype(">i8")
    tail[:, 4:12] = stamps.view(np.uint8).reshape(-1, 8)
    tail[:, 12:] = np.frombuffer(b"\xff\xff\xff\xff", dtype=np.uint8)
    rows = value_encoding.concat(
        pa.scalar(b"\x00\x05", pa.binary()),
        value_encoding.field_lengths(keys),
        keys,
        names_field,
        value_encoding.field_lengths(vals),
        vals,
        value_encoding.fixed_width(tail),
    )
    return _COPY_SIGNATURE + value_encoding.joined_bytes(rows) + _COPY_TRAILER


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc)


_pools: dict[tuple, ConnectionPool] = {}
_pools_lock = threading.Lock()

RECHECK_AFTER_IDLE = 2.0
"""Seconds a pooled connection may sit idle before it is checked (one round trip) on checkout."""


def _mark_returned(conn) -> None:
    conn._streamflow_returned_at = time.monotonic()


def _check_if_idle(conn) -> None:
    """Check a connection that was idle for a while (a recently used one is known good)."""
    if time.monotonic() - getattr(conn, "_streamflow_returned_at", 0.0) > RECHECK_AFTER_IDLE:
        ConnectionPool.check_connection(conn)


def _pool_key(config) -> tuple:
    return (
        config.host,
        config.port,
        config.database,
        config.user,
        config.password,
        config.sslmode,
        config.sslrootcert_path,
        config.min_conn,
        config.max_conn,
    )


def connection_pool(config: StreamflowOnlineStoreConfig) -> ConnectionPool:
    """The process's pool for this database (created on first use, shared by every store).

    Broken connections are discarded: a connection idle for more than RECHECK_AFTER_IDLE seconds
    is checked before it is handed out, and one that fails during use is closed by the pool when
    it comes back, so a database outage never poisons later calls.
    """
    key = _pool_key(config)
    pool = _pools.get(key)
    if pool is not None and not pool.closed:
        return pool
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            kwargs = dict(_get_conn_kwargs(config))
            kwargs["connect_timeout"] = getattr(config, "connect_timeout", 5)
            kwargs["autocommit"] = True  # reads need no transaction; writes open one explicitly
            pool = ConnectionPool(
                conninfo=_get_conninfo(config),
                min_size=config.min_conn,
                max_size=config.max_conn,
                kwargs=kwargs,
                check=_check_if_idle,
                reset=_mark_returned,
                reconnect_timeout=0,
                open=False,
                name="streamflow-online",
            )
            pool.open(wait=False)
            _pools[key] = pool
        return pool


def close_pools() -> None:
    """Close every pool of this process (API shutdown, tests)."""
    with _pools_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


Decoder = Callable[[bytes], Sequence[Any]]
"""Decodes the ``vals`` of one online row into one value per feature name of the row."""
Found = tuple[datetime | None, dict[str, Any] | None]
"""One key's answer from one view: (event time, feature -> value), or (None, None) if absent."""


class OnlineReader:
    """Reads the online tables: several views for a list of entity keys, in one query.

    Per read: one pool checkout (the pool checks a connection only after it sat idle) and one
    ``UNION ALL`` query over the views' tables, in autocommit (pool connections are), so no
    BEGIN/COMMIT round trips are added. The pool of ``connection_pool()`` is looked up once and
    again only after it was closed or the store's configuration changed; queries are built once
    per (project, views, one key or several).
    """

    def __init__(self) -> None:
        self._pool: ConnectionPool | None = None
        self._pool_for: Any = None
        self._queries: dict[tuple[str, tuple[str, ...], bool], bytes] = {}

    def connection(self, config: RepoConfig, timeout: float = 10.0):
        """A pooled connection (a context manager) to the online store of ``config``."""
        pool = self._pool
        if pool is None or pool.closed or self._pool_for is not config.online_store:
            pool = connection_pool(config.online_store)
            self._pool, self._pool_for = pool, config.online_store
        return pool.connection(timeout=timeout)

    def _query(self, conn, project: str, view_names: tuple[str, ...], one: bool) -> bytes:
        """SELECT over the views' tables; for one key ``= key`` (0.25 ms faster than ``= ANY``)."""
        cache_key = (project, view_names, one)
        query = self._queries.get(cache_key)
        if query is None:
            where = sql.SQL("entity_key = %(keys)s" if one else "entity_key = ANY(%(keys)s)")
            select = sql.SQL(
                "SELECT {i}::int2 AS v, entity_key, names, vals, event_ts FROM {t} WHERE {where}"
            )
            parts = [
                select.format(i=sql.Literal(i), t=sql.Identifier(table_name(project, name)), where=where)
                for i, name in enumerate(view_names)
            ]
            query = sql.SQL(" UNION ALL ").join(parts).as_bytes(conn)
            self._queries[cache_key] = query
        return query

    def rows(
        self, config: RepoConfig, view_names: Sequence[str], keys: Sequence[bytes], timeout: float = 10.0
    ) -> list[dict[bytes, tuple[datetime, str, bytes]]]:
        """Per view, the stored (event_ts, names, vals) of each key that has a row."""
        found: list[dict[bytes, tuple[datetime, str, bytes]]] = [{} for _ in view_names]
        if not keys or not view_names:
            return found
        one = len(keys) == 1
        with self.connection(config, timeout=timeout) as conn:
            query = self._query(conn, config.project, tuple(view_names), one)
            rows = conn.execute(query, {"keys": keys[0] if one else list(keys)}).fetchall()
        for v, key, names, vals, event_ts in rows:
            found[v][bytes(key)] = (event_ts, names, vals)
        return found

    def read(
        self,
        config: RepoConfig,
        view_names: Sequence[str],
        keys: Sequence[bytes],
        requested_features: Sequence[Sequence[str] | None],
        decode: Decoder | Sequence[Decoder] = decode_elements,
        timeout: float = 10.0,
    ) -> list[list[Found]]:
        """Per view, per key (in the order given), (event_ts, feature -> decoded value) or (None, None).

        keys: stored entity keys (``entity_key_bytes``, ``string_key_bytes``); requested_features:
        per view, the features to return (None or empty: all the row has); decode: one decoder, or
        one per view: ``decode_elements`` gives (protobuf field, Python value) per feature,
        ``decode_values`` Feast's ``ValueProto`` objects.
        """
        decoders = [decode] * len(view_names) if callable(decode) else list(decode)
        found = self.rows(config, view_names, keys, timeout)
        out: list[list[Found]] = []
        for rows, wanted_names, decoder in zip(found, requested_features, decoders):
            wanted = set(wanted_names) if wanted_names else None
            decoded: dict[bytes, Found] = {}
            for key, (event_ts, names, vals) in rows.items():
                pairs = zip(names.split(","), decoder(vals))
                decoded[key] = (
                    event_ts,
                    dict(pairs)
                    if wanted is None
                    else {name: value for name, value in pairs if name in wanted},
                )
            out.append([decoded.get(k, (None, None)) for k in keys])
        return out


class StreamflowOnlineStore(OnlineStore):
    """Feast online store on PostgreSQL where the newest event wins."""

    def __init__(self) -> None:
        self.reader = OnlineReader()

    def _conn(self, config: RepoConfig, timeout: float = 10.0):
        return self.reader.connection(config, timeout=timeout)

    # -- writes ---------------------------------------------------------------------------------

    def online_write_batch(
        self,
        config: RepoConfig,
        table: FeatureView,
        data: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]],
        progress: Callable[[int], Any] | None,
    ) -> None:
        if not data:
            return
        version = config.entity_key_serialization_version
        rows = []
        for entity_key, values, event_ts, created_ts in data:
            rows.append(
                (
                    entity_key_bytes(entity_key, version),
                    ",".join(values),
                    encode_values(values.values()),
                    _utc(event_ts),
                    _utc(created_ts),
                )
            )
        self.write_rows(config, table.name, rows)
        if progress:
            progress(len(data))

    def write_rows(self, config: RepoConfig, view_name: str, rows: Sequence[tuple]) -> int:
        """Merge (entity_key, names, values, event_ts, created_ts) rows; returns rows changed."""

        def load(copy) -> None:
            copy.set_types(["bytea", "text", "bytea", "timestamptz", "timestamptz"])
            for row in rows:
                copy.write_row(row)

        return self._merge(config, view_name, load)

    def write_encoded(
        self,
        config: RepoConfig,
        view_name: str,
        keys: Sequence[bytes] | pa.Array,
        names: str,
        vals: Sequence[bytes] | pa.Array,
        event_us: np.ndarray,
    ) -> int:
        """Merge rows already in the table's format (see value_encoding); returns rows changed.

        keys: serialized entity keys; names: the comma-joined feature names shared by every row;
        vals: RepeatedValue encodings; event_us: event times in microseconds since the Unix epoch.
        """
        payload = binary_copy_payload(keys, names, vals, event_us)
        return self._merge(config, view_name, lambda copy: copy.write(payload))

    def _merge(self, config: RepoConfig, view_name: str, load: Callable[[Any], None]) -> int:
        """COPY rows into a staging table (load fills the COPY) and merge them: newest wins."""
        target = sql.Identifier(table_name(config.project, view_name))
        with self._conn(config) as conn, conn.transaction():
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS streamflow_online_stage ("
                    " entity_key BYTEA, names TEXT, vals BYTEA,"
                    " event_ts TIMESTAMPTZ, created_ts TIMESTAMPTZ) ON COMMIT DELETE ROWS"
                )
                with cur.copy(
                    "COPY streamflow_online_stage (entity_key, names, vals, event_ts, created_ts)"
                    " FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    load(copy)
                cur.execute(
                    sql.SQL(
                        """
                        INSERT INTO {target} AS t (entity_key, names, vals, event_ts, created_ts)
                        SELECT DISTINCT ON (entity_key) entity_key, names, vals, event_ts, created_ts
                        FROM streamflow_online_stage
                        ORDER BY entity_key, event_ts DESC, created_ts DESC NULLS LAST
                        ON CONFLICT (entity_key) DO UPDATE SET
                            names = EXCLUDED.names, vals = EXCLUDED.vals,
                            event_ts = EXCLUDED.event_ts, created_ts = EXCLUDED.created_ts
                        WHERE t.event_ts < EXCLUDED.event_ts
                           OR (t.event_ts = EXCLUDED.event_ts
                               AND (t.names, t.vals) IS DISTINCT FROM (EXCLUDED.names, EXCLUDED.vals))
                        """
                    ).format(target=target)
                )
                changed = cur.rowcount
        return changed

    # -- reads ----------------------------------------------------------------------------------

    def online_read(
        self,
        config: RepoConfig,
        table: FeatureView,
        entity_keys: list[EntityKeyProto],
        requested_features: list[str] | None = None,
    ) -> list[tuple[datetime | None, dict[str, ValueProto] | None]]:
        version = config.entity_key_serialization_version
        keys = [entity_key_bytes(k, version) for k in entity_keys]
        [found] = self.reader.read(config, [table.name], keys, [requested_features], decode=decode_values)
        return found

    # -- lifecycle ------------------------------------------------------------------------------

    def update(
        self,
        config: RepoConfig,
        tables_to_delete: Sequence[FeatureView],
        tables_to_keep: Sequence[FeatureView],
        entities_to_delete: Sequence[Entity],
        entities_to_keep: Sequence[Entity],
        partial: bool,
    ):
        with self._conn(config) as conn:
            for view in tables_to_delete:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.Identifier(table_name(config.project, view))
                    )
                )
            for view in tables_to_keep:
                name = table_name(config.project, view)
                layout = conn.execute(
                    "SELECT data_type FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s AND column_name = 'vals'",
                    (name,),
                ).fetchone()
                if layout is not None and layout[0] != "bytea":
                    # An older layout: the online store is derived data, rebuilt by materialize/replay.
                    log.warning("online table %s has an older layout (%s): recreating it", name, layout[0])
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} ("
                        " entity_key BYTEA PRIMARY KEY,"
                        " names TEXT NOT NULL,"
                        " vals BYTEA NOT NULL,"
                        " event_ts TIMESTAMPTZ NOT NULL,"
                        " created_ts TIMESTAMPTZ)"
                    ).format(sql.Identifier(name))
                )

    def teardown(self, config: RepoConfig, tables: Sequence[FeatureView], entities: Sequence[Entity]):
        self.update(config, tables, [], entities, [], partial=False)


__all__ = [
    "OnlineReader",
    "StreamflowOnlineStore",
    "StreamflowOnlineStoreConfig",
    "close_pools",
    "connection_pool",
    "entity_key_bytes",
    "string_key_bytes",
    "table_name",
]
