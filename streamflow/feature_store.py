"""Access to StreamFlow's Feast feature store: open it, apply the definitions, push validated rows."""

from __future__ import annotations

import contextvars
import logging
import re
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pandas as pd

from streamflow import config, schema
from streamflow.errors import ServiceUnavailable, first_line
from streamflow.push_validation import validate_frame

log = logging.getLogger(__name__)


def _feature_store_class():
    from feast import FeatureStore

    class StreamflowFeatureStore(FeatureStore):
        """Feast's FeatureStore, with one round trip less per push.

        Feast 0.67's ``push`` ends with ``_precompute_for_push``, which lists the project's feature
        services from the SQL registry *bypassing its cache* on every push (a query and the parsing
        of every service: 40 ms, a tenth of a consumer batch's write), only to find that none has
        ``precompute_online`` set. Here the cached registry (refreshed every ``cache_ttl_seconds``)
        answers that question, and Feast's own step runs when some service does precompute.
        """

        def _precompute_for_push(self, feature_view_name: str, df: pd.DataFrame) -> None:
            services = self.registry.list_feature_services(self.project, allow_cache=True)
            if any(getattr(service, "precompute_online", False) for service in services):
                super()._precompute_for_push(feature_view_name, df)

    return StreamflowFeatureStore


def yaml_path(repo: Path | str | None = None) -> Path:
    """The feature_store.yaml Feast reads for a repo: FEAST_FS_YAML_FILE_PATH, else the repo's."""
    from feast.utils import get_default_yaml_file_path

    return Path(get_default_yaml_file_path(Path(repo or config.feature_repo_dir())))


def open_store(repo: Path | str | None = None, project: str | None = None):
    """A new FeatureStore on the repo's yaml, on StreamFlow's project (FEAST_PROJECT by default).

    Feast reads the project from the yaml only; StreamFlow's code sets it from its settings, and
    reads every other setting now (streamflow.feast_stores.settings.pin), so the store keeps the
    settings of the moment it was opened.
    """
    from feast.repo_config import load_repo_config

    from streamflow.feast_stores import settings

    repo = Path(repo or config.feature_repo_dir())
    repo_config = load_repo_config(repo, yaml_path(repo))
    repo_config.project = project or settings.project()
    settings.pin(repo_config)
    return _feature_store_class()(repo_path=str(repo), config=repo_config)


@cache
def _store(repo: str, yaml: str, project: str, database: str):
    return open_store(repo, project)


def get_store():
    """The process's FeatureStore for the configured repo, yaml, project and database (opened once)."""
    from streamflow.feast_stores import settings

    repo = config.feature_repo_dir()
    return _store(str(repo), str(yaml_path(repo)), settings.project(), config.postgres().describe())


def feast_yaml(project: str, repo: Path | str | None = None) -> str:
    """The repo's feature_store.yaml naming another project: what the Feast CLI needs to work on
    that project (``feast -f FILE``), since Feast reads the project from its yaml only."""
    text = (Path(repo or config.feature_repo_dir()) / "feature_store.yaml").read_text()
    out, n = re.subn(r"(?m)^project:.*$", f"project: {project}", text, count=1)
    if n != 1:
        raise ValueError("feature_store.yaml has no top-level 'project:' line")
    return out


@contextmanager
def database_errors(action: str):
    """Turn a PostgreSQL connection failure into a clear ServiceUnavailable."""
    import psycopg
    import psycopg_pool
    import sqlalchemy.exc

    try:
        yield
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout, sqlalchemy.exc.OperationalError) as exc:
        first = first_line(exc)
        raise ServiceUnavailable(
            f"{action}: PostgreSQL at {config.postgres().describe()} is not reachable ({first})"
        ) from None


def apply() -> list[str]:
    """Create the warehouse tables, register every Feast object, then create the consumer's and the
    API's roles and grant them their privileges on those tables (streamflow.db_roles). Idempotent;
    runs as the owner role."""
    import psycopg

    from feature_repo import definitions
    from streamflow import db_roles, warehouse

    pg = config.postgres()
    if pg.role != "owner":
        raise db_roles.RoleSetupError(
            f"apply creates the tables and roles as the owner role (POSTGRES_USER), not as the {pg.role} "
            f"role: unset STREAMFLOW_DB_ROLE"
        )
    with database_errors("feast apply"):
        with psycopg.connect(pg.conninfo, connect_timeout=5) as conn:
            warehouse.ensure_schema(conn)
        objects = definitions.all_objects()
        get_store().apply(objects)
        with psycopg.connect(pg.conninfo, connect_timeout=5, autocommit=True) as conn:
            db_roles.ensure_roles(conn, config.settings().postgres, get_store().project)
    names = [o.name for o in objects]
    log.info("applied %d Feast objects to project %s: %s", len(names), get_store().project, ", ".join(names))
    return names


_VALIDATED = contextvars.ContextVar("streamflow_validated_push", default=False)


def push_is_validated() -> bool:
    """Whether the push being written in this thread was validated against the registry already
    (by :func:`push`): our provider and offline store then skip checking the same rows again. A
    push that did not come through :func:`push` (``feast serve`` /push, a user's own
    ``store.push``) is checked by them (streamflow.feast_stores.validation)."""
    return _VALIDATED.get()


@contextmanager
def validated_push():
    """Inside this block, writes to Feast count as validated already (see push_is_validated)."""
    token = _VALIDATED.set(True)
    try:
        yield
    finally:
        _VALIDATED.reset(token)


def push(table: schema.Table, frame: pd.DataFrame, where: str = "push", *, validated: bool = False) -> int:
    """Validate a frame against the registry, then push it online and offline. Returns rows.

    ``validated``: the frame was built from events that :func:`streamflow.events.decode` checked,
    in the registry's dtypes (the consumer's hot path): it is not checked a second time.
    """
    from feast.data_source import PushMode

    typed = frame if validated else validate_frame(table, frame, where=where)
    if typed.empty:
        return 0
    with validated_push():
        get_store().push(table.push_source, typed, to=PushMode.ONLINE_AND_OFFLINE)
    return len(typed)
