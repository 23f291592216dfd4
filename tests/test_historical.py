"""Our point-in-time retrieval (streamflow.feast_stores.historical) against stock Feast's.

Every comparison runs the same retrieval twice on the same warehouse: through our store, and
through a FeatureStore of the same repo and project whose offline store is Feast's own
PostgreSQL class; the Arrow tables must be equal (names, types, values, row count). Expected
values are also checked against the snapshot files themselves, so a bug both stores shared would
still fail here.
"""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from feast import FeatureView, Field
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLRetrievalJob
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Int64
from psycopg import sql

from feature_repo import definitions
from streamflow import config, schema
from streamflow.batch.load import load_snapshot
from streamflow.datagen.generate import generate
from streamflow.feast_stores import historical
from streamflow.feast_stores.historical import StreamflowRetrievalJob, handles
from streamflow.feature_store import get_store
from streamflow.training import feature_refs
from tests import pipeline

USERS = 40
JAN = pd.Timestamp(schema.as_of_timestamp(schema.SNAPSHOTS["month_000"]))
FEB = pd.Timestamp(schema.as_of_timestamp(schema.SNAPSHOTS["month_001"]))
UNKNOWN = "0000-ZZZZZ"
USAGE = schema.table("usage_agg_30d")
SUPPORT = schema.table("support_agg_90d")
ENTITY_TABLE = "historical_test_entities"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    out = tmp_path_factory.mktemp("historical")
    generate(out, users=USERS, seed=11, progress=False)
    return out / "month_000", out / "month_001"


@pytest.fixture(scope="module")
def users(snapshots) -> list[str]:
    return pipeline.users_of(snapshots[0])


def csv_values(folder, table: schema.Table, column: str) -> dict[str, float]:
    frame = pd.read_csv(folder / table.file, float_precision="round_trip")
    return dict(zip(frame[schema.KEY], frame[column]))


@pytest.fixture()
def warehouse(pg_settings, snapshots, users):
    """Both months loaded, with two gaps: users[1] has no usage rows at all, users[2] no
    January support row (only February's)."""
    pipeline.reset_store()
    for folder in snapshots:
        load_snapshot(folder)
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {USAGE.snapshot_table} WHERE user_id = %s", (users[1],))
        conn.execute(
            f"DELETE FROM {SUPPORT.snapshot_table} WHERE user_id = %s AND as_of = %s",
            (users[2], JAN.to_pydatetime()),
        )
    get_store().refresh_registry()
    yield
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {ENTITY_TABLE}")


def stock_store():
    """The same repo, project and registry, with Feast's own provider and PostgreSQL offline store."""
    import yaml
    from feast import FeatureStore, RepoConfig

    from streamflow.feast_stores.settings import connection_fields, project

    repo = config.feature_repo_dir()
    raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
    raw["project"] = project()
    raw["provider"] = "local"
    raw["offline_store"] = {**connection_fields(), **raw["offline_store"], "type": "postgres"}
    repo_config = RepoConfig(**raw)
    repo_config.repo_path = repo
    return FeatureStore(repo_path=str(repo), config=repo_config)


def entity_frame(users: list[str]) -> pd.DataFrame:
    """Entity rows at several points in time, a duplicate row, an unknown user, an extra column."""
    rows = [(u, JAN, f"jan {i}") for i, u in enumerate(users)]
    rows += [(u, FEB, None) for u in users[:10]]
    rows += [
        (users[3], JAN + timedelta(days=15), "mid-february: still January's values"),
        (users[4], JAN - timedelta(days=1), "before any snapshot: nulls"),
        (users[0], JAN, "jan 0"),  # the same entity row twice: two result rows
        (UNKNOWN, JAN, 'unknown, "quoted"\nuser'),
        (users[5], FEB, ""),
    ]
    return pd.DataFrame(rows, columns=[schema.KEY, "event_timestamp", "note"])


def entity_sql(frame: pd.DataFrame) -> str:
    """The entity frame as a table of its own, and the SQL that selects it."""
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(ENTITY_TABLE)))
        conn.execute(
            sql.SQL("CREATE TABLE {} (user_id TEXT, event_timestamp TIMESTAMPTZ, note TEXT)").format(
                sql.Identifier(ENTITY_TABLE)
            )
        )
        with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(ENTITY_TABLE))) as copy:
            for row in frame.itertuples(index=False):
                copy.write_row([row[0], row[1].to_pydatetime(), row[2]])
    return f"SELECT user_id, event_timestamp, note FROM {ENTITY_TABLE}"


def retrieve(store, entity_df, full_feature_names=False, features=None, **kwargs):
    return store.get_historical_features(
        entity_df=entity_df,
        features=features or feature_refs(),
        full_feature_names=full_feature_names,
        **kwargs,
    )


def by_entity(table: pa.Table) -> pa.Table:
    """Rows in a canonical order (stock's order is the database's)."""
    keys = [schema.KEY, "event_timestamp"] + (["note"] if "note" in table.column_names else [])
    return table.sort_by([(k, "ascending") for k in keys])


