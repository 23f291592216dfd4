"""StreamFlow's Feast offline store on PostgreSQL: fast point-in-time retrieval, offline writes.

Named in feature_store.yaml as ``streamflow.feast_stores.offline.StreamflowOfflineStore``.
Stock Feast's PostgreSQL offline store has no ``offline_write_batch``, so
``store.push(..., PushMode.ONLINE_AND_OFFLINE)`` raises ``NotImplementedError`` after the online
write already happened. Ours writes pushed rows into the feature view's snapshot table (the one
its batch source reads), validated against the table registry first (once: rows that
``streamflow.feature_store.push`` validated are not checked again), merged idempotently on
``(user_id, as_of)`` in one transaction: a replayed event changes nothing, and what the consumer
streams is what ``get_historical_features`` sees.

Pushed rows go to the snapshot table only, not to the base table of the batch load: nothing in
StreamFlow reads the base tables (Feast's batch sources, training sets and materialize read the
snapshot tables; lookups read the online tables). They are the loader's "newest loaded row per
user" for SQL users of the course's schema, so writing streamed rows there too would cost a second
merge per batch (a third of the offline write) for no reader.

``get_historical_features`` builds the training set of the registry's feature views in one query
(streamflow.feast_stores.historical), several times faster than stock and with the same result;
anything else (on-demand views, other views, the entity-less mode) goes to stock Feast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import pandas as pd
import pyarrow
import pyarrow.compute as pc
from feast import FeatureView, RepoConfig
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
    PostgreSQLOfflineStore,
    PostgreSQLOfflineStoreConfig,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry

from streamflow import schema, warehouse
from streamflow.feast_stores import historical, validation
from streamflow.feast_stores.online import _pool_key, connection_pool
from streamflow.feast_stores.settings import DatabaseDefaults

STORE_TYPE = "streamflow.feast_stores.offline.StreamflowOfflineStore"


class StreamflowOfflineStoreConfig(DatabaseDefaults, PostgreSQLOfflineStoreConfig):
    """The ``offline_store:`` section; host, port, database, user and password default to
    StreamFlow's settings (streamflow.feast_stores.settings)."""

    type: Literal["streamflow.feast_stores.offline.StreamflowOfflineStore"] = STORE_TYPE  # type: ignore[assignment]
    min_conn: int = 1
    max_conn: int = 4
    connect_timeout: int = 5


class StreamflowOfflineStore(PostgreSQLOfflineStore):
    """PostgreSQL offline store with fast point-in-time retrieval that also accepts pushed rows."""

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str | None,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
        **kwargs,
    ) -> RetrievalJob:
        """Training sets of the registry's feature views in one query; anything else as stock."""
        if historical.handles(feature_views, feature_refs, entity_df, kwargs):
            return historical.get_historical_features(
                config,
                feature_views,
                feature_refs,
                entity_df,
                registry,
                project,
                full_feature_names=full_feature_names,
                filter_by_created_timestamp=filter_by_created_timestamp,
            )
        return PostgreSQLOfflineStore.get_historical_features(
            config,
            feature_views,
            feature_refs,
            entity_df,
            registry,
            project,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
            **kwargs,
        )

    def get_table_column_names_and_types_from_data_source(self, config: RepoConfig, data_source):
        """The columns of a batch source, asked of PostgreSQL once per process and source query
        (Feast asks before every offline write: one round trip per table and batch). A changed
        source definition is a new query, and so a new question."""
        describe = getattr(
            data_source, "get_table_query_string", None
        )  # PostgreSQLSource: its query or table
        query = describe() if callable(describe) else None
        if not query:
            return super().get_table_column_names_and_types_from_data_source(config, data_source)
        key = (_pool_key(config.offline_store), data_source.name, query)
        columns = _SOURCE_COLUMNS.get(key)
        if columns is None:
            columns = _SOURCE_COLUMNS[key] = list(
                super().get_table_column_names_and_types_from_data_source(config, data_source)
            )
        return columns

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pyarrow.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        from streamflow.feature_store import push_is_validated

        spec = schema.table_for_feature_view(feature_view.name)
        if not push_is_validated():
            frame = validation.checked(
                feature_view,
                table.to_pandas(types_mapper=_NULLABLE_DTYPES.get),
                where=f"offline write to {feature_view.name}",
            )
            table = pyarrow.Table.from_pandas(frame, preserve_index=False)
        with connection_pool(config.offline_store).connection(timeout=10.0) as conn:
            merge_rows(conn, spec, table)
        if progress:
            progress(table.num_rows)


_SOURCE_COLUMNS: dict[tuple, list[tuple[str, str]]] = {}
"""(database, source name, query) -> the source's (column, type) pairs, as PostgreSQL described them."""

_NULLABLE_DTYPES = {
    pyarrow.string(): pd.StringDtype(),
    pyarrow.large_string(): pd.StringDtype(),
    pyarrow.int64(): pd.Int64Dtype(),
    pyarrow.float64(): pd.Float64Dtype(),
    pyarrow.bool_(): pd.BooleanDtype(),
}
"""Arrow types read back as pandas' nullable dtypes (the registry's), so validation stays vectorised."""


def _csv(table: schema.Table, rows: pyarrow.Table) -> pyarrow.Buffer:
    """The rows' staging columns as CSV for COPY (warehouse.arrow_csv): dates as days, times
    as UTC with microseconds."""
    arrow = rows.select(warehouse.staging_columns(table))
    for col in [schema.SNAPSHOT_TIME, *(c.name for c in table.columns if c.kind == "date")]:
        i = arrow.schema.get_field_index(col)
        utc = pc.cast(
            arrow.column(i),
            options=pc.CastOptions(pyarrow.timestamp("us", tz="UTC"), allow_time_truncate=True),
        )
        arrow = arrow.set_column(
            i, col, pc.cast(utc, pyarrow.date32()) if col != schema.SNAPSHOT_TIME else utc
        )
    return warehouse.arrow_csv(arrow)


def merge_rows(conn, table: schema.Table, rows: pyarrow.Table) -> int:
    """COPY validated rows into a staging table and merge them into the snapshot table; returns
    the rows inserted or changed.

    One transaction: either every row is merged or none. Rows equal to the stored ones change
    nothing, so a replayed batch leaves the table as it was.
    """
    with conn.transaction(), conn.cursor() as cur:
        stage = "streamflow_offline_stage"
        warehouse.create_staging_table(cur, table, stage)
        warehouse.copy_csv(cur, stage, warehouse.staging_columns(table), _csv(table, rows), header=False)
        return warehouse.merge_into_snapshot_table(cur, table, stage)
