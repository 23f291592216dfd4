"""Where StreamFlow's Feast configuration gets its values (streamflow.feast_stores.settings), the
project check, the one conversion of pushed times, and the error feast serve answers 422 with.

No database needed: these build configurations and frames only.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pandas as pd
import pytest
from feast.errors import FeastError
from sqlalchemy.engine import make_url
from starlette.exceptions import HTTPException

from streamflow import contract, schema
from streamflow.feast_stores import settings
from streamflow.feast_stores.offline import StreamflowOfflineStoreConfig
from streamflow.feast_stores.online import StreamflowOnlineStoreConfig
from streamflow.feast_stores.validation import InvalidPush, checked
from streamflow.feature_store import feast_yaml, open_store
from streamflow.push_validation import PushValidationError, validate_frame

USAGE = schema.table("usage_agg_30d")


@pytest.mark.parametrize("cls", [StreamflowOnlineStoreConfig, StreamflowOfflineStoreConfig])
def test_store_configs_take_the_database_from_the_settings_unless_the_yaml_gives_it(cls, monkeypatch):
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.setenv("POSTGRES_DB", "features")
    monkeypatch.setenv("POSTGRES_USER", "feast")
    monkeypatch.setenv("POSTGRES_PASSWORD", "pw")
    made = cls()
    assert (made.host, made.port, made.database, made.user, made.password) == (
        "db.example",
        6543,
        "features",
        "feast",
        "pw",
    )
    assert cls(host="yaml.example", port=7000).host == "yaml.example"  # the yaml wins
    assert cls(host="yaml.example", port=7000).port == 7000
    monkeypatch.delenv("POSTGRES_HOST")  # unset: StreamFlow's default, as streamflow.config has it
    from streamflow import config

    assert cls().host == config.postgres().host


def test_registry_url_fills_in_what_it_leaves_out(monkeypatch):
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.setenv("POSTGRES_DB", "features")
    monkeypatch.setenv("POSTGRES_USER", "feast")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss:w/rd")
    url = settings.registry_url("postgresql+psycopg://?sslmode=disable")
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.example",
        6543,
        "features",
        "feast",
        "p@ss:w/rd",
    )
    assert url.query == {"sslmode": "disable"} and url.drivername == "postgresql+psycopg"
    assert settings.registry_url("postgresql+psycopg://").query == {"sslmode": "disable"}
    explicit = settings.registry_url("postgresql+psycopg://u:x@other:1/reg")
    assert (explicit.host, explicit.port, explicit.database, explicit.username, explicit.password) == (
        "other",
        1,
        "reg",
        "u",
        "x",
    )


def test_tls_settings_reach_the_stores_and_the_registry(monkeypatch):
    """POSTGRES_SSLMODE and POSTGRES_SSLROOTCERT reach every connection Feast makes: both store
    configs (what Feast's _get_conn_kwargs hands psycopg) and the registry's URL; a value the
    registry URL gives itself wins."""
    from feast.infra.utils.postgres.connection_utils import _get_conn_kwargs

    monkeypatch.setenv("POSTGRES_SSLMODE", "verify-full")
    monkeypatch.setenv("POSTGRES_SSLROOTCERT", "/etc/ssl/ca.pem")
    store = open_store()
    for section in (store.config.online_store, store.config.offline_store):
        kwargs = _get_conn_kwargs(section)
        assert (kwargs["sslmode"], kwargs["sslrootcert"]) == ("verify-full", "/etc/ssl/ca.pem")
    assert make_url(store.config.registry.path).query == {
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/ca.pem",
    }
    own = settings.registry_url("postgresql+psycopg://?sslmode=require")
    assert own.query == {"sslmode": "require", "sslrootcert": "/etc/ssl/ca.pem"}


def test_any_password_survives_the_registry_url(monkeypatch):
    """The yaml no longer pastes ${POSTGRES_PASSWORD} into a URL: SQLAlchemy escapes it."""
    from sqlalchemy.engine import make_url

    nasty = "p a@s/s:w%rd'\"#?&="
    monkeypatch.setenv("POSTGRES_PASSWORD", nasty)
    monkeypatch.setenv("POSTGRES_USER", "us er@x")
    store = open_store()
    url = make_url(store.config.registry.path)
    assert (url.password, url.username) == (nasty, "us er@x")
    assert store.config.online_store.password == store.config.offline_store.password == nasty


def test_the_registry_engine_gets_the_settings_through_the_sqlalchemy_plugin(monkeypatch):
    """What Feast does with the yaml's registry section: create_engine(path, **sqlalchemy_config_kwargs)."""
    import sqlalchemy

    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_DB", "features")
    engine = sqlalchemy.create_engine("postgresql+psycopg://?sslmode=disable", plugins=[settings.PLUGIN])
    assert (engine.url.host, engine.url.database) == ("db.example", "features")
    engine.dispose()


def test_open_store_keeps_the_settings_it_was_opened_with(monkeypatch):
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    monkeypatch.setenv("FEAST_PROJECT", "elsewhere")
    store = open_store()
    monkeypatch.setenv("POSTGRES_PORT", "5432")
    assert store.project == "elsewhere"
    assert store.config.online_store.port == store.config.offline_store.port == 6543
    assert ":6543/" in store.config.registry.path


def test_feast_refuses_another_project_than_streamflows(monkeypatch):
    from streamflow.feast_stores.provider import StreamflowProvider

    store = open_store(project="other_project")
    with pytest.raises(settings.ProjectMismatch, match="names project 'other_project' but .*FEAST_PROJECT"):
        StreamflowProvider(store.config)
    monkeypatch.setenv("FEAST_PROJECT", "other_project")
    StreamflowProvider(store.config)  # agreed


def test_feast_yaml_names_another_project_and_changes_nothing_else(tmp_path):
    import yaml

    from streamflow import config

    original = (config.feature_repo_dir() / "feature_store.yaml").read_text()
    other = feast_yaml("other_project")
    assert yaml.safe_load(other) == {**yaml.safe_load(original), "project": "other_project"}
    assert len(other.splitlines()) == len(original.splitlines())


# --- times ---------------------------------------------------------------------------------------

UTC_6 = pd.Timestamp("2024-01-31T06:00:00", tz="UTC")


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-31T06:00:00Z",
        "2024-01-31T06:00:00+00:00",
        "2024-01-31T08:00:00+02:00",
        datetime(2024, 1, 31, 6),  # a datetime object without zone: UTC, as in Feast
        datetime(2024, 1, 31, 7, tzinfo=timezone(pd.Timedelta(hours=1).to_pytimedelta())),
        pd.Timestamp("2024-01-31T06:00:00", tz="UTC"),
    ],
)
def test_push_takes_times_with_a_zone_and_datetimes(value):
    typed = validate_frame(USAGE, usage_frame(pd.Series([value, value], dtype=object)))
    assert typed[schema.SNAPSHOT_TIME].tolist() == [UTC_6, UTC_6]


