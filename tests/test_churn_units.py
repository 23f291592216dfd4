"""The churn model's pure parts: its features, the frame it scores, its metrics and the drift
statistics (no database, no MLflow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streamflow import schema
from streamflow.churn import drift, features
from streamflow.churn.candidates import CANDIDATES
from streamflow.churn.metrics import METRICS, scores


def test_the_model_reads_the_courses_14_features_of_its_four_views():
    assert len(features.MODEL_FEATURES) == 14
    assert {f.view for f in features.MODEL_FEATURES} == set(features.MODEL_VIEWS)
    for f in features.MODEL_FEATURES:
        column = schema.table_for_feature_view(f.view).column(f.name)
        assert (column.nullable, column.kind) == (f.nullable, f.kind)
    assert features.CATEGORICAL == ["plan_stream_tv", "plan_stream_movies", "net_service"]
    assert [f.name for f in features.MODEL_FEATURES if f.view == "subs_profile_fv"] == [
        "months_active",
        "plan_stream_tv",
        "plan_stream_movies",
        "paperless_billing",
        "monthly_fee",
        "net_service",
    ]
    assert features.refs()[0] == "subs_profile_fv:months_active"


ROW = {
    "months_active": 5,
    "plan_stream_tv": True,
    "plan_stream_movies": None,
    "paperless_billing": True,
    "monthly_fee": 70.5,
    "net_service": "DSL",
    "watch_hours_30d": 12.0,
    "avg_session_mins_7d": 30.0,
    "unique_devices_30d": 2,
    "skips_7d": 4,
    "rebuffer_events_7d": 1,
    "failed_payments_90d": 0,
    "support_tickets_90d": 1,
    "ticket_avg_resolution_hrs_90d": 5.5,
}


def test_model_frame_gives_one_dtype_per_feature_whatever_the_source():
    from_mappings = features.model_frame([ROW, {**ROW, "paperless_billing": False}])
    feast_like = pd.DataFrame([ROW, {**ROW, "paperless_billing": False}]).astype(
        {
            "months_active": "Int64",
            "paperless_billing": "boolean",
            "plan_stream_tv": "boolean",
            "plan_stream_movies": "boolean",
            "net_service": "string",
            "monthly_fee": "Float64",
        }
    )
    from_frame = features.model_frame(feast_like.assign(user_id=["a", "b"]))
    pd.testing.assert_frame_equal(from_mappings, from_frame)
    assert list(from_frame.columns) == features.NAMES
    assert from_frame["paperless_billing"].tolist() == [1.0, 0.0]
    assert from_frame["plan_stream_tv"].tolist() == ["true", "true"]
    assert from_frame["plan_stream_movies"].tolist() == ["unknown", "unknown"]  # null: no internet service
    assert from_frame["net_service"].dtype == object and from_frame["months_active"].dtype == "float64"


def test_a_missing_feature_is_named_and_never_scored():
    row = {**ROW, "skips_7d": None}
    del row["monthly_fee"]
    assert features.missing(row) == ["subs_profile_fv:monthly_fee", "usage_agg_30d_fv:skips_7d"]
    assert features.missing({**ROW, "watch_hours_30d": float("nan")}) == ["usage_agg_30d_fv:watch_hours_30d"]
    assert features.missing(ROW) == []  # plan_stream_movies is null, which it may be
    no_support = {
        k: v for k, v in ROW.items() if k not in ("support_tickets_90d", "ticket_avg_resolution_hrs_90d")
    }
    assert features.missing(no_support) == [
        "support_agg_90d_fv:support_tickets_90d",
        "support_agg_90d_fv:ticket_avg_resolution_hrs_90d",
    ]
    no_subs = {**ROW, **{f.name: None for f in features.MODEL_FEATURES if f.view == "subs_profile_fv"}}
    assert features.missing(no_subs) == [
        f.ref for f in features.MODEL_FEATURES if f.view == "subs_profile_fv"
    ]
    with pytest.raises(ValueError, match="skips_7d is null"):
        features.model_frame([{**ROW, "skips_7d": None}])


def test_metrics_of_a_perfect_and_of_a_useless_model():
    y = [0, 0, 1, 1]
    perfect = scores(y, [0.01, 0.02, 0.98, 0.99])
    useless = scores(y, [0.5, 0.5, 0.5, 0.5])
    assert list(perfect) == list(METRICS)
    assert perfect["roc_auc"] == 1.0 and perfect["pr_auc"] == 1.0 and perfect["brier"] < 0.001
    assert useless["roc_auc"] == 0.5 and useless["brier"] == 0.25
    with pytest.raises(ValueError, match="one class"):
        scores([1, 1], [0.2, 0.3])


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_each_candidate_learns_a_signal_from_the_model_frame(name):
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(400):
        net = rng.choice(["DSL", "Fiber optic", "No"])
        rows.append({**ROW, "net_service": net, "monthly_fee": float(rng.uniform(20, 110))})
    frame = features.model_frame(rows)
    y = ((frame["net_service"] == "Fiber optic") & (frame["monthly_fee"] > 60)).astype(int).to_numpy()
    model = CANDIDATES[name]().fit(frame, y)
    assert scores(y, model.predict_proba(frame)[:, 1])["roc_auc"] > 0.95
    unseen = features.model_frame([{**ROW, "net_service": "Satellite"}])  # an unknown level still scores
    assert 0 <= model.predict_proba(unseen)[0, 1] <= 1


def test_psi_is_zero_for_the_same_sample_and_large_for_a_shifted_one():
    rng = np.random.default_rng(1)
    reference = rng.normal(50, 10, 5000)
    assert drift.psi_numeric(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert drift.psi_numeric(reference, rng.normal(50, 10, 5000)) < drift.WARN
    assert drift.psi_numeric(reference, rng.normal(65, 10, 5000)) > drift.ALERT
    cats = np.array(["a"] * 50 + ["b"] * 50)
    assert drift.psi_categorical(cats, cats) == pytest.approx(0.0, abs=1e-12)
    assert drift.psi_categorical(cats, np.array(["a"] * 90 + ["b"] * 10)) > drift.ALERT
    assert [drift.status(x) for x in (0.05, 0.2, 0.3)] == ["ok", "warn", "alert"]


def test_compare_gives_ks_for_numbers_only():
    rng = np.random.default_rng(2)
    numbers = drift.compare("x", rng.normal(0, 1, 500), rng.normal(1, 1, 500), categorical=False)
    assert (
        numbers.ks is not None
        and numbers.ks > 0.2
        and numbers.ks_pvalue is not None
        and numbers.ks_pvalue < 1e-6
    )
    assert numbers.status == "alert"
    levels = drift.compare("c", np.array(["a", "b"] * 50), np.array(["a", "b"] * 50), categorical=True)
    assert (levels.ks, levels.ks_pvalue, levels.status) == (None, None, "ok")


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_each_fitted_candidate_round_trips_through_skops_with_only_scikit_learn_types_trusted(name):
    import skops.io

    from streamflow.churn.candidates import trusted_types

    rows = [{**ROW, "monthly_fee": 20.0 + i, "net_service": ["DSL", "No"][i % 2]} for i in range(60)]
    frame = features.model_frame(rows)
    model = CANDIDATES[name]().fit(frame, [i % 2 for i in range(60)])
    trusted = trusted_types(model)
    assert all(t.startswith(("sklearn.", "numpy.")) or t == "functools.partial" for t in trusted), trusted
    loaded = skops.io.loads(skops.io.dumps(model), trusted=trusted)
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))


def test_a_model_holding_a_foreign_type_is_not_trusted():
    from sklearn.preprocessing import FunctionTransformer

    from streamflow.churn.candidates import trusted_types

    model = FunctionTransformer(func=pd.Series.abs).fit(pd.DataFrame({"x": [1.0, -2.0]}))
    with pytest.raises(ValueError, match="not scikit-learn's: .*pandas"):
        trusted_types(model)


def _rows(count: int, seed: int) -> list[dict]:
    """Complete feature rows, with categories the models saw and (from ``seed`` 1 on) some they did not."""
    rng = np.random.default_rng(seed)
    services = ["DSL", "Fiber optic", "No"] + (["Satellite"] if seed else [])
    rows = []
    for i in range(count):
        row: dict = {f.name: float(rng.integers(0, 60)) + rng.random() for f in features.MODEL_FEATURES}
        row.update(
            months_active=int(rng.integers(0, 72)),
            paperless_billing=bool(rng.integers(0, 2)),
            plan_stream_tv=[True, False, None][i % 3],
            plan_stream_movies=[None, True, False][i % 3],
            net_service=services[int(rng.integers(0, len(services)))],
        )
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_the_compiled_scorer_gives_the_pipelines_probabilities(name):
    from streamflow.churn.compiled import TOLERANCE, CompiledScorer

    train = _rows(600, 0)
    labels = [int(r["monthly_fee"] > 30) ^ int(i % 7 == 0) for i, r in enumerate(train)]
    model = CANDIDATES[name]().fit(features.model_frame(train), labels)
    compiled = CompiledScorer.compile(model)
    assert compiled is not None
    unseen = _rows(300, 1)  # an unknown net_service among them
    assert any(r["net_service"] == "Satellite" for r in unseen)
    ours = compiled.probabilities(unseen)
    theirs = model.predict_proba(features.model_frame(unseen))[:, 1]
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE
    assert compiled.probabilities([unseen[0]])[0] == pytest.approx(ours[0], abs=TOLERANCE)
    assert len(set(np.round(ours, 6))) > 10  # scores that vary: the check compares something


def test_a_pipeline_the_compiler_does_not_know_is_scored_through_the_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

    from streamflow.churn.compiled import CompiledScorer
    from streamflow.churn.registry import ModelVersion
    from streamflow.churn.scoring import Champion

    encode = ColumnTransformer(
        [
            ("categories", OneHotEncoder(handle_unknown="ignore"), features.CATEGORICAL),
            ("numbers", MinMaxScaler(), features.NUMERIC),
        ]
    )
    rows = _rows(200, 0)
    model = Pipeline([("encode", encode), ("model", LogisticRegression())]).fit(
        features.model_frame(rows), [i % 2 for i in range(200)]
    )
    assert CompiledScorer.compile(model) is None
    champion = Champion(ModelVersion("m", "1", tuple(features.NAMES)), model, None)
    [scored] = champion.score(["u"], [rows[0]])
    assert scored.probability == pytest.approx(model.predict_proba(features.model_frame([rows[0]]))[0, 1])


def test_a_compiled_scorer_that_differs_from_its_pipeline_is_refused_and_reported_by_verify():
    from streamflow.churn import parity
    from streamflow.churn.compiled import CompiledScorer
    from streamflow.churn.registry import ModelVersion
    from streamflow.churn.scoring import Champion

    rows = _rows(200, 0)
    model = CANDIDATES["logistic_regression"]().fit(features.model_frame(rows), [i % 2 for i in range(200)])
    compiled = CompiledScorer.compile(model)
    assert compiled is not None
    compiled._linear = (compiled._linear[0], compiled._linear[1] + 0.5)  # a wrong intercept
    users = [f"{i:04d}-AAAAA" for i in range(len(rows))]
    champion = Champion(ModelVersion("m", "1", tuple(features.NAMES)), model, compiled)
    scored = champion.score(users, rows)
    mismatches = parity.scorer_mismatches(champion, users, rows, scored)
    assert len(mismatches) == len(rows)
    assert "serving scorer and the registered pipeline differ" in mismatches[0].detail
    right = Champion(ModelVersion("m", "1", tuple(features.NAMES)), model, CompiledScorer.compile(model))
    assert parity.scorer_mismatches(right, users, rows, right.score(users, rows)) == []


def test_compiling_checks_the_scorer_on_probe_rows_of_every_known_category(monkeypatch):
    from streamflow.churn.compiled import CompiledScorer, probe_rows

    rows = _rows(200, 0)
    model = CANDIDATES["gradient_boosting"]().fit(features.model_frame(rows), [i % 2 for i in range(200)])
    probes = probe_rows(model)
    assert {r["net_service"] for r in probes} >= {"DSL", "Fiber optic", "No"}
    assert {r["plan_stream_tv"] for r in probes} == {True, False, None}
    assert CompiledScorer.compile(model) is not None
    honest = CompiledScorer.probabilities
    monkeypatch.setattr(CompiledScorer, "probabilities", lambda self, rows: honest(self, rows) + 1e-6)
    assert CompiledScorer.compile(model) is None
