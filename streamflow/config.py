"""Every setting of StreamFlow, read from environment variables with pydantic-settings.

:func:`settings` returns one object whose groups (``postgres``, ``kafka``, ``feast``, ``paths``,
``consumer``, ``api``, ``lag``, ``logs``) hold every variable the code reads, each with a type, a
local-development default (the same as docker-compose) and a one-line description. No other
module reads the environment. ``streamflow config`` prints the values in effect and where they
came from; the table of variables in docs/reference/configuration.md is generated from here
(``python -m streamflow.config_cli --markdown``) and a test keeps it in step.

``settings()`` is cheap: the object is built again only when one of the variables changed (tests
set them per test), otherwise the last one is returned. A bad value raises :class:`ConfigError`
(exit code 2) with one line naming the variable and what it expects.

Importing this module changes nothing in ``os.environ``; :func:`use_role` is the one function
that sets a variable (for the processes an entry point starts), and
:func:`forget_prometheus_multiprocess` the one that removes some (those Feast sets on import).
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamflow.errors import StreamflowError

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CONSUMER_GROUP = "streamflow-consumer"
"""The consumer group of ``streamflow consume``, and the one ``lag``, ``rewind`` and the API watch."""

SECRET_MASK = "****"
MIB = 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(StreamflowError):
    """An environment variable with a value of the wrong type or out of range."""

    exit_code = 2


def var(name: str, default: Any, description: str, **constraints: Any) -> Any:
    """A setting read from the environment variable ``name``."""
    return Field(default, alias=name, description=description, **constraints)


class _Group(BaseSettings):
    """A group of settings. Variable names are matched exactly (case-sensitive); an empty value
    counts as unset (its default applies), as in ``${VAR:-default}`` of scripts/services.sh.
    Only the environment is read (no .env file, no secrets directory)."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, frozen=True, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (init_settings, env_settings)


DbRole = Literal["owner", "consumer", "api"]
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
DB_ROLES: tuple[DbRole, ...] = ("owner", "consumer", "api")