@pytest.mark.parametrize(
    "column",
    [
        pd.Series(pd.to_datetime(["2024-01-31T06:00:00"] * 2)),  # naive datetime64: UTC
        pd.Series(pd.to_datetime(["2024-01-31T08:00:00+02:00"] * 2)),
        pd.Series(["2024-01-31T06:00:00Z"] * 2, dtype="string"),  # Arrow strings read back (offline writes)
    ],
)
def test_push_takes_datetime_and_string_columns(column):
    out = validate_frame(USAGE, usage_frame(column))[schema.SNAPSHOT_TIME]
    assert str(out.dtype).endswith("UTC]") and out.tolist() == [UTC_6, UTC_6]


@pytest.mark.parametrize(
    "value",
    [
        "2024-01-31T06:00:00",  # a text without zone: refused, as an event's is
        "2024-01-31 06:00:00Z",
        "2024-01-31T06:00:00Z\n",
        "2024-01-31T25:00:00Z",
        "yesterday",
        "",
        1706680800,
        1.5,
        True,
    ],
)
def test_push_refuses_any_other_time_with_the_contract_reason(value):
    reason = contract.expectation(schema.EVENT_TIME_COLUMN)
    with pytest.raises(PushValidationError, match=re.escape(f"field as_of: {reason}")):
        validate_frame(USAGE, usage_frame(pd.Series([value, value], dtype=object)))


