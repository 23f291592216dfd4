"""The churn model end to end against the real PostgreSQL: `streamflow train` (MLflow's store in a
schema of its own per run of this module, artifacts in a temporary directory), promotion,
`/predict` with a reload while requests keep coming, `streamflow predict`, training = serving
(`streamflow verify --model champion`) and `streamflow drift`.

A generated dataset (both months) is loaded and materialized once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from fastapi.testclient import TestClient
from feast.protos.feast.types.Value_pb2 import Value
from psycopg import sql

from streamflow import config, schema
from streamflow.batch.load import load_snapshot
from streamflow.churn import drift, features, parity, registry
from streamflow.churn.scoring import Champion, ChampionWatcher
from streamflow.churn.train import main as train_main
from streamflow.churn.train import train
from streamflow.datagen.generate import generate
from streamflow.feast_stores.online import decode_values, encode_values, table_name
from streamflow.feast_stores.value_encoding import string_entity_key
from streamflow.online_features import materialize
from tests import pipeline

USERS = 900
SUBS = schema.table("subscriptions")
USAGE = schema.table("usage_agg_30d")
JAN = schema.as_of_timestamp(schema.SNAPSHOTS["month_000"])


@pytest.fixture(scope="module")
def model_env(pg_settings, tmp_path_factory):
    """MLflow's schema and artifacts of this module alone; dropped afterwards."""
    mp = pytest.MonkeyPatch()
    name = f"mlflow_t{uuid.uuid4().hex[:8]}"
    mp.setenv("STREAMFLOW_MLFLOW_SCHEMA", name)
    mp.setenv("STREAMFLOW_MLFLOW_ARTIFACTS", str(tmp_path_factory.mktemp("mlartifacts")))
    mp.setenv("STREAMFLOW_MODEL_NAME", f"churn_{name}")
    yield name
    mp.undo()
    with psycopg.connect(pg_settings.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.execute(f"DROP TABLE IF EXISTS {drift.TABLE}")


@pytest.fixture(scope="module")
def loaded(model_env, tmp_path_factory):
    """Both months loaded and materialized; user 3 has no usage row (it cannot be scored)."""
    out = tmp_path_factory.mktemp("churn")
    generate(out, users=USERS, seed=21, progress=False)
    pipeline.reset_store()
    for folder in (out / "month_000", out / "month_001"):
        load_snapshot(folder)
    users = pipeline.users_of(out / "month_001")
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {USAGE.snapshot_table} WHERE user_id = %s", (users[3],))
    materialize(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))
    return users


@pytest.fixture(scope="module")
def first(loaded):
    """The first training: version 1, champion (there was none)."""
    return train(schema.SNAPSHOTS["month_000"], folds=3)


def test_train_validates_both_ways_and_makes_the_first_version_champion(first, capsys):
    assert {c.name for c in first.candidates} == {"logistic_regression", "gradient_boosting"}
    assert first.validation_as_of == schema.SNAPSHOTS["month_001"]
    for c in first.candidates:
        assert set(c.cv) == set(c.temporal or {}) == {"roc_auc", "pr_auc", "log_loss", "brier"}
        # month_001's labels depend less on the features than month_000's (../DATA.md): the temporal
        # validation is harder, but still better than chance
        assert c.cv["roc_auc"] > 0.7 and c.temporal is not None and c.temporal["roc_auc"] > 0.55, c
        assert c.latency_ms > 0
    assert first.version == "1" and first.decision is not None and first.decision.promoted
    assert first.decision.reason == "no champion yet"
    champion = registry.champion()
    assert champion.version == "1" and champion.features == tuple(features.NAMES)
    chosen = next(c for c in first.candidates if c.name == first.chosen)
    assert chosen.validation_auc() == max(c.validation_auc() for c in first.candidates)