class Postgres(_Group):
    """PostgreSQL: the warehouse, Feast's SQL registry and its offline and online stores.

    Three roles, created and granted by ``streamflow apply`` (streamflow/db_roles.py):

    * **owner** (``POSTGRES_USER``): owns every table; ``apply``, ``load``, ``materialize`` and the
      other batch commands. Nothing long-running connects as the owner.
    * **consumer** (``POSTGRES_CONSUMER_USER``): ``streamflow consume`` (every ``--processes``
      member). Writes the online and offline tables the consumer pushes to, reads the registry.
    * **api** (``POSTGRES_API_USER``): ``streamflow api`` (every worker). Reads the online tables
      and the registry, nothing else.

    A process connects as one role: the one ``STREAMFLOW_DB_ROLE`` names (default ``owner``).
    ``streamflow consume`` and ``streamflow api`` set it themselves (:func:`use_role`), so their
    processes and children connect as ``consumer`` and ``api`` whatever the variable says.
    :func:`postgres` returns the connection settings of the process's role (its ``user`` and
    ``password`` are that role's); everything that connects (our code, Feast's store configs and
    registry through streamflow.feast_stores.settings) goes through it. This object, as
    ``settings().postgres`` holds it, has the owner's ``user`` and ``password``; :meth:`for_role`
    gives another role's.
    """

    host: str = var("POSTGRES_HOST", "127.0.0.1", "PostgreSQL host (or the directory of its Unix socket)")
    port: int = var("POSTGRES_PORT", 5432, "PostgreSQL port", ge=1, le=65535)
    database: str = var(
        "POSTGRES_DB",
        "streamflow",
        "database of the warehouse, the Feast registry and the offline and online stores",
    )
    user: str = var(
        "POSTGRES_USER", "streamflow", "PostgreSQL role that owns the tables (`apply`, `load`, `materialize`)"
    )
    password: SecretStr = var(
        "POSTGRES_PASSWORD",
        SecretStr("streamflow"),
        "password of the owner role (`streamflow config` shows it masked)",
    )
    consumer_user: str = var(
        "POSTGRES_CONSUMER_USER",
        "streamflow_consumer",
        "role of `streamflow consume`: writes the tables it pushes to (`apply` creates it)",
    )
    consumer_password: SecretStr = var(
        "POSTGRES_CONSUMER_PASSWORD",
        SecretStr("streamflow_consumer"),
        "password of the consumer's role (`apply` sets it; shown masked)",
    )
    api_user: str = var(
        "POSTGRES_API_USER",
        "streamflow_api",
        "role of `streamflow api`: reads the online tables and the registry (`apply` creates it)",
    )
    api_password: SecretStr = var(
        "POSTGRES_API_PASSWORD",
        SecretStr("streamflow_api"),
        "password of the API's role (`apply` sets it; shown masked)",
    )
    sslmode: SslMode = var(
        "POSTGRES_SSLMODE",
        "disable",
        "libpq sslmode of every connection: disable, allow, prefer, require, verify-ca or verify-full",
    )
    sslrootcert: str | None = var(
        "POSTGRES_SSLROOTCERT",
        None,
        "file of the CA certificates that verify the server (verify-ca, verify-full); unset: libpq's default",
    )
    role: DbRole = var(
        "STREAMFLOW_DB_ROLE",
        "owner",
        "role this process connects as: owner, consumer or api (`consume` and `api` choose their own)",
    )

    def credentials(self, role: DbRole) -> tuple[str, SecretStr]:
        """(user, password) of one of the three roles."""
        return {
            "owner": (self.user, self.password),
            "consumer": (self.consumer_user, self.consumer_password),
            "api": (self.api_user, self.api_password),
        }[role]

    def for_role(self, role: DbRole) -> Postgres:
        """These settings connecting as ``role``: its user and password in ``user`` and ``password``."""
        if role == self.role and role == "owner":
            return self
        user, password = self.credentials(role)
        return self.model_copy(update={"user": user, "password": password, "role": role})

    def tls(self) -> dict[str, str]:
        """The libpq TLS parameters (``sslmode`` and, when set, ``sslrootcert``), the same for
        every connection: psycopg, SQLAlchemy, Feast's stores and its registry."""
        out: dict[str, str] = {"sslmode": self.sslmode}
        if self.sslrootcert:
            out["sslrootcert"] = self.sslrootcert
        return out

    def conninfo_kwargs(self) -> dict[str, Any]:
        return dict(
            host=self.host,
            port=self.port,
            dbname=self.database,
            user=self.user,
            password=self.password.get_secret_value(),
            **self.tls(),
        )

    @property
    def conninfo(self) -> str:
        """A libpq connection string for ``psycopg.connect``, quoted by psycopg (any password)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.conninfo_kwargs())

    @property
    def sqlalchemy_url(self):
        """A ``sqlalchemy.URL`` (psycopg 3 driver), escaped by SQLAlchemy. Note that ``str()`` of it
        hides the password: use it as is, or ``render_as_string(hide_password=False)``."""
        from sqlalchemy import URL

        return URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password.get_secret_value(),
            host=self.host,
            port=self.port,
            database=self.database,
            query=self.tls(),
        )

    def with_database(self, database: str) -> Postgres:
        return self.model_copy(update={"database": database})

    def describe(self) -> str:
        """Where the database is, without the password (for logs and errors)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


