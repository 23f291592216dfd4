"""The model's inputs: the 14 features of four views that the course's model reads, and the one
way to turn feature rows (online or offline) into the frame a model scores.

Every user is scored from these features only, in this order, with these dtypes, whether the row
comes from the online store (the API, ``streamflow predict``) or from a point-in-time training set
(``streamflow train``, ``streamflow verify --model``): one function, :func:`model_frame`, builds
both, so training and serving cannot diverge in how they read a value.

A user is scored only when every view has a row for it and every feature the contract says is
never null has a value: anything else is reported by name (:func:`missing`), never imputed. A
feature the contract allows to be null (``plan_stream_tv`` and ``plan_stream_movies``: unknown
without internet service) is a category of its own, ``unknown``, as the data means it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from streamflow import schema

MODEL_VIEWS: tuple[str, ...] = (
    "subs_profile_fv",
    "usage_agg_30d_fv",
    "payments_agg_90d_fv",
    "support_agg_90d_fv",
)
"""The feature views the model reads."""

_CHOSEN = {
    # the course's subscription snapshot columns (not contract_type or total_paid)
    "subs_profile_fv": (
        "months_active",
        "plan_stream_tv",
        "plan_stream_movies",
        "paperless_billing",
        "monthly_fee",
        "net_service",
    ),
    "usage_agg_30d_fv": None,  # None: every feature of the view
    "payments_agg_90d_fv": None,
    "support_agg_90d_fv": None,
}

UNKNOWN = "unknown"
"""The category of a null value of a feature that may be null."""


@dataclass(frozen=True)
class ModelFeature:
    view: str
    name: str
    kind: str
    nullable: bool

    @property
    def ref(self) -> str:
        """``view:feature``, as Feast and the API name it."""
        return f"{self.view}:{self.name}"

    @property
    def categorical(self) -> bool:
        """Text to the model: a category, or a boolean that may be null (true, false, unknown)."""
        return self.kind == "category" or (self.kind == "boolean" and self.nullable)


def _model_features() -> tuple[ModelFeature, ...]:
    out = []
    for view in MODEL_VIEWS:
        table = schema.table_for_feature_view(view)
        names = _CHOSEN[view] or tuple(table.feature_names)
        out += [ModelFeature(view, n, table.column(n).kind, table.column(n).nullable) for n in names]
    return tuple(out)


MODEL_FEATURES: tuple[ModelFeature, ...] = _model_features()
"""The 14 features, in the order of the model's input columns."""

NAMES: list[str] = [f.name for f in MODEL_FEATURES]
CATEGORICAL: list[str] = [f.name for f in MODEL_FEATURES if f.categorical]
NUMERIC: list[str] = [f.name for f in MODEL_FEATURES if not f.categorical]
_BY_NAME = {f.name: f for f in MODEL_FEATURES}
_BY_VIEW = tuple(tuple(f for f in MODEL_FEATURES if f.view == view) for view in MODEL_VIEWS)
"""The model's features, view by view."""


def refs() -> list[str]:
    """The features as ``view:feature`` references (for Feast and the API's selection)."""
    return [f.ref for f in MODEL_FEATURES]


def missing(row: Mapping[str, object]) -> list[str]:
    """The ``view:feature`` references that keep a row (feature name -> value) from being scored:
    every feature of a view of which the row has no value at all (no row of that view), and every
    feature that may not be null and is absent or null."""
    out: list[str] = []
    for of_view in _BY_VIEW:
        nulls = [is_null(row.get(f.name)) for f in of_view]
        if all(nulls):
            out += [f.ref for f in of_view]
        elif any(nulls):
            out += [
                f.ref for f, null in zip(of_view, nulls) if null and (not f.nullable or f.name not in row)
            ]
    return out


def is_null(value: object) -> bool:
    """Whether a feature value is absent: None, pandas' NA or a float NaN."""
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def model_frame(rows: pd.DataFrame | Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """The model's input: one row per given row, the columns of :data:`NAMES` in order; categories
    as text (``object``; a null boolean as ``unknown``, others ``true``/``false``) and every other
    feature as float64 (a non-null boolean as 0.0/1.0).

    Takes a frame with at least those columns (other columns are dropped) or mappings of feature
    name to value. The rows must be complete (see :func:`missing`): a null where the contract
    allows none raises ValueError.
    """
    if isinstance(rows, pd.DataFrame):
        columns = {name: rows[name].to_numpy(dtype=object, na_value=None) for name in NAMES}
    else:
        records = list(rows)
        columns = {name: [r.get(name) for r in records] for name in NAMES}
    return pd.DataFrame({name: _column(_BY_NAME[name], columns[name]) for name in NAMES})


def _column(feature: ModelFeature, values) -> np.ndarray:
    nulls = [is_null(v) for v in values]
    if any(nulls) and not feature.nullable:
        raise ValueError(f"feature {feature.name} is null in {sum(nulls)} row(s): score complete rows only")
    if feature.kind == "boolean" and feature.categorical:
        return np.array(
            [UNKNOWN if n else ("true" if v else "false") for v, n in zip(values, nulls)], dtype=object
        )
    if feature.categorical:
        return np.array([str(v) for v in values], dtype=object)
    return np.array([float(v) for v in values], dtype=np.float64)