def usage_frame(as_of) -> pd.DataFrame:
    return pd.DataFrame(
        {
            schema.KEY: ["1111-AAAAA", "2222-BBBBB"],
            schema.SNAPSHOT_TIME: as_of,
            "watch_hours_30d": [1.5, 2.5],
            "avg_session_mins_7d": [3.0, 4.0],
            "unique_devices_30d": [1, 2],
            "skips_7d": [0, 1],
            "rebuffer_events_7d": [0, 0],
            schema.EVENT_SNAPSHOT: ["s", None],
        }
    )


def test_validate_frame_takes_what_feast_serve_gets_from_json():
    """The frame of a JSON /push: ISO strings for times (mixed forms), ints, floats, None."""
    typed = validate_frame(USAGE, usage_frame(["2024-01-31T06:00:00Z", "2024-01-31T08:00:00+02:00"]))
    assert typed[schema.SNAPSHOT_TIME].tolist() == [UTC_6, UTC_6]
    assert str(typed[schema.SNAPSHOT_TIME].dtype) == "datetime64[ns, UTC]"
    assert typed["unique_devices_30d"].dtype == "Int64" and typed[schema.EVENT_SNAPSHOT].isna().tolist() == [
        False,
        True,
    ]


@pytest.mark.parametrize(
    "as_of, message",
    [
        (
            ["2024-01-31T06:00:00Z", "2024-02-30T00:00:00Z"],
            "row 1 (user 2222-BBBBB), field as_of: expected an ISO 8601",
        ),
        (["2024-01-31T06:00:00Z", None], "row 1 (user 2222-BBBBB), field as_of: must not be null"),
        ([1706680800, 1706680800], "row 0 (user 1111-AAAAA), field as_of: expected an ISO 8601"),
    ],
)
def test_validate_frame_names_the_bad_time(as_of, message):
    with pytest.raises(PushValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_frame(USAGE, usage_frame(as_of))


def test_a_push_feast_did_not_validate_fails_with_invalid_push():
    """What our provider and offline store raise: a PushValidationError for StreamFlow's callers,
    an HTTPException and a FeastError with status 422 for Feast's feature server."""
    from feast import FeatureView

    view = next(v for v in _views() if v.name == USAGE.feature_view)
    frame = usage_frame(["2024-01-31T06:00:00Z"] * 2)
    frame.loc[1, "skips_7d"] = -1
    with pytest.raises(InvalidPush) as err:
        checked(view, frame, where="push to usage_agg_30d_fv")
    exc = err.value
    assert (
        isinstance(exc, PushValidationError)
        and isinstance(exc, FeastError)
        and isinstance(exc, HTTPException)
    )
    assert exc.status_code == exc.http_status_code() == 422
    assert (
        str(exc) == exc.detail
        and "row 1 (user 2222-BBBBB), field skips_7d: expected an integer from 0 to 1000000" in str(exc)
    )
    assert isinstance(view, FeatureView)
    assert (
        checked(view, usage_frame(["2024-01-31T06:00:00Z"] * 2), "push")[schema.SNAPSHOT_TIME].tolist()
        == [UTC_6] * 2
    )


def _views():
    from feature_repo import definitions

    return list(definitions.FEATURE_VIEWS.values())