class Kafka(_Group):
    """Kafka: every client (streamflow/kafka_clients.py) and the topics of the pipeline."""

    bootstrap_servers: str = var(
        "KAFKA_BOOTSTRAP_SERVERS",
        "127.0.0.1:9092",
        "host:port of one broker or a comma-separated list of several",
    )
    client_id: str = var(
        "STREAMFLOW_KAFKA_CLIENT_ID",
        "streamflow",
        "prefix of every Kafka client id (the broker's logs and quotas see it)",
    )
    message_max_bytes: int = var(
        "KAFKA_MESSAGE_MAX_BYTES",
        2 * MIB,
        "the broker's message.max.bytes; producers never ask for more",
        ge=1,
    )
    request_timeout_ms: int = var(
        "STREAMFLOW_KAFKA_REQUEST_TIMEOUT_MS",
        30_000,
        "how long one Kafka request may wait for the broker (ms)",
        ge=1,
    )
    reconnect_backoff_max_ms: int = var(
        "STREAMFLOW_KAFKA_RECONNECT_BACKOFF_MAX_MS",
        2_000,
        "the longest wait between two reconnects to a broker (ms)",
        ge=1,
    )
    bootstrap_timeout_ms: int = var(
        "STREAMFLOW_KAFKA_BOOTSTRAP_TIMEOUT_MS",
        15_000,
        "how long building a Kafka client waits for a first broker (ms)",
        ge=1,
    )
    replication_factor: int = var(
        "STREAMFLOW_REPLICATION_FACTOR", 0, "replicas of the topics created (0: min(3, brokers))", ge=0
    )
    topic_prefix: str = var(
        "STREAMFLOW_TOPIC_PREFIX", "streamflow", "topics are `<prefix>.<table>` and `<prefix>.dead_letter`"
    )
    partitions: int = var("STREAMFLOW_PARTITIONS", 4, "partitions of the topics created", ge=1)
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = var(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "how every Kafka client talks to the brokers: PLAINTEXT, SASL_PLAINTEXT, SASL_SSL or SSL",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = var(
        "KAFKA_SASL_MECHANISM",
        None,
        "SASL mechanism (with a SASL_* protocol): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    )
    sasl_username: str | None = var("KAFKA_SASL_USERNAME", None, "SASL user (with a SASL_* protocol)")
    sasl_password: SecretStr | None = var(
        "KAFKA_SASL_PASSWORD",
        None,
        "password of the SASL user (`streamflow config` shows it masked)",
    )
    ssl_cafile: Path | None = var(
        "KAFKA_SSL_CAFILE",
        None,
        "CA certificates (PEM) that sign the brokers' certificates (SSL, SASL_SSL; unset: the system's)",
    )
    ssl_certfile: Path | None = var(
        "KAFKA_SSL_CERTFILE", None, "the client's certificate (PEM), for brokers that ask for one"
    )
    ssl_keyfile: Path | None = var("KAFKA_SSL_KEYFILE", None, "the private key of KAFKA_SSL_CERTFILE (PEM)")
    ssl_check_hostname: bool = var(
        "KAFKA_SSL_CHECK_HOSTNAME", True, "check that a broker's certificate names its host (SSL, SASL_SSL)"
    )

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise PydanticCustomError("no_file", "an existing file, got '{path}'", {"path": str(path)})
        return path

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _consistent(self) -> Kafka:
        """SASL settings go with a SASL_* protocol (and all three are needed), TLS files with SSL or
        SASL_SSL: credentials that would be silently left unused are refused too."""
        protocol = f"KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
        sasl: dict[str, object] = {
            "KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.sasl_username,
            "KAFKA_SASL_PASSWORD": self.sasl_password,
        }
        for name, value in sasl.items():
            if self.uses_sasl and value is None:
                _combination(f"{name}: required with {protocol}")
            if not self.uses_sasl and value is not None:
                _combination(f"{name}: set, but {protocol} uses no SASL (use SASL_PLAINTEXT or SASL_SSL)")
        files = {
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        for name, path in files.items():
            if not self.uses_tls and path is not None:
                _combination(f"{name}: set, but {protocol} uses no TLS (use SSL or SASL_SSL)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            _combination("KAFKA_SSL_KEYFILE: set without KAFKA_SSL_CERTFILE, the certificate it goes with")
        return self

    def describe_security(self) -> str:
        """How clients authenticate, without secrets (for logs and errors)."""
        if self.uses_sasl:
            return f"{self.security_protocol} {self.sasl_mechanism} user {self.sasl_username}"
        return self.security_protocol


def _combination(message: str) -> typing.NoReturn:
    """A setting that does not go with another: ``message`` names the variable, as it is shown."""
    raise PydanticCustomError("combination", "{message}", {"message": message})


class Feast(_Group):
    project: str = var("FEAST_PROJECT", "streamflow", "Feast project (its tables are named after it)")


class Paths(_Group):
    data_dir: Path = var(
        "STREAMFLOW_DATA_DIR",
        REPO_ROOT / "data",
        "where `generate` writes snapshots and `produce` looks for them",
    )
    feature_repo: Path = var(
        "STREAMFLOW_FEATURE_REPO", REPO_ROOT / "feature_repo", "the Feast repository (`feature_store.yaml`)"
    )


class Model(_Group):
    """The churn model: `streamflow train`, `predict`, `drift`, and the API's `/predict`."""

    name: str = var("STREAMFLOW_MODEL_NAME", "streamflow_churn", "registered model name in MLflow's registry")
    mlflow_schema: str = var(
        "STREAMFLOW_MLFLOW_SCHEMA",
        "mlflow",
        "PostgreSQL schema (in POSTGRES_DB) of MLflow's tracking store and model registry",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
    )
    artifacts: Path = var(
        "STREAMFLOW_MLFLOW_ARTIFACTS",
        REPO_ROOT / "mlartifacts",
        "directory of MLflow's artifacts (the models `train` logs)",
    )
    experiment: str = var("STREAMFLOW_MLFLOW_EXPERIMENT", "streamflow_churn", "MLflow experiment of `train`")
    promotion_margin: float = var(
        "STREAMFLOW_PROMOTION_MARGIN",
        0.002,
        "ROC AUC by which a new model must beat the champion to take the alias `champion`",
        ge=0,
        le=1,
    )
    refresh: float = var(
        "STREAMFLOW_MODEL_REFRESH_SECONDS",
        15.0,
        "how often the API checks which version the alias `champion` names (s)",
        gt=0,
    )


class Consumer(_Group):
    """`streamflow consume` (each flag of the same name overrides its variable)."""

    group: str = var(
        "STREAMFLOW_CONSUMER_GROUP",
        DEFAULT_CONSUMER_GROUP,
        "consumer group of `consume`; the group `lag`, `rewind` and the API report on",
    )
    max_batch: int = var(
        "STREAMFLOW_MAX_BATCH",
        5000,
        "most events per consumer poll; polls made while a batch is written are written together "
        "(`--max-batch`)",
        ge=1,
    )
    instance_id: str | None = var(
        "STREAMFLOW_CONSUMER_INSTANCE_ID",
        None,
        "static group membership id of the consumer (`--instance-id`)",
    )
    metrics_port: int | None = var(
        "STREAMFLOW_METRICS_PORT",
        None,
        "port of the consumer's Prometheus metrics (`--metrics-port`; unset: none)",
        ge=0,
        le=65535,
    )
    metrics_addr: str = var(
        "STREAMFLOW_METRICS_ADDR", "127.0.0.1", "address of the consumer's metrics server (`--metrics-addr`)"
    )
    write_processes: int = var(
        "STREAMFLOW_WRITE_PROCESSES",
        2,
        "worker processes that decode and write the consumer's batches (`--write-processes`; "
        "0: in the consumer's own process)",
        ge=0,
        le=16,
    )
    max_outage: float | None = var(
        "STREAMFLOW_MAX_OUTAGE",
        None,
        "seconds Kafka may be unreachable before the consumer exits (`--max-outage`; unset: wait forever)",
        gt=0,
        allow_inf_nan=False,
    )


class Api(_Group):
    """`streamflow api` (each flag of the same name overrides its variable)."""

    host: str = var("STREAMFLOW_API_HOST", "127.0.0.1", "address the API listens on (`--host`)")
    port: int = var("STREAMFLOW_API_PORT", 8000, "port the API listens on (`--port`)", ge=0, le=65535)
    workers: int = var(
        "STREAMFLOW_API_WORKERS",
        1,
        "API worker processes (`--workers`; 0: one per CPU core); each has its own metrics, lag "
        "sampler and dead-letter tally (docs/how-to/scaling.md)",
        ge=0,
    )

    def worker_count(self, workers: int | None = None) -> int:
        """``workers`` (or the number given, e.g. by ``--workers``), with 0 resolved to the CPU
        cores available (the affinity mask, not the machine's count, so a container limited to 2
        cores gets 2)."""
        asked = self.workers if workers is None else workers
        return asked or max(1, len(os.sched_getaffinity(0)))

    registry_refresh: float = var(
        "STREAMFLOW_API_REGISTRY_REFRESH",
        60.0,
        "seconds between two reloads of the Feast registry by the API",
        gt=0,
        allow_inf_nan=False,
    )
    db_timeout: float = var(
        "STREAMFLOW_API_DB_TIMEOUT",
        2.0,
        "seconds an API request waits for PostgreSQL before answering 503",
        gt=0,
        allow_inf_nan=False,
    )
    token: SecretStr = var(
        "STREAMFLOW_API_TOKEN",
        SecretStr(""),
        "bearer token(s), comma-separated: when set, every route but /health and the dashboard page "
        "requires `Authorization: Bearer <token>` (empty: no authentication)",
    )
    metrics_token: SecretStr = var(
        "STREAMFLOW_METRICS_TOKEN",
        SecretStr(""),
        "bearer token(s), comma-separated, of GET /metrics alone (empty: STREAMFLOW_API_TOKEN's rule)",
    )

    @field_validator("token", "metrics_token", mode="after")
    @classmethod
    def _tokens(cls, value: SecretStr) -> SecretStr:
        """Each token: at least 16 characters of RFC 6750's token alphabet (never echoed back)."""
        for token in split_tokens(value):
            if len(token) < MIN_TOKEN_LENGTH or not TOKEN_PATTERN.fullmatch(token):
                raise ValueError(
                    f"tokens of {MIN_TOKEN_LENGTH} or more characters of A-Z a-z 0-9 - . _ ~ + / "
                    "(and = at the end), comma-separated"
                )
        return value

    def tokens(self) -> tuple[str, ...]:
        return split_tokens(self.token)

    def metrics_tokens(self) -> tuple[str, ...]:
        return split_tokens(self.metrics_token)


MIN_TOKEN_LENGTH = 16
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750's b64token: what a bearer token may hold."""


def split_tokens(value: SecretStr) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.get_secret_value().split(",") if t.strip())


class Lag(_Group):
    """The API's lag sampler (GET /lag, its metrics and dashboard)."""

    interval: float = var(
        "STREAMFLOW_LAG_INTERVAL",
        5.0,
        "seconds between two lag samples of the API",
        gt=0,
        allow_inf_nan=False,
    )
    timeout: float = var(
        "STREAMFLOW_LAG_TIMEOUT",
        10.0,
        "seconds connecting and each Kafka request of a lag sample may take",
        gt=0,
        allow_inf_nan=False,
    )
    max_backoff: float = var(
        "STREAMFLOW_LAG_MAX_BACKOFF",
        30.0,
        "longest wait between two lag samples while Kafka is unreachable (s)",
        gt=0,
        allow_inf_nan=False,
    )
    consumer_metrics_url: str = var(
        "STREAMFLOW_CONSUMER_METRICS_URL",
        "http://127.0.0.1:9108/metrics",
        "the consumer's metrics, where the dashboard reads freshness",
    )


class Logs(_Group):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = var(
        "STREAMFLOW_LOG_LEVEL",
        None,
        "log level (unset: INFO; WARNING for `lag`, `rewind` and `dead-letters`); "
        "DEBUG also shows tracebacks",
    )
    no_progress: bool = var("STREAMFLOW_NO_PROGRESS", False, "true: no progress bars, even on a terminal")

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        """Any case; a value that is no level stays as given, for the error to show it."""
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        return value


class Settings(BaseModel):
    """Every setting of StreamFlow, by group."""

    model_config = ConfigDict(frozen=True)

    postgres: Postgres
    kafka: Kafka
    feast: Feast
    paths: Paths
    consumer: Consumer
    api: Api
    lag: Lag
    logs: Logs
    model: Model


GROUPS: dict[str, type[_Group]] = {
    name: typing.cast(type[_Group], field.annotation)  # every field of Settings is a group
    for name, field in Settings.model_fields.items()
}


@dataclass(frozen=True)
class Variable:
    """One environment variable: the setting it fills and its documentation."""

    name: str
    group: str
    field: str
    default: Any
    description: str

    @property
    def setting(self) -> str:
        return f"{self.group}.{self.field}"


def variables() -> list[Variable]:
    """Every variable, in the order of the settings."""
    found: list[Variable] = []
    for group, cls in GROUPS.items():
        for field, info in cls.model_fields.items():
            assert info.alias is not None and info.description is not None  # every field is made by var()
            found.append(Variable(info.alias, group, field, info.default, info.description))
    return found


VARIABLES = {v.name: v for v in variables()}


def default(name: str) -> Any:
    """The default of a variable (a SecretStr for a secret)."""
    return VARIABLES[name].default


# -- building -------------------------------------------------------------------------------------


def settings() -> Settings:
    """The settings in effect. Built again when a variable changed since the last call, else the
    same object (one dictionary lookup per variable). Raises ConfigError for a bad value."""
    return _build(tuple(os.environ.get(name) for name in VARIABLES))


@lru_cache(maxsize=8)
def _build(_environment: tuple) -> Settings:
    groups: dict[str, Any] = {}  # Settings(**groups) checks each group's class
    problems: list[str] = []
    for name, cls in GROUPS.items():
        try:
            groups[name] = cls()
        except ValidationError as exc:
            problems += [_problem(cls, error) for error in exc.errors()]
    if problems:
        raise ConfigError("; ".join(problems))
    return Settings(**groups)


def group(name: str) -> _Group:
    """One group alone, read now (e.g. ``group("logs")`` while another group has a bad value)."""
    cls = GROUPS[name]
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigError("; ".join(_problem(cls, error) for error in exc.errors())) from None


def _field(cls: type[_Group], name: str):
    return next((info for info in cls.model_fields.values() if info.alias == name), None)


def _bounds(info) -> dict[str, Any]:
    bounds = {}
    for item in info.metadata:
        for op in ("ge", "gt", "le", "lt"):
            if getattr(item, op, None) is not None:
                bounds[op] = getattr(item, op)
    return bounds


def _kind(info) -> str:
    types = [t for t in typing.get_args(info.annotation) or (info.annotation,) if t is not type(None)]
    if int in types:
        return "an integer"
    if float in types:
        return "a number"
    return "a value"


def _range(info) -> str:
    b = _bounds(info)
    if "ge" in b and "le" in b:
        return f" from {b['ge']} to {b['le']}"
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return "".join(f" {symbols[op]} {value}" for op, value in b.items())


def _secret(info) -> bool:
    """A setting whose value is a secret (SecretStr, maybe optional)."""
    return SecretStr in (typing.get_args(info.annotation) or (info.annotation,))


def _literals(annotation) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


def _problem(cls: type[_Group], error: ErrorDetails) -> str:
    """One pydantic error as ``VARIABLE: expected ..., got '...'``."""
    kind = error["type"]
    if kind == "combination":  # a model validator's own message, naming its variable
        return error["msg"]
    name = str(error["loc"][0]) if error.get("loc") else cls.__name__
    info = _field(cls, name)
    if info is None:
        expected = error["msg"][:1].lower() + error["msg"][1:]
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        expected = f"{_kind(info)}{_range(info)}"
    elif kind == "literal_error":
        expected = "one of " + ", ".join(map(str, _literals(info.annotation)))
    elif kind.startswith("bool"):
        expected = "true or false (also 1/0, yes/no, on/off)"
    elif kind == "no_file":
        return f"{name}: expected {error['msg']}"
    elif kind == "finite_number":
        expected = f"a finite number{_range(info)}"
    elif kind.startswith(("int", "float")):
        expected = _kind(info)
    elif kind == "value_error":  # our own validators: their message says what is expected
        expected = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        expected = error["msg"][:1].lower() + error["msg"][1:]
    if "input" not in error:
        return f"{name}: expected {expected}"
    got = SECRET_MASK if info is not None and _secret(info) else repr(error["input"])
    return f"{name}: expected {expected}, got {got}"


# -- what the rest of the code calls ----------------------------------------------------------------


def postgres() -> Postgres:
    """The connection settings of this process's role (``STREAMFLOW_DB_ROLE``, see :class:`Postgres`)."""
    pg = settings().postgres
    return pg.for_role(pg.role)


def use_role(role: DbRole) -> None:
    """Connect this process, and the processes it starts, as ``role`` from now on: sets
    ``STREAMFLOW_DB_ROLE`` (``streamflow consume`` and ``streamflow api`` call it first thing)."""
    if role not in DB_ROLES:
        raise ValueError(f"no such database role: {role!r} (one of {', '.join(DB_ROLES)})")
    os.environ["STREAMFLOW_DB_ROLE"] = role


PROMETHEUS_MULTIPROCESS_VARIABLES = (
    "PROMETHEUS_MULTIPROCESS_DIR",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
)
"""prometheus_client's multiprocess-mode variables: not StreamFlow settings, an operator's choice
that StreamFlow leaves as it is (see streamflow.feast_metrics_guard)."""


def prometheus_multiprocess_chosen() -> bool:
    """Whether one of :data:`PROMETHEUS_MULTIPROCESS_VARIABLES` is set in this process's environment."""
    return any(name in os.environ for name in PROMETHEUS_MULTIPROCESS_VARIABLES)


def forget_prometheus_multiprocess() -> None:
    """Remove :data:`PROMETHEUS_MULTIPROCESS_VARIABLES` from this process's environment (what Feast's
    metrics module sets on import), so that the processes it starts do not inherit them."""
    for name in PROMETHEUS_MULTIPROCESS_VARIABLES:
        os.environ.pop(name, None)


def kafka_bootstrap() -> str:
    return settings().kafka.bootstrap_servers


def topic_prefix() -> str:
    return settings().kafka.topic_prefix


def data_dir() -> Path:
    return settings().paths.data_dir


def feature_repo_dir() -> Path:
    return settings().paths.feature_repo


def feast_project() -> str:
    return settings().feast.project


# -- streamflow config ------------------------------------------------------------------------------


def source(name: str) -> str:
    """Where a variable's value comes from: ``environment`` or ``default``."""
    value = os.environ.get(name)
    if not value:
        return "default"
    return "environment"