def test_a_retrained_model_that_does_not_beat_the_champion_stays_out_unless_forced(first, capsys):
    # the same data and seeds: the same AUC, which does not beat the champion by the margin
    assert train_main(["--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "version 2" in out and "not promoted: ROC AUC" in out and "short of the margin" in out
    assert registry.champion().version == "1"
    assert train_main(["--folds", "3", "--force"]) == 0
    assert "promoted to champion: --force" in capsys.readouterr().out
    assert registry.champion().version == "3"
    client = registry.client()
    tags = client.get_model_version(config.settings().model.name, "2").tags
    assert tags["promotion"].startswith("not promoted: ")


def test_scores_online_equal_scores_offline_and_a_changed_online_value_is_reported(first, loaded, pg_conn):
    champion = Champion.load()
    report = parity.check(champion)
    assert report.ok, report.to_text()
    assert report.users == USERS and report.scored == USERS - 1  # users[3] has no usage row on either side
    user = loaded[7]
    key = string_entity_key(schema.KEY, user)
    name = table_name(config.feast_project(), SUBS.feature_view)
    names, vals = pg_conn.execute(
        f'SELECT names, vals FROM "{name}" WHERE entity_key = %s', (key,)
    ).fetchone()
    values = decode_values(vals)
    i = names.split(",").index("monthly_fee")
    values[i] = Value(double_val=values[i].double_val + 40.0)
    pg_conn.execute(f'UPDATE "{name}" SET vals = %s WHERE entity_key = %s', (encode_values(values), key))
    try:
        report = parity.check(champion)
        assert [m.user_id for m in report.mismatches] == [user]
        assert report.mismatches[0].detail == "features differ: monthly_fee"
    finally:
        pg_conn.execute(f'UPDATE "{name}" SET vals = %s WHERE entity_key = %s', (vals, key))
    assert parity.check(champion).ok


@pytest.fixture
def serving(first, loaded):
    """An API app whose champion watcher (checking every 0.2 s) has loaded the champion."""
    from api.app import create_app

    watcher = ChampionWatcher(refresh=0.2)
    with TestClient(create_app(lag=False, champion=watcher, drift=True)) as client:
        deadline = time.monotonic() + 60
        while watcher.current is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.current is not None, watcher.problem
        yield client, watcher


def test_get_predict_answers_the_champions_score_with_each_views_age(serving, loaded):
    from streamflow.online_features import lookup

    client, watcher = serving
    user = loaded[0]
    r = client.get(f"/predict/{user}")
    assert r.status_code == 200, r.text
    body = r.json()
    [row] = lookup([user])
    [expected] = Champion.load().score([user], [row])
    assert body["churn_probability"] == expected.probability and body["missing_features"] == []
    assert body["model"] == {"name": config.settings().model.name, "version": watcher.current.version.version}
    assert set(body["views"]) == set(features.MODEL_VIEWS)
    assert all(v["event_timestamp"].endswith("Z") and v["age_seconds"] > 0 for v in body["views"].values())


def test_a_user_missing_a_view_is_not_scored_and_its_features_are_named(serving, loaded):
    client, _ = serving
    r = client.get(f"/predict/{loaded[3]}")
    assert r.status_code == 200 and r.json()["churn_probability"] is None
    assert r.json()["missing_features"] == [
        f.ref for f in features.MODEL_FEATURES if f.view == USAGE.feature_view
    ]
    assert client.get("/predict/0000-NOONE").status_code == 404


def test_post_predict_answers_in_request_order_with_the_counts(serving, loaded):
    client, _ = serving
    user, incomplete = loaded[0], loaded[3]
    r = client.post("/predict", json={"user_ids": [user, incomplete, "0000-NOONE"]})
    assert r.status_code == 200
    batch = r.json()
    assert (batch["scored"], batch["not_scored"]) == (1, 2)
    assert [x["user_id"] for x in batch["results"]] == [user, incomplete, "0000-NOONE"]
    assert (
        batch["results"][0]["churn_probability"] == client.get(f"/predict/{user}").json()["churn_probability"]
    )


def test_the_alias_moving_while_a_client_asks_fails_no_request(serving, loaded):
    """Every answer is a 200 from a complete model, old or new; the new version shows in the metrics."""
    client, watcher = serving
    user = loaded[0]
    serving_version = watcher.current.version.version
    statuses, versions, stop = [], set(), threading.Event()

    def ask():
        while not stop.is_set():
            answer = client.get(f"/predict/{user}")
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                versions.add(answer.json()["model"]["version"])

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        report = train(schema.SNAPSHOTS["month_000"], folds=3, force=True)
        deadline = time.monotonic() + 60
        while watcher.current.version.version != report.version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watcher.current.version.version == report.version != serving_version
        seen = len(statuses)
        while len(statuses) < seen + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        asker.join()
    assert statuses and set(statuses) == {200}
    assert report.version in versions
    metrics = client.get("/metrics").text
    name = config.settings().model.name
    assert f'streamflow_model_info{{name="{name}",version="{report.version}"}} 1.0' in metrics
    assert "streamflow_churn_score_count" in metrics


def test_predict_cli_scores_from_the_online_store(first, loaded, capsys):
    from streamflow.churn.predict_cli import main

    assert main([loaded[0], "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["version"] == registry.champion().version
    assert 0 < doc["users"][0]["churn_probability"] < 1
    assert main([loaded[3]]) == 1
    assert f"{loaded[3]}: not scored, missing usage_agg_30d_fv:watch_hours_30d" in capsys.readouterr().out


def test_verify_model_champion_exits_0_when_scores_agree(first, loaded, capsys):
    from streamflow.verify.cli import main

    assert main(["--model", "champion", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["scored"] == USERS - 1


def test_drift_reports_psi_and_ks_and_the_api_shows_them(first, loaded):
    results = drift.drift(schema.SNAPSHOTS["month_000"], schema.SNAPSHOTS["month_001"])
    by_name = {d.feature: d for d in results}
    assert set(by_name) == set(features.NAMES) | {drift.SCORE}
    assert all(d.psi >= 0 for d in results)
    assert by_name["net_service"].ks is None and by_name["monthly_fee"].ks is not None
    drift.store(results, schema.SNAPSHOTS["month_000"], schema.SNAPSHOTS["month_001"])
    from prometheus_client import CollectorRegistry, generate_latest

    from api.drift_gauges import DriftGauges

    gauges = DriftGauges(CollectorRegistry(), interval=60)
    gauges.refresh()
    text = generate_latest(gauges.registry).decode()
    score = by_name[drift.SCORE]
    assert f'streamflow_drift_psi{{feature="{drift.SCORE}"}} {score.psi}' in text
    assert f'streamflow_drift_ks{{feature="monthly_fee"}} {by_name["monthly_fee"].ks}' in text
    assert 'streamflow_drift_ks{feature="net_service"}' not in text


def test_a_champion_whose_files_are_gone_is_named_and_only_force_replaces_it(loaded, pg_settings, tmp_path):
    """The champion's artifacts deleted: `train` says which version cannot be read and that --force
    replaces it (no traceback), and `train --force` makes the new version champion."""
    import shutil

    name = f"mlflow_t{uuid.uuid4().hex[:8]}"
    artifacts = tmp_path / "mlartifacts"
    mp = pytest.MonkeyPatch()
    mp.setenv("STREAMFLOW_MLFLOW_SCHEMA", name)
    mp.setenv("STREAMFLOW_MLFLOW_ARTIFACTS", str(artifacts))
    mp.setenv("STREAMFLOW_MODEL_NAME", f"churn_{name}")
    try:
        assert train(schema.SNAPSHOTS["month_000"], folds=2).version == "1"
        shutil.rmtree(artifacts)
        with pytest.raises(
            registry.ModelUnreadable, match=r"version 1 cannot be read.*train --force` replaces it"
        ):
            train(schema.SNAPSHOTS["month_000"], folds=2)
        forced = train(schema.SNAPSHOTS["month_000"], folds=2, force=True)
        assert forced.decision is not None and forced.decision.promoted
        assert "version 1 cannot be read" in forced.decision.reason
        assert registry.champion_version() == forced.version != "1"
    finally:
        mp.undo()
        with psycopg.connect(pg_settings.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