def assert_same_as_stock(entity_df, full_feature_names=False, features=None, **kwargs) -> pd.DataFrame:
    """Ours and stock's result for the same retrieval are equal; returns ours as a DataFrame."""
    ours_job = retrieve(get_store(), entity_df, full_feature_names, features, **kwargs)
    stock_job = retrieve(stock_store(), entity_df, full_feature_names, features, **kwargs)
    assert isinstance(ours_job, StreamflowRetrievalJob)  # else this compares stock with stock
    assert type(stock_job) is PostgreSQLRetrievalJob
    ours, stock = ours_job.to_arrow(), stock_job.to_arrow()
    assert ours.schema.equals(stock.schema), f"\nours:  {ours.schema}\nstock: {stock.schema}"
    assert ours.num_rows == stock.num_rows
    assert by_entity(ours).equals(by_entity(stock))  # to_df() is to_arrow().to_pandas() for both
    return ours.to_pandas()


# --- same result as stock -----------------------------------------------------------------------


@pytest.mark.parametrize("full_feature_names", [False, True])
@pytest.mark.parametrize("entity_kind", ["dataframe", "sql"])
def test_training_set_equals_stock(warehouse, users, entity_kind, full_feature_names, monkeypatch):
    def slow_way(*args):
        raise AssertionError("the training set was not read by the CSV reader")

    monkeypatch.setattr(historical, "_fetch_as_stock", slow_way)  # our feature types never need it
    frame = entity_frame(users)
    entity_df = frame if entity_kind == "dataframe" else entity_sql(frame)

    ours = assert_same_as_stock(entity_df, full_feature_names)

    assert len(ours) == len(frame)
    prefix = f"{USAGE.feature_view}__" if full_feature_names else ""
    assert f"{prefix}watch_hours_30d" in ours.columns
    assert ("watch_hours_30d" in ours.columns) is not full_feature_names


def test_feature_subset_and_entity_columns_keep_their_order(warehouse, users):
    features = [f"{SUPPORT.feature_view}:ticket_avg_resolution_hrs_90d", f"{USAGE.feature_view}:skips_7d"]
    frame = entity_frame(users)[["note", "event_timestamp", schema.KEY]]

    ours = assert_same_as_stock(frame, features=features)

    assert list(ours.columns) == [
        "note",
        "event_timestamp",
        schema.KEY,
        "ticket_avg_resolution_hrs_90d",
        "skips_7d",
    ]


def test_other_entity_column_types_equal_stock(warehouse, users):
    """Entity columns of every kind a DataFrame carries (the CSV upload) or SQL returns (numeric:
    read the stock way) come back as stock gives them."""
    frame = (
        entity_frame(users)
        .head(12)
        .assign(
            weight=[0.1 + 0.2, float("nan")] + [1e-300] * 10,
            count=range(12),
            flag=[True, False] * 6,
            text=["", None, "a,b", 'say "hi"', "two\nlines"] + ["x"] * 7,
            seen=pd.Timestamp("2024-03-10 01:30:00.123456", tz="America/New_York"),
        )
    )
    assert_same_as_stock(frame)
    numeric = (
        f"SELECT user_id, as_of AS event_timestamp, 1.25::numeric AS weight, 7::smallint AS small "
        f"FROM {schema.LABEL_TABLE.snapshot_table}"
    )
    assert_same_as_stock(numeric)


# --- point-in-time semantics, checked against the snapshot files --------------------------------


def rows_at(frame: pd.DataFrame, user: str, when: pd.Timestamp) -> pd.DataFrame:
    """The result rows of one entity row (event_timestamp comes back as naive UTC, as stock's)."""
    return frame[(frame[schema.KEY] == user) & (frame["event_timestamp"] == when.tz_localize(None))]


def test_point_in_time_values_come_from_the_snapshot_at_or_before_each_row(warehouse, snapshots, users):
    jan = csv_values(snapshots[0], USAGE, "watch_hours_30d")
    feb = csv_values(snapshots[1], USAGE, "watch_hours_30d")
    assert jan[users[0]] != feb[users[0]]  # the months differ, so the test can tell them apart

    frame = retrieve(get_store(), entity_frame(users)).to_df()

    def watch_hours(user, when):
        return rows_at(frame, user, when)["watch_hours_30d"].tolist()

    assert watch_hours(users[0], JAN) == [jan[users[0]]] * 2  # month_000 although month_001 is loaded
    assert watch_hours(users[0], FEB) == [feb[users[0]]]
    assert watch_hours(users[3], JAN + timedelta(days=15)) == [jan[users[3]]]
    assert [pd.isna(v) for v in watch_hours(users[4], JAN - timedelta(days=1))] == [True]


