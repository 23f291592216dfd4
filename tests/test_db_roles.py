"""Least-privilege database roles (streamflow/db_roles.py) against the real PostgreSQL: what the
API's and the consumer's roles may not do, what `streamflow apply` keeps in step, the one line a
process prints when its role is not there, and the pipeline end to end under the two roles.

The roles have the settings' default names (roles are cluster-wide; every test database applies
the same passwords); the grants live in the test database."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import urllib.request

import orjson
import psycopg
import pytest
from psycopg import errors, sql
from pydantic import SecretStr

from streamflow import config, db_roles, schema
from streamflow.datagen.generate import generate
from streamflow.feast_stores.online import table_name
from streamflow.feature_store import apply
from streamflow.net import free_port
from tests import pipeline

USERS = 40
ONLINE_VIEW = "users_profile_fv"


@pytest.fixture(scope="module")
def applied(pg_settings):
    """Empty tables of this database, applied (which creates the roles and grants them)."""
    pipeline.reset_store()
    return os.environ["FEAST_PROJECT"]


def connect_as(role: config.DbRole, password: str | None = None) -> psycopg.Connection:
    """A connection as one of the roles (with its configured password, or the one given)."""
    pg = config.settings().postgres.for_role(role)
    if password is not None:
        pg = pg.model_copy(update={"password": SecretStr(password)})
    return psycopg.connect(pg.conninfo, autocommit=True, connect_timeout=5)


def online(project: str, view: str = ONLINE_VIEW) -> sql.Identifier:
    return sql.Identifier(table_name(project, view))


def denied(conn: psycopg.Connection, statement: sql.Composable) -> str:
    """The error of a statement that must be refused for lack of privilege."""
    with pytest.raises(errors.InsufficientPrivilege) as info:
        conn.execute(statement)
    return str(info.value)


ROW = "(entity_key, names, vals, event_ts) VALUES ('\\x00'::bytea, 'x', '\\x00'::bytea, now())"

WRITES_AND_DDL = {
    "insert": "INSERT INTO {t} " + ROW,
    "update": "UPDATE {t} SET names = names",
    "delete": "DELETE FROM {t}",
    "truncate": "TRUNCATE {t}",
    "drop table": "DROP TABLE {t}",
    "alter table": "ALTER TABLE {t} ADD COLUMN probe int",
    "create table": "CREATE TABLE streamflow_role_probe (x int)",
    "create temp table": "CREATE TEMP TABLE streamflow_role_probe (x int)",
}


@pytest.mark.parametrize("statement", WRITES_AND_DDL.values(), ids=WRITES_AND_DDL.keys())
def test_the_api_role_may_not_write_or_change_the_online_tables(applied, statement):
    with connect_as("api") as conn:
        for view in (ONLINE_VIEW, "usage_agg_30d_fv"):
            message = denied(conn, sql.SQL(statement).format(t=online(applied, view)))
            assert "permission denied" in message or "must be owner" in message


def test_the_api_role_reads_the_online_tables_and_the_registry_and_nothing_else(applied):
    with connect_as("api") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (config.default("POSTGRES_API_USER"),)
        for t in schema.TABLES:
            conn.execute(sql.SQL("SELECT count(*) FROM {}").format(online(applied, t.feature_view)))
        conn.execute("SELECT count(*) FROM feature_views")
        for name in (schema.TABLES[0].snapshot_table, schema.TABLES[0].base_table):
            denied(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
        denied(conn, sql.SQL("UPDATE feature_views SET last_updated_timestamp = 0"))
        assert db_roles.missing_grants(conn, "api", applied) == []


def test_the_consumer_role_may_not_drop_truncate_or_write_tables_it_does_not_push_to(applied):
    users = schema.table("users")
    with connect_as("consumer") as conn:
        for table in (online(applied), sql.Identifier(users.snapshot_table)):
            for statement in (
                "TRUNCATE {}",
                "DROP TABLE {}",
                "DELETE FROM {}",
                "ALTER TABLE {} ADD probe int",
            ):
                message = denied(conn, sql.SQL(statement).format(table))
                assert "permission denied" in message or "must be owner" in message
        # the batch load's base tables and Feast's registry: not the consumer's to write
        denied(
            conn,
            sql.SQL("INSERT INTO {} (user_id) VALUES ('0000-AAAAA')").format(
                sql.Identifier(users.base_table)
            ),
        )
        denied(conn, sql.SQL("UPDATE {} SET as_of = as_of").format(sql.Identifier(users.base_table)))
        denied(conn, sql.SQL("UPDATE feature_views SET last_updated_timestamp = 0"))
        denied(conn, sql.SQL("DELETE FROM projects"))
        denied(conn, sql.SQL("CREATE TABLE streamflow_role_probe (x int)"))
        assert db_roles.missing_grants(conn, "consumer", applied) == []


def test_apply_again_updates_the_passwords_and_puts_the_grants_back(applied, monkeypatch, pg_settings):
    api_user = config.default("POSTGRES_API_USER")
    consumer_user = config.default("POSTGRES_CONSUMER_USER")
    with psycopg.connect(pg_settings.conninfo, autocommit=True) as owner:
        # drift: a grant taken away, one too many given, an online table dropped (apply recreates it)
        owner.execute(
            sql.SQL("REVOKE SELECT ON {} FROM {}").format(
                online(applied, "subs_profile_fv"), sql.Identifier(api_user)
            )
        )
        owner.execute(
            sql.SQL("GRANT DELETE, TRUNCATE ON {} TO {}").format(
                online(applied, "subs_profile_fv"), sql.Identifier(consumer_user)
            )
        )
        owner.execute(sql.SQL("DROP TABLE {}").format(online(applied)))
        monkeypatch.setenv("POSTGRES_API_PASSWORD", "changed-by-a-test")
        try:
            apply()
            with connect_as("api", password="changed-by-a-test") as conn:
                assert db_roles.missing_grants(conn, "api", applied) == []
                conn.execute(sql.SQL("SELECT count(*) FROM {}").format(online(applied)))  # the new table
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                connect_as("api", password=config.default("POSTGRES_API_PASSWORD").get_secret_value())
            extra = owner.execute(
                "SELECT has_table_privilege(%s, %s, 'DELETE') OR has_table_privilege(%s, %s, 'TRUNCATE')",
                [consumer_user, table_name(applied, "subs_profile_fv")] * 2,
            ).fetchone()
            assert extra == (False,)
        finally:
            monkeypatch.delenv("POSTGRES_API_PASSWORD")
            apply()
    with connect_as("api") as conn:
        assert db_roles.missing_grants(conn, "api", applied) == []


def test_apply_refuses_a_restricted_role_named_like_the_owner(applied, monkeypatch, pg_settings):
    monkeypatch.setenv("POSTGRES_API_USER", pg_settings.user)
    with pytest.raises(db_roles.RoleSetupError, match="three different roles"):
        apply()


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args],
        cwd=config.REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    "command, variable",
    [(["api"], "POSTGRES_API_USER"), (["consume", "--until-drained"], "POSTGRES_CONSUMER_USER")],
)
def test_a_process_whose_role_does_not_exist_says_to_run_apply(applied, kafka_bootstrap, command, variable):
    prefix = pipeline.fresh_prefix()
    try:
        done = cli(*command, **{variable: "streamflow_no_such_role", "STREAMFLOW_TOPIC_PREFIX": prefix})
    finally:
        pipeline.delete_topics(prefix)
    assert done.returncode == 2, done.stderr[-2000:]
    errors_ = [line for line in done.stderr.splitlines() if "ERROR" in line or line.startswith("error")]
    assert len(errors_) == 1, done.stderr[-2000:]
    assert "streamflow_no_such_role" in errors_[0] and "run `streamflow apply`" in errors_[0]
    assert "Traceback" not in done.stderr


def test_a_role_without_grants_in_this_database_is_told_to_run_apply_there(applied, monkeypatch, pg_settings):
    bare = pg_settings.with_database(f"{pg_settings.database}_bare")
    from streamflow import warehouse

    warehouse.ensure_database(bare)
    monkeypatch.setenv("POSTGRES_DB", bare.database)
    monkeypatch.setenv("STREAMFLOW_DB_ROLE", "consumer")
    with pytest.raises(
        db_roles.RoleNotReady, match=r"lacks .* in database .*_bare: run `streamflow apply` there"
    ):
        db_roles.check_ready("the consumer")


# --- end to end ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    out = tmp_path_factory.mktemp("roles-snapshots")
    generate(out, users=USERS, seed=5, progress=False)
    return out / "month_000"


def test_the_pipeline_works_end_to_end_under_the_restricted_roles(
    applied, snapshot, fresh, tmp_path, monkeypatch
):
    """replay -> `streamflow consume` (consumer role) -> `streamflow api` (API role). Both get a
    wrong owner password: neither may fall back on the owner."""
    pipeline.replay([snapshot])
    monkeypatch.setenv("POSTGRES_PASSWORD", "not-the-owners-password")  # both processes inherit it
    consumer = pipeline.consumer_process(fresh, "--until-drained", log_path=tmp_path / "consumer.log")
    try:
        assert consumer.wait(timeout=180) == 0, (tmp_path / "consumer.log").read_text()[-3000:]
    finally:
        consumer.kill()
    assert pipeline.caught_up(fresh)

    port = free_port()
    api = pipeline.api_process(port, log_path=tmp_path / "api.log", env={"STREAMFLOW_LAG_INTERVAL": "60"})
    try:
        pipeline.wait_http(f"http://127.0.0.1:{port}/ready")
        expected = pipeline.expected_online(snapshot)
        users = pipeline.users_of(snapshot)
        for user in users[:5]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/features/{user}", timeout=10) as resp:
                body = orjson.loads(resp.read())
            got = {
                f"{view}:{name}": value
                for view, found in body["views"].items()
                for name, value in found["features"].items()
            }
            assert got == {ref: value for ref, value in expected[user].items() if ref in got}
            assert len(got) == sum(len(t.columns) for t in schema.FEATURE_TABLES)
    finally:
        api.terminate()
        api.wait(timeout=30)
    log = (tmp_path / "api.log").read_text() + (tmp_path / "consumer.log").read_text()
    assert "permission denied" not in log and "password authentication failed" not in log
    # Feast's own online read (the store's online_read) as the API's role, every table
    monkeypatch.setenv("STREAMFLOW_DB_ROLE", "api")
    assert pipeline.online_state(users) == expected


# --- the settings --------------------------------------------------------------------------------


def test_a_process_connects_as_the_role_streamflow_db_role_names_and_feast_follows(monkeypatch):
    from streamflow.feast_stores import settings as feast_settings

    monkeypatch.delenv("STREAMFLOW_DB_ROLE", raising=False)
    assert config.postgres().user == config.settings().postgres.user  # the owner by default
    for role in ("consumer", "api"):
        monkeypatch.setenv("STREAMFLOW_DB_ROLE", role)
        user = config.default(f"POSTGRES_{role.upper()}_USER")
        secret = config.default(f"POSTGRES_{role.upper()}_PASSWORD").get_secret_value()
        assert (config.postgres().user, config.postgres().password.get_secret_value()) == (user, secret)
        assert (feast_settings.database()["user"], feast_settings.database()["password"]) == (user, secret)


def test_the_roles_passwords_are_masked_by_streamflow_config(monkeypatch, capsys):
    from streamflow import cli

    monkeypatch.setenv("POSTGRES_API_PASSWORD", "api-secret-not-shown")
    monkeypatch.setenv("POSTGRES_CONSUMER_PASSWORD", "consumer-secret-not-shown")
    assert cli.main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert "not-shown" not in out
    doc = orjson.loads(out)
    assert doc["postgres.api_password"]["value"] == doc["postgres.consumer_password"]["value"] == "****"


def as_postgres(statements: str) -> str:
    """Run SQL as the cluster's superuser over the local services' own socket (trust; root only)."""
    if os.geteuid() != 0:
        pytest.skip("the superuser's socket is reached as root (runuser -u postgres)")
    state = os.environ.get("STREAMFLOW_STATE_DIR", str(config.REPO_ROOT / ".services"))
    [psql] = sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))[-1:]
    done = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            psql,
            "-h",
            f"{state}/pg-socket",
            "-p",
            str(config.postgres().port),
        ]
        + ["-d", "postgres", "-qtA", "-v", "ON_ERROR_STOP=1"],
        input=statements,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_apply_refuses_a_superuser_or_a_member_role_before_it_changes_anything(pg_settings, monkeypatch):
    # an owner that is a superuser (as the docker image's): it could change any role's password
    as_postgres(
        "CREATE ROLE sf_super_owner SUPERUSER LOGIN PASSWORD 'own3r-pw';"
        "CREATE ROLE sf_member LOGIN PASSWORD 'm3mber-pw'; GRANT pg_read_all_data TO sf_member;"
    )
    passwords = (
        "SELECT rolname, coalesce(rolpassword, '-') FROM pg_authid WHERE rolname IN ('postgres', 'sf_member')"
    )
    before = as_postgres(passwords)
    try:
        monkeypatch.setenv("POSTGRES_USER", "sf_super_owner")
        monkeypatch.setenv("POSTGRES_PASSWORD", "own3r-pw")
        monkeypatch.setenv("POSTGRES_CONSUMER_USER", "sf_never_created")
        for api_user, why in (
            ("postgres", "is a superuser"),
            ("sf_member", "is a member of pg_read_all_data"),
        ):
            monkeypatch.setenv("POSTGRES_API_USER", api_user)
            pg = config.postgres()
            with psycopg.connect(pg.conninfo, autocommit=True) as conn:
                assert conn.execute("SELECT current_user").fetchone() == ("sf_super_owner",)
                with pytest.raises(
                    db_roles.RoleSetupError, match=f"role {api_user} is meant to be least-privilege but {why}"
                ):
                    db_roles.ensure_roles(conn, config.settings().postgres, "streamflow_test")
        # neither role was altered, and the other role was not even created
        assert as_postgres(passwords) == before
        assert as_postgres("SELECT count(*) FROM pg_roles WHERE rolname = 'sf_never_created'").strip() == "0"
    finally:
        as_postgres(
            "DROP ROLE IF EXISTS sf_super_owner; DROP ROLE IF EXISTS sf_member;"
            "DROP ROLE IF EXISTS sf_never_created;"
        )
