"""Feast's own CLI and `feast serve` on feature_repo/, as a new user runs them: nothing exported.

Every command is the real `feast` of the venv, run as a subprocess in feature_repo/ with an
environment that has none of StreamFlow's settings (``bare_env``: PATH, HOME, locale, and
PYTHONPATH so that this checkout's code is imported). The commands that write set only what
isolates them: POSTGRES_DB (the test database) and the project -- FEAST_PROJECT, and the same name
in the yaml they are given (``feast -f``), since Feast reads the project from its yaml only. Host,
port, user and password are left unset: they come from StreamFlow's defaults through our store
config classes and the registry's SQLAlchemy plugin. One read-only command runs with nothing set
at all, against the default database (``streamflow``: it exists wherever the tests run, since
``warehouse.ensure_database`` creates the test database from it).

Then `feast serve` on the same repo, project and database: /get-online-features answers what our
API answers, /push writes what its ``to`` says with ISO 8601 times in any of their forms, and a
malformed push answers 422 naming the field.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
import psycopg
import psycopg.sql
import pytest
from fastapi.testclient import TestClient

from streamflow import config, schema, warehouse
from streamflow.batch.load import load_snapshot
from streamflow.batch.validate import read_snapshot
from streamflow.datagen.generate import generate
from streamflow.feast_stores import settings
from streamflow.feast_stores.online import table_name
from streamflow.feature_store import feast_yaml

pytestmark = pytest.mark.slow

REPO = config.REPO_ROOT
FEATURE_REPO = REPO / "feature_repo"
FEAST = Path(sys.executable).parent / "feast"
PROJECT = "streamflow_cli"
"""The project of these tests (in the test database), apart from the other tests' FEAST_PROJECT."""

SETTINGS = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "FEAST_PROJECT",
)
USERS = 24
TODAY = datetime.now(timezone.utc).date()
FIRST, SECOND = TODAY - timedelta(days=40), TODAY - timedelta(days=10)
"""as_of of the two loaded snapshots: within the year that a first `feast materialize-incremental`
covers (Feast starts it 52 weeks back for views without a TTL)."""

USAGE = schema.table("usage_agg_30d")
SUBS = schema.table("subscriptions")


# --- running the CLI -------------------------------------------------------------------------------