def test_entity_missing_from_a_view_gets_nulls_for_that_view_only(warehouse, snapshots, users):
    frame = retrieve(get_store(), entity_frame(users)).to_df()
    features = [c for t in schema.TABLES for c in t.feature_names]

    unknown = rows_at(frame, UNKNOWN, JAN)
    assert len(unknown) == 1 and unknown[features].isna().all(axis=None)

    no_usage = rows_at(frame, users[1], JAN)
    assert len(no_usage) == 1
    assert no_usage[USAGE.feature_names].isna().all(axis=None)
    assert no_usage[schema.table("users").feature_names].notna().all(axis=None)

    support = csv_values(snapshots[1], SUPPORT, "support_tickets_90d")
    assert [pd.isna(v) for v in rows_at(frame, users[2], JAN)["support_tickets_90d"]] == [
        True
    ]  # no January row
    assert rows_at(frame, users[2], FEB)["support_tickets_90d"].tolist() == [support[users[2]]]


def test_rows_come_back_in_entity_order(warehouse, users):
    frame = entity_frame(users)
    ours = retrieve(get_store(), frame).to_df()
    assert ours[schema.KEY].tolist() == frame[schema.KEY].tolist()
    assert ours["note"].tolist() == frame["note"].tolist()


def test_an_empty_entity_set_gives_an_empty_training_set(warehouse):
    empty = f"SELECT user_id, as_of AS event_timestamp FROM {schema.LABEL_TABLE.snapshot_table} WHERE false"
    frame = retrieve(get_store(), empty).to_df()
    assert frame.empty
    assert list(frame.columns) == [schema.KEY, "event_timestamp", *[r.split(":")[1] for r in feature_refs()]]


# --- ttl and created timestamps (our views have neither: variants applied for these tests) -------


def apply_usage_variant(**changes):
    """Re-register the usage view changed as given (the next test's reset applies the original)."""
    view = definitions.feature_view(USAGE)
    for name, value in changes.items():
        setattr(view, name, value)
    get_store().apply([view])
    get_store().refresh_registry()


def test_ttl_equals_stock(warehouse, users):
    apply_usage_variant(ttl=timedelta(days=10))
    frame = pd.DataFrame(
        {
            schema.KEY: [users[0]] * 4,
            "event_timestamp": [
                JAN + timedelta(days=5),
                JAN + timedelta(days=15),
                FEB,
                JAN + timedelta(days=10),
            ],
        }
    )
    ours = assert_same_as_stock(frame, features=[f"{USAGE.feature_view}:watch_hours_30d"])
    assert ours["watch_hours_30d"].notna().tolist() == [True, False, True, True]  # 15 days > ttl


@pytest.mark.parametrize("filter_by_created_timestamp", [False, True])
def test_created_timestamp_equals_stock(warehouse, users, filter_by_created_timestamp):
    source = PostgreSQLSource(
        name=f"{USAGE.batch_source}_created",
        query=f"SELECT *, loaded_at AS created FROM {USAGE.snapshot_table}",
        timestamp_field=schema.SNAPSHOT_TIME,
        created_timestamp_column="created",
    )
    apply_usage_variant(batch_source=source)
    with psycopg.connect(config.postgres().conninfo, autocommit=True) as conn:
        conn.execute(f"UPDATE {USAGE.snapshot_table} SET loaded_at = as_of + interval '10 days'")
    frame = pd.DataFrame(
        {
            schema.KEY: [users[0], users[0], users[1], users[6]],
            "event_timestamp": [
                JAN + timedelta(days=5),
                JAN + timedelta(days=15),
                JAN,
                FEB + timedelta(days=30),
            ],
        }
    )
    ours = assert_same_as_stock(
        frame,
        features=[f"{USAGE.feature_view}:watch_hours_30d"],
        filter_by_created_timestamp=filter_by_created_timestamp,
    )
    # January's row was created on February 10: invisible on February 5 when filtering by it
    assert pd.isna(ours["watch_hours_30d"][0]) is filter_by_created_timestamp
    assert ours["watch_hours_30d"][[1, 3]].notna().all()


# --- what is left to stock ------------------------------------------------------------------------


def test_only_registry_views_with_an_entity_set_take_our_path():
    views = [definitions.FEATURE_VIEWS[t.name] for t in schema.TABLES]
    refs = feature_refs()
    assert handles(views, refs, "SELECT 1", {})
    assert handles(views, refs, pd.DataFrame(), {})
    assert not handles(views, refs, None, {"start_date": JAN, "end_date": FEB})  # entity-less mode
    assert not handles(views, refs + ["some_odfv:score"], "SELECT 1", {})  # an on-demand view
    other = FeatureView(
        name="not_in_the_registry_fv",
        entities=[definitions.user],
        source=definitions.batch_source(USAGE),
        schema=[Field(name="skips_7d", dtype=Int64)],
    )
    assert not handles([other], ["not_in_the_registry_fv:skips_7d"], "SELECT 1", {})
    assert not handles(views + [other], refs + ["not_in_the_registry_fv:skips_7d"], "SELECT 1", {})
