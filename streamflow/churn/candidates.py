"""The models `streamflow train` compares: a logistic regression (the baseline) and a gradient
boosted tree ensemble, each a scikit-learn pipeline that takes :func:`streamflow.churn.features.model_frame`'s
frame as it is (its own encoding of the categories inside), so the registered artifact scores
raw feature rows."""

from __future__ import annotations

from collections.abc import Callable

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from streamflow.churn.features import CATEGORICAL, NUMERIC

SEED = 42


def logistic_regression() -> Pipeline:
    """One-hot categories, standardised numbers, L2-regularised logistic regression."""
    encode = ColumnTransformer(
        [
            ("categories", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
            ("numbers", StandardScaler(), NUMERIC),
        ]
    )
    return Pipeline([("encode", encode), ("model", LogisticRegression(max_iter=2000, C=1.0))])


def gradient_boosting() -> Pipeline:
    """Histogram gradient boosting with native categorical splits, early stopping off (the same
    trees on every run for the same data)."""
    encode = ColumnTransformer(
        [
            (
                "categories",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
                ),
                CATEGORICAL,
            ),
            ("numbers", "passthrough", NUMERIC),
        ]
    )
    model = HistGradientBoostingClassifier(
        learning_rate=0.05,
        max_iter=200,
        max_leaf_nodes=15,
        min_samples_leaf=40,
        l2_regularization=1.0,
        categorical_features=list(range(len(CATEGORICAL))),
        early_stopping=False,
        random_state=SEED,
    )
    return Pipeline([("encode", encode), ("model", model)])


CANDIDATES: dict[str, Callable[[], Pipeline]] = {
    "logistic_regression": logistic_regression,
    "gradient_boosting": gradient_boosting,
}
"""Every candidate by name; the first is the baseline."""

BASELINE = "logistic_regression"

SAFE_TYPE_PREFIXES = ("sklearn.", "numpy.")
SAFE_TYPES = frozenset({"functools.partial"})
"""Types a candidate's pipeline may hold beyond skops' defaults (checked before it is stored)."""


def one_thread() -> None:
    """Run the models' native code (OpenMP: gradient boosting's fit and predict) on one thread in
    this process. The pipeline shares 2 cores with PostgreSQL, Kafka and the API; spinning OpenMP
    threads against them made a 200-user fit take 25 s instead of 2."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def trusted_types(model) -> list[str]:
    """The types of ``model`` that skops does not trust by default, all of them scikit-learn's or
    numpy's (or ``functools.partial``): what MLflow is told to trust when it stores the model in
    skops' format, which runs no code when loaded. Raises ValueError for any other type."""
    import skops.io

    types = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    unsafe = [t for t in types if not (t.startswith(SAFE_TYPE_PREFIXES) or t in SAFE_TYPES)]
    if unsafe:
        raise ValueError(f"the model holds types that are not scikit-learn's: {', '.join(unsafe)}")
    return list(types)