def bare_env(**settings: str) -> dict[str, str]:
    """An environment with none of StreamFlow's settings, plus the given ones."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if k in os.environ}
    env["PYTHONPATH"] = str(REPO)  # this checkout (the venv's editable install may be another one)
    env.update(settings)
    return env


def feast(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `feast` CLI in feature_repo/; fail with its output when it fails."""
    done = subprocess.run(
        [str(FEAST), *args], cwd=FEATURE_REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (
        f"feast {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done


def view_names(listing: str) -> set[str]:
    """The NAME column of `feast feature-views list`."""
    lines = [line.split() for line in listing.splitlines() if line.strip()]
    assert lines and lines[0][0] == "NAME", listing
    return {cols[0] for cols in lines[1:]}


@pytest.fixture(scope="module")
def defaults() -> dict:
    """StreamFlow's default database settings and project, as a process with nothing set sees them
    (through streamflow.feast_stores.settings, what our Feast classes read)."""
    code = (
        "import json; from streamflow.feast_stores import settings; "
        "print(json.dumps({**settings.database(), 'project': settings.project()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=bare_env(), capture_output=True, text=True, check=True, cwd=REPO
    )
    return json.loads(out.stdout)


def connect(db: dict) -> psycopg.Connection:
    return psycopg.connect(
        host=db["host"],
        port=db["port"],
        dbname=db["database"],
        user=db["user"],
        password=db["password"],
        connect_timeout=5,
    )


@pytest.fixture(scope="module")
def cli(pg_settings, defaults, tmp_path_factory):
    """How these tests run Feast: the environment (test database and project only) and the yaml
    naming the project. Skipped when the test database is not where the defaults point."""
    ours = settings.database()
    if any(ours[k] != defaults[k] for k in ("host", "port", "user", "password")):
        pytest.skip(
            f"the test database {pg_settings.describe()} is not at the default host, port and "
            f"user: these tests leave them unset"
        )
    folder = tmp_path_factory.mktemp("feast-cli")
    fs_yaml = folder / "feature_store.yaml"
    fs_yaml.write_text(feast_yaml(PROJECT))
    env = bare_env(POSTGRES_DB=ours["database"], FEAST_PROJECT=PROJECT)
    return env, ["-f", str(fs_yaml)]


# --- data: two snapshots loaded offline, then the CLI ------------------------------------------------


class Data:
    def __init__(self, folder: Path):
        self.first = read_snapshot(folder / "month_000")
        self.second = read_snapshot(folder / "month_001")
        self.users = self.second["users"][schema.KEY].tolist()


@pytest.fixture(scope="module")
def repo(cli, pg_settings, tmp_path_factory) -> Data:
    """The test database with two snapshots loaded (batch loader), then, with the Feast CLI:
    `feast apply` and `feast materialize-incremental <now>` on the test project."""
    env, yaml_args = cli
    folder = tmp_path_factory.mktemp("feast-cli-data")
    generate(folder, users=USERS, seed=23, progress=False)
    with psycopg.connect(pg_settings.conninfo, autocommit=True) as conn:
        warehouse.drop_schema(conn)
        warehouse.ensure_schema(conn)
        for view in schema.TABLES:
            conn.execute(f'DROP TABLE IF EXISTS "{table_name(PROJECT, view.feature_view)}"')
        forget_project(conn, PROJECT)
    load_snapshot(folder / "month_000", "month_000", FIRST)
    load_snapshot(folder / "month_001", "month_001", SECOND)

    applied = feast(*yaml_args, "apply", env=env)
    assert f"project {PROJECT}" in applied.stdout, applied.stdout
    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()
    materialized = feast(*yaml_args, "materialize-incremental", now, env=env)
    assert "usage_agg_30d_fv" in materialized.stdout, materialized.stdout
    return Data(folder)


def forget_project(conn, project: str) -> None:
    """Delete a project from the SQL registry, its materialization history included, so that
    `feast materialize-incremental` starts afresh. Feast's own delete_project leaves the rows of
    feature_view_version_history, which then make the next `feast apply` fail."""
    tables = conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'project_id'"
        " AND table_schema = current_schema()"
    ).fetchall()
    for (table,) in tables:
        conn.execute(
            psycopg.sql.SQL("DELETE FROM {} WHERE project_id = %s").format(psycopg.sql.Identifier(table)),
            (project,),
        )


def online_rows(view: str) -> int:
    with psycopg.connect(config.postgres().conninfo) as conn:
        return conn.execute(f'SELECT count(*) FROM "{table_name(PROJECT, view)}"').fetchone()[0]


def test_apply_and_materialize_incremental_with_only_the_database_and_project_set(repo):
    for table in schema.TABLES:  # every user of the second snapshot, online in the test project
        assert online_rows(table.feature_view) == len(repo.second[table.name]), table.name


def test_feature_views_list_with_only_the_database_and_project_set(repo, cli):
    env, yaml_args = cli
    listed = feast(*yaml_args, "feature-views", "list", env=env)
    assert view_names(listed.stdout) == {t.feature_view for t in schema.TABLES}


def test_feature_views_list_with_nothing_set_reads_the_default_database(defaults):
    """The new user's first command: nothing exported, default yaml. It answers the registry of the
    default database, whatever it holds (the demo's views, or none on a fresh machine)."""
    listed = feast("feature-views", "list", env=bare_env())
    with connect(defaults) as conn:
        rows = conn.execute(
            "SELECT feature_view_name FROM feature_views WHERE project_id = %s", (defaults["project"],)
        ).fetchall()
    assert view_names(listed.stdout) == {name for (name,) in rows}


def test_the_environment_overrides_the_defaults(cli):
    """A setting in the environment wins over the default: here a port nothing listens on."""
    env, yaml_args = cli
    port = closed_port()
    done = subprocess.run(
        [str(FEAST), *yaml_args, "feature-views", "list"],
        cwd=FEATURE_REPO,
        env={**env, "POSTGRES_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert f'"127.0.0.1", port {port} failed: Connection refused' in done.stderr, done.stderr[-2000:]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_feast_serve_refuses_another_project_than_feast_project(repo, cli, tmp_path):
    """Feast reads the project from its yaml; FEAST_PROJECT names another: our provider refuses
    to start instead of serving the wrong project."""
    env, yaml_args = cli
    done = subprocess.run(
        [str(FEAST), *yaml_args, "serve", "--port", str(closed_port())],
        cwd=FEATURE_REPO,
        env={**env, "FEAST_PROJECT": f"not_{PROJECT}", "XDG_RUNTIME_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert (
        f"ProjectMismatch: Feast's configuration names project '{PROJECT}' but StreamFlow's setting "
        f"FEAST_PROJECT is 'not_{PROJECT}'"
    ) in done.stderr, done.stderr[-3000:]


def test_the_yaml_names_the_default_project(defaults):
    """Feast reads the project from feature_store.yaml only: it is StreamFlow's default project."""
    import yaml

    assert yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())["project"] == defaults["project"]
    assert "${" not in (FEATURE_REPO / "feature_store.yaml").read_text()


# --- feast serve ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(repo, cli, tmp_path_factory):
    """`feast serve` on feature_repo/ (test database and project only), on a free port."""
    env, yaml_args = cli
    port = closed_port()
    runtime = tmp_path_factory.mktemp("feast-serve")  # gunicorn's control socket, private
    log_path = runtime / "feast-serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(FEAST), *yaml_args, "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=FEATURE_REPO,
            env={**env, "XDG_RUNTIME_DIR": str(runtime)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # a connection per request: Feast's server closes the connection after its own 500s
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=60, limits=httpx.Limits(max_keepalive_connections=0)
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (
                f"feast serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"feast serve not ready:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        yield client
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()  # gunicorn's master stops its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def api(repo):
    """Our API (in-process) on the same database and project."""
    from api.app import create_app

    with pytest.MonkeyPatch.context() as m:
        m.setenv("FEAST_PROJECT", PROJECT)
        with TestClient(create_app()) as client:
            yield client


def feast_features(server, users: list[str], features: list[str] | None = None) -> dict[str, dict]:
    """user -> {(view, feature): (value, status, event time)} as `feast serve` answers."""
    body = {"entities": {schema.KEY: users}, "full_feature_names": True}
    if features:
        body["features"] = features
    else:
        body["feature_service"] = schema.FEATURE_SERVICE
    r = server.post("/get-online-features", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    out: dict[str, dict] = {u: {} for u in users}
    for name, column in zip(answer["metadata"]["feature_names"], answer["results"]):
        if name == schema.KEY:
            assert column["values"] == users
            continue
        view, feature = name.split("__", 1)
        for user, value, status, ts in zip(
            users, column["values"], column["statuses"], column["event_timestamps"]
        ):
            out[user][(view, feature)] = (value, status, ts)
    return out


KINDS = {(t.feature_view, c.name): c.kind for t in schema.TABLES for c in t.columns}


def same(kind: str, feast_value, api_value) -> bool:
    """How a value of `feast serve` compares with ours: dates are Unix seconds there (Feast's
    UnixTimestamp) and YYYY-MM-DD here; floats are float64 on both sides (Float64 views, no float32
    rounding): equal up to JSON's round trip; ints, bools and strings equal, bool never an int."""
    if feast_value is None or api_value is None:
        return feast_value is None and api_value is None
    if kind == "date":
        return datetime.fromtimestamp(feast_value, timezone.utc).date().isoformat() == api_value
    if kind == "float":
        return isinstance(feast_value, (int, float)) and math.isclose(feast_value, api_value, rel_tol=1e-12)
    return type(feast_value) is type(api_value) and feast_value == api_value


def snapshot_value(value, kind: str):
    """A snapshot file's value as our API answers it."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if kind == "date":
        return pd.Timestamp(value).date().isoformat()
    if hasattr(value, "item"):
        value = value.item()
    return {"integer": int, "float": float, "boolean": bool, "category": str}[kind](value)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def test_feast_serve_answers_what_our_api_answers(repo, server, api):
    users = repo.users[:6] + ["0000-ZZZZZ"]  # and one unknown user
    theirs = feast_features(server, users)
    r = api.post("/features", json={"user_ids": users})
    assert r.status_code == 200, r.text
    ours = {u["user_id"]: u for u in r.json()["results"]}
    service = {(t.feature_view, c.name) for t in schema.FEATURE_TABLES for c in t.columns}
    compared = 0
    for user in users:
        assert set(theirs[user]) == service, "feast serve answers every feature of the service"
        known = user != "0000-ZZZZZ"
        assert ours[user]["found"] is known
        for (view, feature), (value, status, ts) in theirs[user].items():
            if not known:
                assert status == "NOT_FOUND" and ours[user]["views"] == {}
                continue
            mine = ours[user]["views"][view]
            assert mine["found"] and status in ("PRESENT", "NULL_VALUE"), (user, view, feature, status)
            assert same(KINDS[view, feature], value, mine["features"][feature]), (
                user,
                view,
                feature,
                value,
                mine["features"][feature],
            )
            assert (
                utc(ts)
                == utc(mine["event_timestamp"])
                == datetime.combine(SECOND, datetime.min.time(), timezone.utc)
            )
            compared += 1
    assert compared == 6 * len(service)
    for user in repo.users[:6]:  # and both answer the newest snapshot loaded
        table = schema.table("subscriptions")
        row = repo.second[table.name].set_index(schema.KEY).loc[user]
        for c in table.columns:
            assert ours[user]["views"][table.feature_view]["features"][c.name] == snapshot_value(
                row[c.name], c.kind
            )


# --- /push -----------------------------------------------------------------------------------------

PUSH_DAY = TODAY - timedelta(days=1)
"""Day of the pushed rows: newer than the materialized snapshot (newest wins online)."""

TIME_FORMATS = {
    "Z": f"{PUSH_DAY}T06:00:00Z",
    "+00:00": f"{PUSH_DAY}T06:00:00+00:00",
    "+02:00": f"{PUSH_DAY}T08:00:00+02:00",
}
PUSHED_AT = datetime.combine(PUSH_DAY, datetime.min.time(), timezone.utc) + timedelta(hours=6)
MODES = ("online", "offline", "online_and_offline")
PUSH_CASES = [(mode, fmt) for mode in MODES for fmt in TIME_FORMATS]


def usage_row(user: str, as_of, watch_hours: float = 12.5, snapshot: str = "feast-push") -> dict:
    return {
        schema.KEY: user,
        schema.SNAPSHOT_TIME: as_of,
        "watch_hours_30d": watch_hours,
        "avg_session_mins_7d": 31.5,
        "unique_devices_30d": 3,
        "skips_7d": 4,
        "rebuffer_events_7d": 0,
        schema.EVENT_SNAPSHOT: snapshot,
    }


def push(server, table: schema.Table, rows: list[dict], to: str) -> httpx.Response:
    df = {column: [row[column] for row in rows] for column in rows[0]}
    return server.post("/push", json={"push_source_name": table.push_source, "df": df, "to": to})


def offline_rows(table: schema.Table, user: str) -> list[dict]:
    with psycopg.connect(config.postgres().conninfo) as conn:
        cur = conn.execute(f"SELECT * FROM {table.snapshot_table} WHERE user_id = %s ORDER BY as_of", (user,))
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


def watch_hours_online(server, user: str) -> tuple[float, datetime]:
    value, status, ts = feast_features(server, [user], ["usage_agg_30d_fv:watch_hours_30d"])[user][
        ("usage_agg_30d_fv", "watch_hours_30d")
    ]
    assert status == "PRESENT"
    return value, utc(ts)


@pytest.mark.parametrize("mode, fmt", PUSH_CASES)
def test_push_writes_what_to_says_with_any_iso_8601_time(repo, server, mode, fmt):
    user = repo.users[6 + PUSH_CASES.index((mode, fmt))]
    before = repo.second[USAGE.name].set_index(schema.KEY).loc[user, "watch_hours_30d"]
    value = 100.0 + PUSH_CASES.index((mode, fmt)) / 4

    r = push(server, USAGE, [usage_row(user, TIME_FORMATS[fmt], value)], mode)
    assert r.status_code == 200, r.text

    online, at = watch_hours_online(server, user)
    if mode in ("online", "online_and_offline"):
        assert (online, at) == (value, PUSHED_AT)
    else:
        assert (online, at) == (before, datetime.combine(SECOND, datetime.min.time(), timezone.utc))
    pushed = [row for row in offline_rows(USAGE, user) if row[schema.SNAPSHOT_TIME] == PUSHED_AT]
    if mode in ("offline", "online_and_offline"):
        assert len(pushed) == 1 and pushed[0]["watch_hours_30d"] == value
        assert pushed[0][schema.EVENT_SNAPSHOT] == "feast-push" and pushed[0]["skips_7d"] == 4
    else:
        assert pushed == []


# --- malformed pushes ------------------------------------------------------------------------------

MALFORMED = {
    "out of range": (USAGE, {"skips_7d": -3}, "field skips_7d: expected an integer from 0 to 1000000"),
    "not one of the choices": (SUBS, {"contract_type": "Weekly"}, "field contract_type: expected one of"),
    "bad timestamp": (
        USAGE,
        {schema.SNAPSHOT_TIME: f"{PUSH_DAY}T25:00:00Z"},
        "field as_of: expected an ISO 8601",
    ),
    "not a timestamp": (USAGE, {schema.SNAPSHOT_TIME: 1700000000}, "field as_of: expected an ISO 8601"),
    "null timestamp": (USAGE, {schema.SNAPSHOT_TIME: None}, "field as_of: must not be null"),
    "timestamp without a zone": (
        USAGE,
        {schema.SNAPSHOT_TIME: f"{PUSH_DAY}T06:00:00"},
        "field as_of: expected an ISO 8601 time with a zone",
    ),
    "user id with a trailing newline": (USAGE, {schema.KEY: "{user}\n"}, "field user_id: expected a user id"),
    "category with a leading space": (
        SUBS,
        {"contract_type": " One year"},
        "field contract_type: expected one of",
    ),
    "not a number": (
        USAGE,
        {"watch_hours_30d": "lots"},
        "field watch_hours_30d: expected a finite number from 0 to 744",
    ),
}
MIXED_TYPES = {"not a timestamp", "not a number"}
"""Cases whose column mixes JSON types (a number among strings, a string among numbers): with
``to: offline`` Feast converts the frame to Arrow before any code of ours runs, and that fails
(see test_columns_feast_checks_before_our_code_answer_500_naming_the_column)."""
MALFORMED_CASES = [
    (case, mode) for case in MALFORMED for mode in MODES if not (mode == "offline" and case in MIXED_TYPES)
]


def subs_row(user: str, as_of) -> dict:
    return {
        schema.KEY: user,
        schema.SNAPSHOT_TIME: as_of,
        "months_active": 3,
        "plan_stream_tv": None,
        "plan_stream_movies": True,
        "contract_type": "One year",
        "paperless_billing": False,
        "monthly_fee": 20.5,
        "total_paid": 61.5,
        "net_service": "DSL",
        schema.EVENT_SNAPSHOT: "feast-push",
    }


def error_of(response: httpx.Response) -> str:
    """The message of a 422: FastAPI's {"detail": ...} (streamflow.feast_stores.validation)."""
    return response.json()["detail"]


@pytest.mark.parametrize("case, mode", MALFORMED_CASES)
def test_malformed_push_answers_422_naming_the_field_and_writes_nothing(repo, server, case, mode):
    table, change, message = MALFORMED[case]
    good, bad = repo.users[18], repo.users[19]
    row = usage_row if table is USAGE else subs_row
    change = {k: v.format(user=bad) if k == schema.KEY else v for k, v in change.items()}
    rows = [row(good, TIME_FORMATS["Z"]), {**row(bad, TIME_FORMATS["Z"]), **change}]
    online_before = feast_features(server, [good, bad])
    offline_before = {u: offline_rows(table, u) for u in (good, bad)}

    r = push(server, table, rows, mode)

    assert r.status_code == 422, r.text
    error = error_of(r)
    assert message in error and f"row 1 (user {bad}" in error, error
    assert feast_features(server, [good, bad]) == online_before  # not even the good row
    assert {u: offline_rows(table, u) for u in (good, bad)} == offline_before


@pytest.mark.parametrize("mode", ["online", "online_and_offline"])
@pytest.mark.parametrize("column", [schema.SNAPSHOT_TIME, schema.EVENT_SNAPSHOT])
def test_push_missing_a_column_answers_422_naming_it(repo, server, mode, column):
    row = usage_row(repo.users[20], TIME_FORMATS["Z"], 1.0)
    del row[column]
    r = push(server, USAGE, [row], mode)
    assert r.status_code == 422, r.text
    assert f"missing ['{column}']" in error_of(r)


def test_columns_feast_checks_before_our_code_answer_500_naming_the_column(repo, server):
    """Where Feast 0.67 checks a frame itself, before any code of ours runs, its error is a plain
    ValueError, KeyError or Arrow error, which its server answers with 500 (only a FeastError or
    an HTTPException carries a status): a frame without one of the view's features (every mode);
    with ``to: offline``, columns that differ from the batch source's in any way, and a column
    mixing JSON types (Feast's pa.Table.from_pandas). Its message still names the column, and
    nothing is written."""
    user = repo.users[21]
    row = usage_row(user, TIME_FORMATS["Z"])
    del row["skips_7d"]
    for mode in MODES:
        r = push(server, USAGE, [row], mode)
        assert r.status_code == 500 and "skips_7d" in r.text, (mode, r.text)
    row = usage_row(user, TIME_FORMATS["Z"])
    del row[schema.EVENT_SNAPSHOT]
    r = push(server, USAGE, [row], "offline")
    assert r.status_code == 500 and "missing_expected_columns: ['snapshot']" in r.text, r.text
    for case in sorted(MIXED_TYPES):
        _, change, _ = MALFORMED[case]
        (column,) = change
        rows = [
            usage_row(repo.users[22], TIME_FORMATS["Z"]),
            {**usage_row(user, TIME_FORMATS["Z"]), **change},
        ]
        r = push(server, USAGE, rows, "offline")
        assert r.status_code == 500 and f"Conversion failed for column {column}" in r.text, r.text
    for u in (user, repo.users[22]):
        assert [row for row in offline_rows(USAGE, u) if row[schema.EVENT_SNAPSHOT] == "feast-push"] == []
