"""Tests of the snapshot data generator (format, distributions, drift, determinism, CLI)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamflow import contract, schema
from streamflow.datagen.generate import AVG_SESSION_MINS, generate, main

N = 20_000
SNAPSHOTS = ("month_000", "month_001", "month_002")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate(out, users=N, seed=7, snapshots=SNAPSHOTS, progress=False)
    return out


def raw(folder: Path, table: str) -> pd.DataFrame:
    """A CSV file as strings, exactly as written (empty stays empty)."""
    return pd.read_csv(folder / schema.table(table).file, dtype=str, keep_default_na=False)


def month(data: Path, snapshot: str) -> pd.DataFrame:
    """All six tables of a snapshot joined on their row order, with numeric columns parsed."""
    frames = [raw(data / snapshot, t.name) for t in schema.TABLES]
    for f in frames[1:]:
        assert f["user_id"].equals(frames[0]["user_id"])
    df = pd.concat([frames[0]] + [f.drop(columns="user_id") for f in frames[1:]], axis=1)
    for t in schema.TABLES:
        for c in t.columns:
            if c.kind in ("integer", "float"):
                df[c.name] = df[c.name].astype({"integer": "int64", "float": "float64"}[c.kind])
            elif c.kind == "boolean":
                df[c.name] = df[c.name].map({"True": True, "False": False, "": None})
    return df


@pytest.fixture(scope="module")
def m0(data) -> pd.DataFrame:
    return month(data, "month_000")


@pytest.fixture(scope="module")
def m1(data) -> pd.DataFrame:
    return month(data, "month_001")


# --- format ---------------------------------------------------------------------------------


def test_returns_snapshot_folders(tmp_path):
    folders = generate(tmp_path, users=10, progress=False)
    assert folders == {s: tmp_path / s for s in ("month_000", "month_001")}
    assert sorted(p.name for p in (tmp_path / "month_000").iterdir()) == sorted(t.file for t in schema.TABLES)


@pytest.mark.parametrize("snapshot", SNAPSHOTS)
def test_exact_headers_and_row_counts(data, snapshot):
    for table in schema.TABLES:
        lines = (data / snapshot / table.file).read_text().splitlines()
        assert lines[0] == ",".join(table.header)
        assert len(lines) == N + 1


def test_booleans_are_true_false_literals(data):
    for snapshot in SNAPSHOTS:
        for table in schema.TABLES:
            df = raw(data / snapshot, table.name)
            for c in table.columns:
                if c.kind == "boolean":
                    allowed = {"True", "False", ""} if c.nullable else {"True", "False"}
                    assert set(df[c.name]) <= allowed, (table.name, c.name)
                    assert {"True", "False"} <= set(df[c.name]), (table.name, c.name)


def test_plan_flags_empty_exactly_when_no_net_service(data):
    subs = raw(data / "month_000", "subscriptions")
    no_net = subs["net_service"] == "No"
    assert 0.19 < no_net.mean() < 0.25
    for flag in ("plan_stream_tv", "plan_stream_movies"):
        assert ((subs[flag] == "") == no_net).all()


def test_user_ids_match_pattern_and_are_unique(m0):
    ids = m0["user_id"]
    assert ids.map(lambda s: contract.check(schema.KEY_COLUMN, s) == s).all()
    assert ids.is_unique


def test_same_users_in_same_order_across_snapshots(data):
    first = raw(data / "month_000", "users")["user_id"]
    for snapshot in SNAPSHOTS:
        for table in schema.TABLES:
            assert raw(data / snapshot, table.name)["user_id"].equals(first), (snapshot, table.name)


def test_zero_months_active_has_total_paid_zero(data):
    subs = raw(data / "month_000", "subscriptions")
    zero = subs["months_active"] == "0"
    assert zero.sum() > 0
    assert (subs.loc[zero, "total_paid"] == "0.0").all()
    assert (subs.loc[~zero, "total_paid"].astype(float) > 0).all()


def test_float_and_date_formats(data):
    subs = raw(data / "month_000", "subscriptions")
    support = raw(data / "month_000", "support_agg_90d")
    users = raw(data / "month_000", "users")
    assert subs["monthly_fee"].str.fullmatch(r"\d+\.\d{1,2}").all()
    assert subs["total_paid"].str.fullmatch(r"\d+\.\d{1,2}").all()
    assert support["ticket_avg_resolution_hrs_90d"].str.fullmatch(r"\d+\.\d").all()
    assert users["signup_date"].str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    days = pd.to_datetime(users["signup_date"])
    assert days.min() >= pd.Timestamp("2022-01-01") and days.max() <= pd.Timestamp("2022-02-06")
    assert days.nunique() == 37


# --- determinism ----------------------------------------------------------------------------


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.csv"))}


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate(tmp_path / "a", users=2_500, seed=3, progress=False)
    generate(tmp_path / "b", users=2_500, seed=3, progress=False)
    generate(tmp_path / "c", users=2_500, seed=4, progress=False)
    a = files(tmp_path / "a")
    assert len(a) == 12
    assert a == files(tmp_path / "b")
    other = files(tmp_path / "c")
    assert all(a[name] != other[name] for name in a)


def test_chunk_size_does_not_change_output(tmp_path):
    for chunk in (1_000, 777, 100_000):
        generate(tmp_path / str(chunk), users=2_500, seed=3, chunk_size=chunk, progress=False)
    reference = files(tmp_path / "100000")
    assert files(tmp_path / "1000") == reference
    assert files(tmp_path / "777") == reference


def test_fewer_users_is_a_prefix_of_more_users(tmp_path):
    generate(tmp_path / "small", users=1_200, seed=3, progress=False)
    generate(tmp_path / "big", users=2_500, seed=3, progress=False)
    small, big = files(tmp_path / "small"), files(tmp_path / "big")
    for name, text in small.items():
        assert big[name].startswith(text)


# --- distributions of month_000 -------------------------------------------------------------


def share(mask) -> float:
    return float(np.mean(mask))


def test_user_distributions(m0):
    assert share(m0["user_gender"] == "Female") == pytest.approx(0.50, abs=0.02)
    assert set(m0["user_gender"]) == {"Female", "Male"}
    assert share(m0["user_is_senior"]) == pytest.approx(0.16, abs=0.02)
    assert share(m0["has_family"]) == pytest.approx(0.48, abs=0.02)
    assert share(m0["has_dependents"]) == pytest.approx(0.30, abs=0.02)


def test_subscription_distributions(m0):
    contract = m0["contract_type"].value_counts(normalize=True)
    expected = {"Month-to-month": 0.55, "One year": 0.21, "Two year": 0.24}
    assert contract.to_dict() == pytest.approx(expected, abs=0.02)
    net = m0["net_service"].value_counts(normalize=True)
    assert net.to_dict() == pytest.approx({"Fiber optic": 0.44, "DSL": 0.34, "No": 0.22}, abs=0.02)
    assert m0["months_active"].between(0, 72).all() and m0["months_active"].max() == 72
    assert m0["months_active"].mean() == pytest.approx(32, abs=2)
    assert share(m0["paperless_billing"]) == pytest.approx(0.59, abs=0.02)


def test_fees_by_net_service_and_total_paid(m0):
    fee = m0["monthly_fee"]
    assert fee.min() >= 18.25 and fee.max() <= 118.75
    ranges = {"No": (18, 27), "DSL": (23, 95), "Fiber optic": (68, 119)}
    for service, (low, high) in ranges.items():
        f = fee[m0["net_service"] == service]
        assert f.min() >= low and f.max() <= high, service
        assert f.max() - f.min() > 0.6 * (high - low), service
    active = m0["months_active"] > 0
    ratio = m0.loc[active, "total_paid"] / (fee[active] * m0.loc[active, "months_active"])
    assert ratio.between(0.85, 1.15).all()
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)


def test_usage_distributions(m0):
    watch = m0["watch_hours_30d"]
    assert watch.mean() == pytest.approx(29.6, abs=0.5)
    assert watch.std() == pytest.approx(6.8, abs=0.5)
    assert watch.min() >= 5.7 and watch.max() <= 50.8
    assert np.corrcoef(watch, m0["monthly_fee"])[0, 1] > 0.3
    assert (m0["avg_session_mins_7d"] == AVG_SESSION_MINS).all()
    devices = m0["unique_devices_30d"].value_counts(normalize=True)
    assert devices.to_dict() == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 1 / 3}, abs=0.02)
    assert m0["skips_7d"].mean() == pytest.approx(5, abs=0.15)
    assert m0["skips_7d"].var() == pytest.approx(5, abs=0.4)
    rebuffer = m0["rebuffer_events_7d"]
    assert rebuffer.between(0, 9).all()
    assert rebuffer.mean() == pytest.approx(2.3, abs=0.1)
    dsl = m0["net_service"] == "DSL"
    assert rebuffer[dsl].mean() > rebuffer[~dsl].mean() + 0.5


def test_payment_and_support_distributions(m0):
    failed = m0["failed_payments_90d"].value_counts(normalize=True)
    assert set(failed.index) <= {0, 1, 2, 3}
    assert failed[0] == pytest.approx(0.85, abs=0.015)
    assert failed[1] == pytest.approx(0.145, abs=0.015)
    assert failed[2] == pytest.approx(0.008, abs=0.004)
    tickets = m0["support_tickets_90d"].value_counts(normalize=True)
    assert set(tickets.index) <= {0, 1, 2, 3, 4}
    assert tickets[0] == pytest.approx(0.74, abs=0.015)
    assert tickets[1] == pytest.approx(0.22, abs=0.015)
    assert tickets[2] == pytest.approx(0.035, abs=0.008)
    assert tickets.get(3, 0) + tickets.get(4, 0) < 0.015
    hours = m0["ticket_avg_resolution_hrs_90d"]
    assert hours.min() >= 1.0 and hours.max() <= 24.9


def churn_by(df: pd.DataFrame, column: str) -> dict[str, float]:
    return df.groupby(column)["churn_label"].mean().to_dict()


def test_churn_rates(m0):
    assert share(m0["churn_label"]) == pytest.approx(0.265, abs=0.015)
    contract = churn_by(m0, "contract_type")
    assert contract["Month-to-month"] == pytest.approx(0.43, abs=0.03)
    assert contract["Two year"] == pytest.approx(0.03, abs=0.015)
    assert churn_by(m0, "net_service")["Fiber optic"] == pytest.approx(0.42, abs=0.03)


# --- drift ----------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["users", "subscriptions"])
def test_users_and_subscriptions_unchanged(data, table):
    file = schema.table(table).file
    first = (data / "month_000" / file).read_bytes()
    for snapshot in SNAPSHOTS[1:]:
        assert (data / snapshot / file).read_bytes() == first


def assert_drift_step(before: pd.DataFrame, after: pd.DataFrame) -> None:
    watch = after["watch_hours_30d"] - before["watch_hours_30d"]
    assert (watch != 0).all()
    assert watch.mean() == pytest.approx(-0.6, abs=0.1)
    assert after["watch_hours_30d"].between(5.7, 50.8).all()
    rebuffer = after["rebuffer_events_7d"] - before["rebuffer_events_7d"]
    assert rebuffer.between(0, 4).all()
    assert share(rebuffer > 0) == pytest.approx(0.25, abs=0.02)
    for column, fraction in (("failed_payments_90d", 0.03), ("support_tickets_90d", 0.05)):
        step = after[column] - before[column]
        assert step.isin([0, 1]).all(), column
        assert share(step == 1) == pytest.approx(fraction, abs=0.01), column
    for column in ("unique_devices_30d", "skips_7d", "ticket_avg_resolution_hrs_90d"):
        assert after[column].equals(before[column]), column


def test_month_001_drift(m0, m1):
    assert_drift_step(m0, m1)
    assert share(m1["churn_label"]) == pytest.approx(0.24, abs=0.015)


def test_month_001_labels_depend_less_on_contract(m0, m1):
    def spread(df: pd.DataFrame) -> float:
        rates = churn_by(df, "contract_type")
        return rates["Month-to-month"] - rates["Two year"]

    assert spread(m0) > 0.3
    assert abs(spread(m1)) < 0.12
    assert (m0["churn_label"] != m1["churn_label"]).any()


def test_month_002_drifts_again_from_month_001(data, m1):
    assert_drift_step(m1, month(data, "month_002"))


def test_later_snapshot_alone_matches_full_run(tmp_path, data):
    generate(tmp_path, users=N, seed=7, snapshots=["month_002"], progress=False)
    assert files(tmp_path / "month_002") == files(data / "month_002")
    assert not (tmp_path / "month_000").exists()


# --- arguments and command line -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"users": 0}, {"snapshots": ["june"]}, {"snapshots": []}, {"chunk_size": 0}, {"seed": -1}],
)
def test_generate_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        generate(tmp_path, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--users", "0"], "users must be"),
        (["--users", "-5"], "users must be"),
        (["--users", "many"], "invalid int value"),
        (["--snapshots", "month_000", "june"], "unknown snapshot 'june'"),
        (["--snapshots", "month_1"], "unknown snapshot"),
    ],
)
def test_cli_bad_arguments_return_2(tmp_path, capsys, argv, message):
    assert main(["--out", str(tmp_path), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_cli_writes_snapshots_and_logs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="streamflow.datagen.generate")
    argv = ["--out", str(tmp_path), "--users", "30", "--seed", "1", "--snapshots", "month_000"]
    assert main([*argv, "--no-progress"]) == 0
    lines = (tmp_path / "month_000" / "labels.csv").read_text().splitlines()
    assert len(lines) == 31
    assert not (tmp_path / "month_001").exists()
    assert any(re.search(r"month_000: 30 users .* s$", r.getMessage()) for r in caplog.records)


def test_the_readme_lookup_example_is_a_user_of_the_demo_data(tmp_path):
    """The README's `streamflow lookup <id>` names a user that `make demo` (7,043 users, the default
    seed) generates, so the example answers after the demo."""
    import re

    from streamflow import config

    readme = (config.REPO_ROOT / "README.md").read_text()
    [example] = re.findall(r"streamflow lookup (\d{4}-[A-Z]{5})", readme)
    generate(tmp_path, users=7043, progress=False)
    users = pd.read_csv(tmp_path / "month_001" / "users.csv", usecols=["user_id"])["user_id"]
    assert example in set(users)
