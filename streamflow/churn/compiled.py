"""A registered pipeline's encoding step compiled to plain lookups, for scoring a few rows fast.

The models of :mod:`streamflow.churn.candidates` are scikit-learn pipelines whose first step, a
``ColumnTransformer``, encodes :func:`streamflow.churn.features.model_frame`'s pandas frame. Built
for one row, that frame and the transformer's pandas path cost milliseconds, far more than the
model itself. :class:`CompiledScorer` reads the fitted encoders once (one-hot and ordinal category
tables, the scaler's means and scales, passed-through numbers) and turns feature rows straight into
the numeric matrix the pipeline's last step receives, then asks that fitted estimator itself for
the probabilities: the model is the registered one, only the encoding is re-expressed.

Guarantee: :meth:`CompiledScorer.compile` returns a scorer only when it recognises every step and
its probabilities equal the pipeline's on probe rows covering every known category (within
``TOLERANCE``); otherwise None, and callers score through the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamflow.churn import features

log = logging.getLogger("streamflow.churn.compiled")

TOLERANCE = 1e-9
"""Largest difference from the pipeline's probability on the probe rows (the same estimator on the
same numbers; only the summation order of a sparse or dense product may differ)."""

_PROBE_NUMBERS = (0.0, 1.0, 2.5, 7.0, 12.0, 30.5, 99.0, 1000.0)


class _Columns:
    """One transformer of the ColumnTransformer: its features and how each becomes columns."""

    def __init__(
        self, kind: str, names: list[str], start: int, tables=None, mean=None, scale=None, unknown=-1.0
    ):
        self.kind = kind  # "onehot", "ordinal", "scale", "pass"
        self.names = names
        self.start = start
        self.tables = tables  # per feature: category -> column offset (onehot) or code (ordinal)
        self.mean = mean
        self.scale = scale
        self.unknown = unknown  # the ordinal code of a category the encoder never saw


def _value(feature: features.ModelFeature, value: Any) -> Any:
    """The value as model_frame writes it: text for a category, float for a number."""
    if feature.categorical:
        if feature.kind == "boolean":
            return features.UNKNOWN if features.is_null(value) else ("true" if value else "false")
        return str(value)
    return float(value)


class CompiledScorer:
    """Probabilities of the positive class for complete feature rows (see the module)."""

    def __init__(self, parts: list[_Columns], width: int, estimator: Any, linear=None):
        self._parts = parts
        self._width = width
        self._estimator = estimator
        self._linear = linear
        """(weights, intercept) of a binary logistic regression: its probability without
        scikit-learn's per-call input validation (``expit(x @ w + b)``, as its predict_proba)."""
        self._features = {f.name: f for f in features.MODEL_FEATURES}

    @classmethod
    def compile(cls, pipeline: Any) -> CompiledScorer | None:
        """The scorer of a fitted ``Pipeline([ColumnTransformer, estimator])``, checked against the
        pipeline itself on probe rows; None when a step is not one it knows or the check fails."""
        try:
            scorer = cls._build(pipeline)
        except _Unsupported as exc:
            log.info("scoring through the pipeline: %s", exc)
            return None
        rows = probe_rows(pipeline)
        ours = scorer.probabilities(rows)
        theirs = np.asarray(pipeline.predict_proba(features.model_frame(rows))[:, 1], dtype=float)
        worst = float(np.max(np.abs(ours - theirs))) if len(rows) else 0.0
        if not worst <= TOLERANCE:
            log.warning("scoring through the pipeline: the compiled encoding differs by %.3g", worst)
            return None
        return scorer

    @classmethod
    def _build(cls, pipeline: Any) -> CompiledScorer:
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
            raise _Unsupported("not a two-step pipeline")
        encode, estimator = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(encode, ColumnTransformer):
            raise _Unsupported("the first step is not a ColumnTransformer")
        parts: list[_Columns] = []
        width = 0
        for name, transformer, columns in encode.transformers_:
            names = list(columns)
            if name == "remainder":
                if transformer != "drop" and names:
                    raise _Unsupported("the remainder is not dropped")
                continue
            if transformer == "drop" or not names:
                continue
            unknown = [n for n in names if n not in features.NAMES]
            if unknown:
                raise _Unsupported(f"columns not among the model's features: {unknown}")
            if transformer == "passthrough" or _identity(transformer):
                parts.append(_Columns("pass", names, width))
                width += len(names)
            elif isinstance(transformer, OneHotEncoder):
                if transformer.drop_idx_ is not None or getattr(transformer, "_infrequent_enabled", False):
                    raise _Unsupported("a one-hot encoder that drops or groups categories")
                if transformer.handle_unknown != "ignore":
                    raise _Unsupported("a one-hot encoder that does not ignore unknown categories")
                tables: list[dict[str, float]] = []
                offset = 0
                for categories in transformer.categories_:
                    tables.append({str(c): float(offset + i) for i, c in enumerate(categories)})
                    offset += len(categories)
                parts.append(_Columns("onehot", names, width, tables=tables))
                width += offset
            elif isinstance(transformer, OrdinalEncoder):
                if transformer.handle_unknown != "use_encoded_value":
                    raise _Unsupported("an ordinal encoder without a code for unknown categories")
                tables = [{str(c): float(i) for i, c in enumerate(cats)} for cats in transformer.categories_]
                parts.append(
                    _Columns("ordinal", names, width, tables=tables, unknown=float(transformer.unknown_value))
                )
                width += len(names)
            elif isinstance(transformer, StandardScaler):
                mean = transformer.mean_ if transformer.with_mean else np.zeros(len(names))
                scale = transformer.scale_ if transformer.with_std else np.ones(len(names))
                parts.append(_Columns("scale", names, width, mean=np.asarray(mean), scale=np.asarray(scale)))
                width += len(names)
            else:
                raise _Unsupported(f"a {type(transformer).__name__} step")
        if not hasattr(estimator, "predict_proba"):
            raise _Unsupported("the estimator gives no probabilities")
        return cls(parts, width, estimator, _linear(estimator))

    def matrix(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """The estimator's input for complete rows (feature name -> value), one row each."""
        x = np.zeros((len(rows), self._width), dtype=np.float64)
        for part in self._parts:
            stop = part.start + len(part.names)
            if part.kind in ("scale", "pass"):
                block = np.array([[row[n] for n in part.names] for row in rows], dtype=np.float64)
                x[:, part.start : stop] = (block - part.mean) / part.scale if part.kind == "scale" else block
                continue
            kinds = [self._features[n] for n in part.names]
            for i, row in enumerate(rows):
                for j, (name, feature) in enumerate(zip(part.names, kinds)):
                    code = part.tables[j].get(_value(feature, row[name]))
                    if part.kind == "onehot":
                        if code is not None:  # an unknown category sets no column (ignored)
                            x[i, part.start + int(code)] = 1.0
                    else:
                        x[i, part.start + j] = part.unknown if code is None else code
        return x

    def probabilities(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """The positive class's probability for each complete row."""
        if not rows:
            return np.zeros(0)
        x = self.matrix(rows)
        if self._linear is not None:
            from scipy.special import expit

            weights, intercept = self._linear
            return np.asarray(expit(x @ weights + intercept), dtype=float)
        return np.asarray(self._estimator.predict_proba(x)[:, 1], dtype=float)


class _Unsupported(Exception):
    pass


def _identity(transformer: Any) -> bool:
    """Whether the step is the ColumnTransformer's fitted "passthrough" (an identity FunctionTransformer)."""
    from sklearn.preprocessing import FunctionTransformer

    return isinstance(transformer, FunctionTransformer) and transformer.func is None


def _linear(estimator: Any):
    """(weights, intercept) when ``estimator`` is a fitted binary LogisticRegression, else None."""
    from sklearn.linear_model import LogisticRegression

    if type(estimator) is not LogisticRegression or len(estimator.classes_) != 2:
        return None
    return np.asarray(estimator.coef_[0], dtype=np.float64), float(estimator.intercept_[0])


def probe_rows(pipeline: Any) -> list[dict[str, object]]:
    """Rows that take every known category of every categorical feature (and ``unknown`` values)
    and a spread of numbers, for checking a compiled scorer against its pipeline."""
    categories: dict[str, list[str]] = {}
    encode = pipeline.steps[0][1]
    for _, transformer, columns in getattr(encode, "transformers_", []):
        for j, name in enumerate(columns if isinstance(columns, list) else []):
            known = getattr(transformer, "categories_", None)
            if known is not None and name in features.NAMES:
                categories[name] = [str(c) for c in known[j]] + ["never-seen"]
    count = max([len(v) for v in categories.values()] + [len(_PROBE_NUMBERS)])
    rows = []
    for i in range(count):
        row: dict[str, object] = {}
        for feature in features.MODEL_FEATURES:
            if feature.kind == "boolean":
                row[feature.name] = [True, False, None][i % 3] if feature.nullable else bool(i % 2)
            elif feature.categorical:
                known_values = categories.get(feature.name, ["never-seen"])
                row[feature.name] = known_values[i % len(known_values)]
            else:
                row[feature.name] = _PROBE_NUMBERS[i % len(_PROBE_NUMBERS)] * (1 + i / count)
        rows.append(row)
    return rows
