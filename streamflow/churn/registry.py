"""Where the churn model lives: MLflow's tracking store and model registry in our PostgreSQL (the
schema ``STREAMFLOW_MLFLOW_SCHEMA`` of ``POSTGRES_DB``), its artifacts under
``STREAMFLOW_MLFLOW_ARTIFACTS``.

:func:`prepare` (owner role, ``streamflow train``) creates the schema, lets MLflow create or
upgrade its tables there, creates the experiment and grants the API's role read access.
:func:`client` gives an ``MlflowClient`` on it for the process's role; :func:`champion` names the
version the alias ``champion`` points to and :func:`load` loads a version.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamflow import config, db_roles
from streamflow.errors import ServiceUnavailable, StreamflowError, first_line

log = logging.getLogger("streamflow.churn.registry")

CHAMPION = "champion"
"""The alias of the version that serves."""


class NoChampion(StreamflowError):
    """No version of the model carries the alias ``champion`` (run ``streamflow train``)."""


class ModelUnreadable(StreamflowError):
    """A registered version's files cannot be read (its artifacts were moved or deleted)."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    features: tuple[str, ...]
    """The input columns of the model's signature, in order."""


def tracking_uri(pg: config.Postgres | None = None) -> str:
    """A SQLAlchemy URL of our PostgreSQL whose search path is MLflow's schema (any password)."""
    pg = pg or config.postgres()
    schema = config.settings().model.mlflow_schema
    url = pg.sqlalchemy_url.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


class _MlflowsHandledInserts(logging.Filter):
    """MLflow's SQL store inserts some rows that may exist (a registered model, the metrics it links
    to a logged model) and handles the unique violation itself; psycopg then logs a warning when it
    discards the aborted pipeline of that insert. Those warnings, and only those, are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("error ignored terminating") and "pipeline aborted" in message)


def _quiet_mlflow() -> None:
    # MLflow logs every migration and a banner per run at INFO; an operator needs none of it
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # MLflow 3.17's SQL store still names a loader strategy SQLAlchemy 2.1 deprecates (harmless)
    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
    psycopg_log = logging.getLogger("psycopg")
    if not any(isinstance(f, _MlflowsHandledInserts) for f in psycopg_log.filters):
        psycopg_log.addFilter(_MlflowsHandledInserts())


def client(pg: config.Postgres | None = None):
    """An ``MlflowClient`` whose tracking store and registry are our PostgreSQL (and this process's
    ``mlflow`` module pointed at them, for ``models:/`` URIs)."""
    use(pg)
    from mlflow import MlflowClient

    uri = tracking_uri(pg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use(pg: config.Postgres | None = None) -> None:
    """Point this process's ``mlflow`` module (``mlflow.start_run`` and the like) at our store."""
    _quiet_mlflow()
    import mlflow

    uri = tracking_uri(pg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def prepare() -> str:
    """Create MLflow's schema and tables (idempotent), the experiment, and grant the API's role
    read access to them; returns the experiment id. Runs as the owner role."""
    import psycopg
    from psycopg import sql

    settings = config.settings()
    pg = config.postgres()
    schema = settings.model.mlflow_schema
    artifacts = Path(settings.model.artifacts).resolve()
    try:
        with psycopg.connect(pg.conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        mlflow_client = client(pg)
        experiment = mlflow_client.get_experiment_by_name(settings.model.experiment)
        if experiment is None:
            artifacts.mkdir(parents=True, exist_ok=True)
            experiment_id = mlflow_client.create_experiment(
                settings.model.experiment, artifact_location=artifacts.as_uri()
            )
        else:
            experiment_id = experiment.experiment_id
        api_user = settings.postgres.api_user
        with psycopg.connect(pg.conninfo, autocommit=True, connect_timeout=5) as conn:
            db_roles.grant_api_read(conn, api_user, schema_name=schema)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"MLflow's store: PostgreSQL at {pg.describe()} is not reachable ({first_line(exc)})"
        ) from None
    return experiment_id


def store_exists(pg: config.Postgres | None = None) -> bool:
    """Whether MLflow's registry tables exist (``streamflow train`` creates them): checked first, so
    that a process without the right to create them (the API's role) never has MLflow try."""
    import psycopg

    pg = pg or config.postgres()
    table = f"{config.settings().model.mlflow_schema}.registered_model_aliases"
    try:
        with psycopg.connect(pg.conninfo, connect_timeout=5) as conn:
            row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"MLflow's store: PostgreSQL at {pg.describe()} is not reachable ({first_line(exc)})"
        ) from None
    return bool(row and row[0])


def champion_version(mlflow_client: Any = None) -> str:
    """The version number the alias ``champion`` names (one registry read); raises NoChampion."""
    name = config.settings().model.name
    if mlflow_client is None and not store_exists():
        raise NoChampion(f"no model {name} is registered: run `streamflow train` first")
    from mlflow.exceptions import MlflowException

    mlflow_client = mlflow_client or client()
    try:
        return str(mlflow_client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise NoChampion(
                f"model {name} has no version with the alias {CHAMPION}: run `streamflow train` first"
            ) from None
        raise


def champion(mlflow_client: Any = None) -> ModelVersion:
    """The version the alias ``champion`` names, with its input features; raises NoChampion."""
    return describe(champion_version(mlflow_client))


def describe(version: str) -> ModelVersion:
    """A version of the model with the input features of its signature (reads its MLmodel file)."""
    from mlflow.models import get_model_info

    name = config.settings().model.name
    with _readable(name, version):
        info = get_model_info(f"models:/{name}/{version}")
    inputs = info.signature.inputs.input_names() if info.signature is not None else []
    return ModelVersion(name, str(version), tuple(inputs))


def load(version: ModelVersion):
    """The scikit-learn pipeline of a registered version."""
    import mlflow.sklearn

    with _readable(version.name, version.version):
        return mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")


@contextmanager
def _readable(name: str, version: str):
    """Turn a failure to read a version's files into ModelUnreadable, naming the version."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        artifacts = config.settings().model.artifacts
        raise ModelUnreadable(
            f"model {name} version {version} cannot be read: {first_line(exc)} "
            f"(STREAMFLOW_MLFLOW_ARTIFACTS={artifacts})"
        ) from None
