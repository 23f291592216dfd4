"""StreamFlow's Feast provider: Feast's own (passthrough) provider with a column-wise push path.

Named in feature_store.yaml as ``provider: streamflow.feast_stores.provider.StreamflowProvider``.
``store.push(...)`` keeps its meaning (push source → its feature views → online and offline
stores); what changes is how a pushed frame reaches our online store. Feast converts every value
of every row into a protobuf object (``_convert_arrow_to_proto``) and the online store serializes
them again; here the frame is encoded per column straight into the online table's row format
(``value_encoding``) and written with one binary COPY. Views the fast path does not cover (other
online stores, on-demand views, field mappings, composite or non-string keys, other value types)
take Feast's path unchanged.

Two checks come first. The provider refuses a configuration whose project is not StreamFlow's
(``settings.check_project``: Feast reads the project from its yaml only). A push to one of the
registry's views that ``streamflow.feature_store.push`` did not validate (``feast serve`` /push,
a user's own ``store.push``) is validated here (``validation.checked``: 422 from ``feast serve``)
and the typed frame is what gets written, whichever path writes it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
from feast import FeatureView, ValueType
from feast.infra.passthrough_provider import PassthroughProvider

from streamflow.feast_stores import settings, validation, value_encoding
from streamflow.feast_stores.online import StreamflowOnlineStore

log = logging.getLogger(__name__)


def fast_path_features(provider: PassthroughProvider, feature_view, field_mapping) -> list | None:
    """The (name, value type) list of a view the column-wise path can write, else None."""
    if not isinstance(provider.online_store, StreamflowOnlineStore):
        return None
    if type(feature_view) is not FeatureView or field_mapping:
        return None
    source = feature_view.batch_source
    if source is None or source.field_mapping or source.created_timestamp_column:
        return None
    keys = feature_view.entity_columns
    if len(keys) != 1 or keys[0].dtype.to_value_type() != ValueType.STRING:
        return None
    if provider.repo_config.entity_key_serialization_version < 3:
        return None
    features = [(f.name, f.dtype.to_value_type()) for f in feature_view.features]
    if not all(value_encoding.supports(value_type) for _, value_type in features):
        return None
    return features


def event_micros(frame: pd.DataFrame, column: str, view: str) -> np.ndarray:
    """Event times as microseconds since the epoch (naive times are UTC, as in Feast)."""
    times = frame[column]
    if not isinstance(times.dtype, pd.DatetimeTZDtype):  # converting a zoned column again cost 1/10 of a push
        times = pd.to_datetime(times, utc=True, errors="coerce", format="ISO8601")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise ValueError(f"push to {view}: row {row} has no event time in column {column!r}")
    return times.to_numpy(dtype="datetime64[us]").astype(np.int64)


class StreamflowProvider(PassthroughProvider):
    """Feast's passthrough provider, with pushes to our online store encoded column-wise."""

    def __init__(self, config):
        settings.check_project(config)
        super().__init__(config)

    def ingest_df(self, feature_view, df: pd.DataFrame, field_mapping: dict | None = None):
        df = validation.checked(feature_view, df, where=f"push to {feature_view.name}")
        features = fast_path_features(self, feature_view, field_mapping)
        if features is None:
            return super().ingest_df(feature_view, df, field_mapping)
        join_key = feature_view.entity_columns[0].name
        wanted = [join_key] + [name for name, _ in features]
        missing = [name for name in wanted if name not in df.columns]
        if missing:
            raise ValueError(f"push to {feature_view.name}: the frame lacks column(s) {', '.join(missing)}")
        table = pa.Table.from_pandas(df[wanted], preserve_index=False)
        if table.column(join_key).null_count:
            raise ValueError(f"push to {feature_view.name}: {join_key} is missing in some rows")
        keys = value_encoding.string_entity_keys_array(join_key, table.column(join_key))
        vals = value_encoding.encode_rows_array(table, features)
        stamps = event_micros(df, feature_view.batch_source.timestamp_field, feature_view.name)
        self.online_store.write_encoded(
            self.repo_config, feature_view.name, keys, ",".join(name for name, _ in features), vals, stamps
        )

    async def ingest_df_async(self, feature_view, df: pd.DataFrame, field_mapping: dict | None = None):
        df = validation.checked(feature_view, df, where=f"push to {feature_view.name}")
        return await super().ingest_df_async(feature_view, df, field_mapping)
