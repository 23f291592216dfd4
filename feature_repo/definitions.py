"""Feast objects of StreamFlow, all built from the table registry (streamflow.schema).

One entity (`user`), and per table: a PostgreSQL batch source over its snapshot table, a push
source (the consumer's way in), and a feature view. The churn model's feature service groups
every feature view but the labels.
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, PushSource, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import (
    PostgreSQLSource,
)
from feast.types import Bool, Float64, Int64, String, UnixTimestamp

from streamflow import schema

FEAST_TYPES = {
    "id": String,
    "category": String,
    "integer": Int64,
    "float": Float64,
    "boolean": Bool,
    "date": UnixTimestamp,
    "timestamp": UnixTimestamp,
}

user = Entity(
    name=schema.ENTITY,
    join_keys=[schema.KEY],
    value_type=ValueType.STRING,
    description="A subscriber of the streaming service, e.g. 7590-VHVEG",
)


def source_query(table: schema.Table) -> str:
    """The columns Feast reads from (and, for pushes, writes to) a snapshot table."""
    cols = ", ".join([schema.KEY, schema.SNAPSHOT_TIME, *table.feature_names, schema.EVENT_SNAPSHOT])
    return f"SELECT {cols} FROM {table.snapshot_table}"


def batch_source(table: schema.Table) -> PostgreSQLSource:
    return PostgreSQLSource(
        name=table.batch_source,
        query=source_query(table),
        timestamp_field=schema.SNAPSHOT_TIME,
        description=f"{table.snapshot_table}: monthly snapshots of {table.name}",
    )


def push_source(table: schema.Table) -> PushSource:
    return PushSource(name=table.push_source, batch_source=batch_source(table))


def feature_view(table: schema.Table) -> FeatureView:
    return FeatureView(
        name=table.feature_view,
        entities=[user],
        ttl=timedelta(0),  # no TTL: a snapshot value stays valid until the next one
        schema=[
            Field(name=c.name, dtype=FEAST_TYPES[c.kind], description=c.description) for c in table.columns
        ],
        source=push_source(table),
        online=True,
        description=table.description,
        tags={"table": table.name},  # its topic: streamflow.topics (the prefix is the deployment's)
    )


FEATURE_VIEWS: dict[str, FeatureView] = {t.name: feature_view(t) for t in schema.TABLES}

churn_model = FeatureService(
    name=schema.FEATURE_SERVICE,
    features=[FEATURE_VIEWS[t.name] for t in schema.FEATURE_TABLES],
    description="Every feature the churn model reads (labels excluded).",
)

# Feast's `feast apply` discovers objects among module globals: expose each view by its name.
globals().update({fv.name: fv for fv in FEATURE_VIEWS.values()})


def all_objects() -> list:
    """Everything `streamflow apply` registers."""
    return [user, *FEATURE_VIEWS.values(), churn_model]
