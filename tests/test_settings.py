"""The settings (streamflow/config.py): every variable typed, defaulted and documented, read from
the environment and nowhere else, bad values as one line naming the variable, secrets masked by
`streamflow config`, the configuration reference in step with the code, and connection strings that
carry any password to a real PostgreSQL."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from streamflow import cli, config, config_cli, kafka_clients, schema

REFERENCE = config.REPO_ROOT / "docs" / "reference" / "configuration.md"
TABLE_START = "<!-- settings table"
TABLE_END = "<!-- end of settings table -->"
NASTY_PASSWORD = "p a'ss@w/o:r%d\\=?#&x"
"""Space, quote, at, slash, colon, percent, backslash, equals and URL delimiters."""


@pytest.fixture()
def clean_env(monkeypatch):
    """No variable of the settings set (conftest's test database and prefix are put back after)."""
    for name in config.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def value_of(settings: config.Settings, var: config.Variable):
    return getattr(getattr(settings, var.group), var.field)


def plain(value):
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# -- every variable declared once, typed, defaulted, documented --------------------------------------


def test_every_variable_has_a_type_a_default_and_a_one_line_description():
    names = [v.name for v in config.variables()]
    assert len(names) == len(set(names)) >= 30
    for cls in config.GROUPS.values():
        for field, info in cls.model_fields.items():
            assert info.alias and re.fullmatch(r"[A-Z][A-Z0-9_]*", info.alias), field
            assert info.annotation is not None, info.alias
            assert info.default is not PydanticUndefined and not info.is_required(), info.alias
            assert info.description and "\n" not in info.description and "|" not in info.description, (
                info.alias
            )


def test_no_module_but_the_settings_reads_the_environment():
    offenders = []
    for folder in ("streamflow", "producer", "consumer", "api"):
        for path in (config.REPO_ROOT / folder).rglob("*.py"):
            if path == config.REPO_ROOT / "streamflow" / "config.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "os.environ" in line or "os.getenv" in line:
                    offenders.append(f"{path.relative_to(config.REPO_ROOT)}:{n}: {line.strip()}")
    assert offenders == []


# -- defaults and the environment ---------------------------------------------------------------------

SAMPLES = {
    "POSTGRES_HOST": ("db.internal", "db.internal"),
    "POSTGRES_PORT": ("6543", 6543),
    "POSTGRES_DB": ("warehouse", "warehouse"),
    "POSTGRES_USER": ("alice", "alice"),
    "POSTGRES_PASSWORD": ("s3cret", "s3cret"),
    "POSTGRES_CONSUMER_USER": ("writer", "writer"),
    "POSTGRES_CONSUMER_PASSWORD": ("s3cret-w", "s3cret-w"),
    "POSTGRES_API_USER": ("reader", "reader"),
    "POSTGRES_API_PASSWORD": ("s3cret-r", "s3cret-r"),
    "POSTGRES_SSLMODE": ("verify-full", "verify-full"),
    "POSTGRES_SSLROOTCERT": ("/etc/ssl/ca.pem", "/etc/ssl/ca.pem"),
    "STREAMFLOW_MODEL_NAME": ("churn_b", "churn_b"),
    "STREAMFLOW_MLFLOW_SCHEMA": ("ml_store", "ml_store"),
    "STREAMFLOW_MLFLOW_ARTIFACTS": ("/srv/models", Path("/srv/models")),
    "STREAMFLOW_MLFLOW_EXPERIMENT": ("exp", "exp"),
    "STREAMFLOW_PROMOTION_MARGIN": ("0.01", 0.01),
    "STREAMFLOW_MODEL_REFRESH_SECONDS": ("5", 5.0),
    "STREAMFLOW_DB_ROLE": ("api", "api"),
    "KAFKA_BOOTSTRAP_SERVERS": ("k1:9092,k2:9092", "k1:9092,k2:9092"),
    "STREAMFLOW_KAFKA_CLIENT_ID": ("me", "me"),
    "KAFKA_MESSAGE_MAX_BYTES": ("1048576", 1048576),
    "STREAMFLOW_KAFKA_REQUEST_TIMEOUT_MS": ("5000", 5000),
    "STREAMFLOW_KAFKA_RECONNECT_BACKOFF_MAX_MS": ("750", 750),
    "STREAMFLOW_KAFKA_BOOTSTRAP_TIMEOUT_MS": ("3000", 3000),
    "STREAMFLOW_REPLICATION_FACTOR": ("3", 3),
    "STREAMFLOW_TOPIC_PREFIX": ("other", "other"),
    "STREAMFLOW_PARTITIONS": ("12", 12),
    "KAFKA_SECURITY_PROTOCOL": ("SASL_SSL", "SASL_SSL"),
    "KAFKA_SASL_MECHANISM": ("SCRAM-SHA-256", "SCRAM-SHA-256"),
    "KAFKA_SASL_USERNAME": ("alice", "alice"),
    "KAFKA_SASL_PASSWORD": ("k4fka", "k4fka"),
    "KAFKA_SSL_CAFILE": (__file__, Path(__file__)),  # a file that exists
    "KAFKA_SSL_CERTFILE": (__file__, Path(__file__)),
    "KAFKA_SSL_KEYFILE": (__file__, Path(__file__)),
    "KAFKA_SSL_CHECK_HOSTNAME": ("false", False),
    "FEAST_PROJECT": ("proj", "proj"),
    "STREAMFLOW_DATA_DIR": ("/srv/data", Path("/srv/data")),
    "STREAMFLOW_FEATURE_REPO": ("/srv/repo", Path("/srv/repo")),
    "STREAMFLOW_CONSUMER_GROUP": ("g1", "g1"),
    "STREAMFLOW_MAX_BATCH": ("100", 100),
    "STREAMFLOW_CONSUMER_INSTANCE_ID": ("host-1", "host-1"),
    "STREAMFLOW_METRICS_PORT": ("9200", 9200),
    "STREAMFLOW_METRICS_ADDR": ("0.0.0.0", "0.0.0.0"),
    "STREAMFLOW_MAX_OUTAGE": ("90.5", 90.5),
    "STREAMFLOW_WRITE_PROCESSES": ("3", 3),
    "STREAMFLOW_API_HOST": ("0.0.0.0", "0.0.0.0"),
    "STREAMFLOW_API_PORT": ("8080", 8080),
    "STREAMFLOW_API_WORKERS": ("0", 0),
    "STREAMFLOW_API_REGISTRY_REFRESH": ("30", 30.0),
    "STREAMFLOW_API_DB_TIMEOUT": ("0.5", 0.5),
    "STREAMFLOW_API_TOKEN": (
        "tok-0123456789abcdef,tok-fedcba9876543210",
        "tok-0123456789abcdef,tok-fedcba9876543210",
    ),
    "STREAMFLOW_METRICS_TOKEN": ("scrape-0123456789abcdef", "scrape-0123456789abcdef"),
    "STREAMFLOW_LAG_INTERVAL": ("1.5", 1.5),
    "STREAMFLOW_LAG_TIMEOUT": ("4", 4.0),
    "STREAMFLOW_LAG_MAX_BACKOFF": ("60", 60.0),
    "STREAMFLOW_CONSUMER_METRICS_URL": ("http://c:9300/metrics", "http://c:9300/metrics"),
    "STREAMFLOW_LOG_LEVEL": ("debug", "DEBUG"),
    "STREAMFLOW_NO_PROGRESS": ("1", True),
}


def test_defaults_when_nothing_is_set(clean_env):
    s = config.settings()
    for var in config.variables():
        assert plain(value_of(s, var)) == plain(var.default), var.name
    assert s.postgres.port == 5432 and s.postgres.database == "streamflow"
    assert s.postgres.password.get_secret_value() == "streamflow"
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092" and s.kafka.partitions == 4
    assert s.kafka.message_max_bytes == 2 * 1024 * 1024
    assert s.consumer.group == "streamflow-consumer" == config.DEFAULT_CONSUMER_GROUP
    assert s.consumer.metrics_port is None and s.consumer.max_outage is None
    assert s.api.workers == 1 == s.api.worker_count()
    assert s.paths.data_dir == config.REPO_ROOT / "data"
    assert s.logs.level is None and s.logs.no_progress is False


def test_every_variable_is_read_from_the_environment(clean_env):
    assert set(SAMPLES) == set(config.VARIABLES), "give a new variable a sample value here"
    for name, (text, _) in SAMPLES.items():
        clean_env.setenv(name, text)
    s = config.settings()
    for var in config.variables():
        assert plain(value_of(s, var)) == SAMPLES[var.name][1], var.name
    assert all(config.source(name) == "environment" for name in SAMPLES)


def test_an_empty_variable_is_its_default_and_names_are_case_sensitive(clean_env):
    clean_env.setenv("STREAMFLOW_PARTITIONS", "")
    clean_env.setenv("STREAMFLOW_METRICS_PORT", "")
    clean_env.setenv("streamflow_topic_prefix", "lower")
    clean_env.setenv("partitions", "7")  # a field's own name is no variable
    s = config.settings()
    assert (
        s.kafka.partitions == 4 and s.consumer.metrics_port is None and s.kafka.topic_prefix == "streamflow"
    )
    assert config.source("STREAMFLOW_PARTITIONS") == "default"


def test_the_settings_are_read_again_when_the_environment_changes(clean_env):
    first = config.settings()
    assert config.settings() is first  # unchanged: the same object, not read again
    clean_env.setenv("STREAMFLOW_TOPIC_PREFIX", "changed")
    assert config.topic_prefix() == "changed"
    assert config.settings() is not first
    clean_env.delenv("STREAMFLOW_TOPIC_PREFIX")
    assert config.topic_prefix() == "streamflow"


def test_the_kafka_settings_come_from_the_settings(clean_env):
    assert kafka_clients.settings() is config.settings().kafka  # the settings themselves, not a copy
    clean_env.setenv("STREAMFLOW_KAFKA_CLIENT_ID", "probe")
    clean_env.setenv("STREAMFLOW_KAFKA_BOOTSTRAP_TIMEOUT_MS", "1234")
    clean_env.setenv("STREAMFLOW_REPLICATION_FACTOR", "2")
    k = kafka_clients.settings("other:1")
    assert (kafka_clients.client_id(k, "x"), k.bootstrap_timeout_ms, k.replication_factor) == (
        "probe-x",
        1234,
        2,
    )
    assert k.bootstrap_servers == "other:1" and config.settings().kafka.bootstrap_servers != "other:1"


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process at the repository's root, with ``env`` as its environment."""
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        cwd=config.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_importing_the_settings_or_any_command_changes_no_environment_variable():
    """Only entry points set variables (config.use_role); importing a module sets none."""
    code = (
        "import os, importlib; before = dict(os.environ); "
        "from streamflow.cli import COMMANDS; "
        "[importlib.import_module(m) for m, _, _ in COMMANDS.values()]; "
        "import streamflow.feature_store, api.app; "
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}; "
        "print(sorted(changed))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "FEAST_", "STREAMFLOW_"))}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr[-3000:]
    # Feast's own import sets these (feast/metrics.py), whoever imports it
    feast_sets = {"PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR"}
    changed = set(ast.literal_eval(result.stdout.strip()))
    assert changed <= feast_sets, changed - feast_sets


def test_no_module_reads_the_settings_when_it_is_imported():
    """Every module of the application packages imports with a setting whose value is invalid:
    none reads the settings at import (they are read where an entry point or a client needs
    them). The check itself can fail: reading the settings with that value raises."""
    code = (
        "import importlib, pkgutil, streamflow, producer, consumer, api\n"
        "from streamflow import config\n"
        "names = [m.name for p in (streamflow, producer, consumer, api)\n"
        "         for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
        "names = [n for n in names if not n.endswith('__main__')] + ['feature_repo.definitions']\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "try:\n"
        "    config.settings()\n"
        "except config.ConfigError as exc:\n"
        "    print(len(names), exc)\n"
    )
    env = {**os.environ, "STREAMFLOW_PARTITIONS": "lots"}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr[-3000:]
    imported, _, error = result.stdout.strip().partition(" ")
    assert int(imported) > 90 and error == "STREAMFLOW_PARTITIONS: expected an integer, got 'lots'", (
        result.stdout
    )


def test_the_table_registry_is_data_and_the_topics_come_from_the_prefix(clean_env):
    from streamflow import topics

    users = schema.table("users")
    assert topics.topic_of(users) == "streamflow.users"
    assert (
        topics.topic_of(users, "other") == "other.users"
        and topics.dead_letter_topic("other") == "other.dead_letter"
    )
    clean_env.setenv("STREAMFLOW_TOPIC_PREFIX", "tenant7")
    assert schema.table("users") == users  # the registry does not change with the deployment
    assert topics.table_topics() == [f"tenant7.{t.name}" for t in schema.TABLES]
    assert (
        topics.table_of_topic("tenant7.users") is users and topics.table_of_topic("streamflow.users") is None
    )
    assert "config" not in {n.split(".")[-1] for n in _imports(config.REPO_ROOT / "streamflow" / "schema.py")}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_a_variable_unset_or_empty_is_reported_as_the_default(monkeypatch):
    monkeypatch.delenv("POSTGRES_HOST", raising=False)
    monkeypatch.setenv("POSTGRES_PASSWORD", "")
    monkeypatch.setenv("FEAST_PROJECT", "mine")
    assert config.source("POSTGRES_HOST") == "default" and config.source("POSTGRES_PASSWORD") == "default"
    assert config.source("FEAST_PROJECT") == "environment"


# -- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("STREAMFLOW_PARTITIONS", "abc", "STREAMFLOW_PARTITIONS: expected an integer, got 'abc'"),
        ("STREAMFLOW_PARTITIONS", "0", "STREAMFLOW_PARTITIONS: expected an integer >= 1, got '0'"),
        ("POSTGRES_PORT", "70000", "POSTGRES_PORT: expected an integer from 1 to 65535, got '70000'"),
        ("KAFKA_MESSAGE_MAX_BYTES", "2MB", "KAFKA_MESSAGE_MAX_BYTES: expected an integer, got '2MB'"),
        ("STREAMFLOW_METRICS_PORT", "x", "STREAMFLOW_METRICS_PORT: expected an integer, got 'x'"),
        ("STREAMFLOW_LAG_INTERVAL", "soon", "STREAMFLOW_LAG_INTERVAL: expected a number, got 'soon'"),
        (
            "STREAMFLOW_LAG_INTERVAL",
            "inf",
            "STREAMFLOW_LAG_INTERVAL: expected a finite number > 0, got 'inf'",
        ),
        ("STREAMFLOW_MAX_OUTAGE", "-5", "STREAMFLOW_MAX_OUTAGE: expected a number > 0, got '-5'"),
        (
            "STREAMFLOW_NO_PROGRESS",
            "maybe",
            "STREAMFLOW_NO_PROGRESS: expected true or false (also 1/0, yes/no, on/off), got 'maybe'",
        ),
        (
            "STREAMFLOW_LOG_LEVEL",
            "loud",
            "STREAMFLOW_LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'loud'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(clean_env, name, value, message):
    clean_env.setenv(name, value)
    with pytest.raises(config.ConfigError) as info:
        config.settings()
    assert str(info.value) == message
    assert info.value.exit_code == 2


def test_several_bad_values_are_still_one_line(clean_env):
    clean_env.setenv("STREAMFLOW_PARTITIONS", "abc")
    clean_env.setenv("STREAMFLOW_API_WORKERS", "-1")  # (0 is valid: one worker per core)
    with pytest.raises(config.ConfigError) as info:
        config.settings()
    assert str(info.value) == (
        "STREAMFLOW_PARTITIONS: expected an integer, got 'abc'; "
        "STREAMFLOW_API_WORKERS: expected an integer >= 0, got '-1'"
    )


def cli_run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "STREAMFLOW_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args],
        cwd=config.REPO_ROOT,
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("command", [["lag"], ["consume"], ["api"], ["dead-letters", "list"], ["config"]])
def test_any_command_stops_on_a_bad_value_with_one_line_and_exit_code_2(command):
    result = cli_run(command, STREAMFLOW_PARTITIONS="abc")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: STREAMFLOW_PARTITIONS: expected an integer, got 'abc'\n"
    assert result.stdout == ""


def test_the_traceback_only_at_debug_level():
    result = cli_run(["lag"], STREAMFLOW_PARTITIONS="abc", STREAMFLOW_LOG_LEVEL="DEBUG")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
    assert result.stderr.endswith("error: STREAMFLOW_PARTITIONS: expected an integer, got 'abc'\n")


# -- streamflow config ----------------------------------------------------------------------------


def test_streamflow_config_prints_values_variables_and_sources_with_secrets_masked(clean_env, capsys):
    clean_env.setenv("POSTGRES_PASSWORD", "hunter2-not-shown")
    clean_env.setenv("STREAMFLOW_PARTITIONS", "8")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert set(lines) == {v.setting for v in config.variables()}
    assert lines["postgres.password"] == [
        "postgres.password",
        "=",
        "****",
        "POSTGRES_PASSWORD",
        "environment",
    ]
    assert lines["kafka.partitions"] == ["kafka.partitions", "=", "8", "STREAMFLOW_PARTITIONS", "environment"]
    assert lines["api.port"] == ["api.port", "=", "8000", "STREAMFLOW_API_PORT", "default"]

    assert cli.main(["config", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "hunter2" not in json.dumps(doc)
    assert doc["postgres.password"] == {
        "value": "****",
        "variable": "POSTGRES_PASSWORD",
        "source": "environment",
    }
    assert doc["kafka.partitions"] == {
        "value": 8,
        "variable": "STREAMFLOW_PARTITIONS",
        "source": "environment",
    }
    assert doc["consumer.max_outage"] == {
        "value": None,
        "variable": "STREAMFLOW_MAX_OUTAGE",
        "source": "default",
    }
    assert doc["api.port"]["source"] == "default"


def test_a_password_never_shows_in_errors_or_reprs(clean_env):
    clean_env.setenv("POSTGRES_PASSWORD", "hunter2-not-shown")
    pg = config.postgres()
    assert "hunter2" not in repr(pg) and "hunter2" not in repr(config.settings())
    assert "hunter2" not in str(pg.sqlalchemy_url) and "hunter2" not in pg.describe()


# -- the reference's table --------------------------------------------------------------------------


def readme_table() -> str:
    text = REFERENCE.read_text()
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1
    start = text.index("\n", text.index(TABLE_START)) + 1
    return text[start : text.index(TABLE_END)]


def test_the_configuration_reference_lists_every_variable_with_its_default():
    rows = {}
    for line in readme_table().splitlines()[2:]:
        match = re.fullmatch(r"\| `([A-Z0-9_]+)` \| (.*?) \| (.*) \|", line)
        assert match, f"not a row of the table: {line!r}"
        assert match.group(1) not in rows, f"{match.group(1)} twice"
        rows[match.group(1)] = match.group(2), match.group(3)
    missing = [v.name for v in config.variables() if v.name not in rows]
    unknown = [name for name in rows if name not in config.VARIABLES]
    assert missing == [] and unknown == [], "regenerate it: python -m streamflow.config_cli --markdown"
    for var in config.variables():
        assert rows[var.name] == (config_cli.markdown_default(var.default), var.description), var.name
    assert readme_table() == config_cli.markdown_table()


def test_the_markdown_table_is_what_python_m_streamflow_config_prints():
    result = subprocess.run(
        [sys.executable, "-m", "streamflow.config_cli", "--markdown"],
        cwd=config.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout == config_cli.markdown_table()


# -- connection strings with any password --------------------------------------------------------


def test_conninfo_and_url_carry_any_password_exactly(clean_env):
    clean_env.setenv("POSTGRES_PASSWORD", NASTY_PASSWORD)
    clean_env.setenv("POSTGRES_USER", "us er@x")
    clean_env.setenv("POSTGRES_DB", "d b/1")
    pg = config.postgres()

    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import make_url

    parsed = conninfo_to_dict(pg.conninfo)
    assert parsed == {
        "host": "127.0.0.1",
        "port": "5432",
        "dbname": "d b/1",
        "user": "us er@x",
        "password": NASTY_PASSWORD,
        "sslmode": "disable",
    }
    url = make_url(pg.sqlalchemy_url.render_as_string(hide_password=False))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg",
        "us er@x",
        NASTY_PASSWORD,
        "127.0.0.1",
        5432,
        "d b/1",
    )
    assert url.query == {"sslmode": "disable"}


def test_tls_settings_reach_psycopg_and_sqlalchemy(monkeypatch):
    from psycopg.conninfo import conninfo_to_dict
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("POSTGRES_SSLMODE", "verify-full")
    monkeypatch.setenv("POSTGRES_SSLROOTCERT", "/etc/ssl/my ca.pem")
    for role in config.DB_ROLES:
        pg = config.settings().postgres.for_role(role)
        parsed = conninfo_to_dict(pg.conninfo)
        assert (parsed["sslmode"], parsed["sslrootcert"]) == ("verify-full", "/etc/ssl/my ca.pem")
        url = make_url(pg.sqlalchemy_url.render_as_string(hide_password=False))
        assert url.query == {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/my ca.pem"}


def test_a_bad_sslmode_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("POSTGRES_SSLMODE", "sometimes")
    with pytest.raises(config.ConfigError, match="POSTGRES_SSLMODE"):
        config.settings()


def admin_connection(settings: config.Postgres) -> psycopg.Connection:
    """A connection allowed to CREATE ROLE: the configured role when it may, else the superuser on
    the Unix socket of scripts/services.sh (trusted there: it is how that script sets roles up)."""
    conn = psycopg.connect(settings.conninfo, autocommit=True, connect_timeout=5)
    if conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()[
        0
    ]:
        return conn
    conn.close()
    state = Path(os.environ.get("STREAMFLOW_STATE_DIR") or config.REPO_ROOT / ".services")
    socket_dir = state / "pg-socket"
    if not (socket_dir / f".s.PGSQL.{settings.port}").exists():
        pytest.fail(
            f"{settings.user} may not CREATE ROLE and there is no socket of scripts/services.sh "
            f"in {socket_dir}",
            pytrace=False,
        )
    from psycopg.conninfo import make_conninfo

    return psycopg.connect(
        make_conninfo("", host=str(socket_dir), port=settings.port, user="postgres", dbname="postgres"),
        autocommit=True,
        connect_timeout=5,
    )


def test_a_role_with_a_nasty_password_connects_with_settings_from_the_environment(pg_settings, monkeypatch):
    role = f"sf test {uuid.uuid4().hex[:8]}@x"  # needs quoting too
    with admin_connection(pg_settings) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(NASTY_PASSWORD)
            )
        )
        try:
            monkeypatch.setenv("POSTGRES_USER", role)
            monkeypatch.setenv("POSTGRES_PASSWORD", NASTY_PASSWORD)
            pg = config.postgres()
            assert pg.user == role and pg.database == pg_settings.database
            with psycopg.connect(pg.conninfo, connect_timeout=5) as conn:
                assert conn.execute("SELECT 1, current_user").fetchone() == (1, role)

            import sqlalchemy

            engine = sqlalchemy.create_engine(pg.sqlalchemy_url)
            try:
                with engine.connect() as conn:
                    assert conn.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
            finally:
                engine.dispose()

            # the password is checked: a wrong one is refused
            monkeypatch.setenv("POSTGRES_PASSWORD", NASTY_PASSWORD + "!")
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(config.postgres().conninfo, connect_timeout=5).close()
        finally:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_zero_api_workers_means_one_per_available_core(clean_env):
    clean_env.setenv("STREAMFLOW_API_WORKERS", "0")
    assert config.settings().api.worker_count() == len(os.sched_getaffinity(0))
    clean_env.setenv("STREAMFLOW_API_WORKERS", "3")
    assert config.settings().api.worker_count() == 3


def test_api_workers_flag_takes_zero_like_the_variable(clean_env, capsys):
    from api.cli import build_parser

    clean_env.setenv("STREAMFLOW_API_WORKERS", "3")
    api = config.settings().api
    assert api.worker_count(build_parser().parse_args([]).workers) == 3  # the variable is the default
    zero = build_parser().parse_args(["--workers", "0"]).workers
    assert api.worker_count(zero) == len(os.sched_getaffinity(0))  # the flag overrides it, 0 included
    assert api.worker_count(build_parser().parse_args(["--workers", "2"]).workers) == 2
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--workers", "-1"])
    assert exited.value.code == 2
    assert "must be 0 (one per CPU core) or more: -1" in capsys.readouterr().err


def test_no_secret_value_reaches_streamflow_config_output(clean_env, capsys):
    secrets = [
        v.name
        for v in config.variables()
        if isinstance(v.default, SecretStr) or v.name.endswith(("PASSWORD", "TOKEN"))
    ]
    assert {"POSTGRES_PASSWORD", "STREAMFLOW_API_TOKEN", "KAFKA_SASL_PASSWORD"} <= set(secrets)
    for i, name in enumerate(secrets):
        clean_env.setenv(name, f"hush{i}-0123456789abcdef")
    clean_env.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")  # (SASL credentials need it)
    clean_env.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("KAFKA_SASL_USERNAME", "someone")
    for args in (["config"], ["config", "--json"]):
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert "hush" not in out and out.count("****") >= len(secrets)
