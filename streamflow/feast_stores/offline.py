"""StreamFlow's Feast offline store on PostgreSQL: stock retrieval plus offline writes.

Named in feature_store.yaml as ``streamflow.feast_stores.offline.StreamflowOfflineStore``.
Stock Feast's PostgreSQL offline store has no ``offline_write_batch``, so
``store.push(..., PushMode.ONLINE_AND_OFFLINE)`` raises ``NotImplementedError`` after the online
write already happened. Ours writes pushed rows into the feature view's snapshot table (the one
its batch source reads), validated against the table registry first, merged idempotently on
``(user_id, as_of)`` in one transaction: a replayed event changes nothing, and what the consumer
streams is what ``get_historical_features`` sees.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import pyarrow

from feast import FeatureView, RepoConfig
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
)

from streamflow import schema
from streamflow.feast_stores.online import connection_pool
from streamflow.push_validation import validate_frame
from streamflow import warehouse

STORE_TYPE = "streamflow.feast_stores.offline.StreamflowOfflineStore"


class StreamflowOfflineStoreConfig(PostgreSQLOfflineStoreConfig):
    type: Literal["streamflow.feast_stores.offline.StreamflowOfflineStore"] = STORE_TYPE  # type: ignore[assignment]
    min_conn: int = 1
    max_conn: int = 4
    connect_timeout: int = 5


class StreamflowOfflineStore(PostgreSQLOfflineStore):
    """PostgreSQL offline store that also accepts pushed rows."""

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pyarrow.Table,
        progress: Optional[Callable[[int], Any]],
    ) -> None:
        spec = schema.table_for_feature_view(feature_view.name)
        frame = validate_frame(spec, table.to_pandas(), where=f"offline write to {feature_view.name}")
        with connection_pool(config.offline_store).connection(timeout=10.0) as conn:
            merge_frame(conn, spec, frame)
        if progress:
            progress(table.num_rows)


def _csv(table: schema.Table, frame) -> bytes:
    """The frame's staging columns as CSV (empty = NULL, dates as days, floats at full precision)."""
    frame = frame[warehouse.staging_columns(table)].copy()
    for col in table.columns:
        if col.kind == "date":
            frame[col.name] = frame[col.name].dt.strftime("%Y-%m-%d")
    return frame.to_csv(index=False, header=False).encode("utf-8")


def merge_frame(conn, table: schema.Table, frame) -> warehouse.MergeCounts:
    """COPY a validated frame into a staging table and merge it into the snapshot and base tables.

    One transaction: either every row is merged or none. Rows equal to the stored ones change
    nothing, so a replayed batch leaves the tables as they were.
    """
    with conn.transaction(), conn.cursor() as cur:
        stage = "streamflow_offline_stage"
        warehouse.create_staging_table(cur, table, stage)
        warehouse.copy_csv(cur, stage, warehouse.staging_columns(table), _csv(table, frame), header=False)
        return warehouse.upsert_snapshot_rows(cur, table, stage)
