"""Access to StreamFlow's Feast feature store: open it, apply the definitions, push validated rows."""

from __future__ import annotations

import contextvars
import logging
from contextlib import contextmanager
from functools import lru_cache

import pandas as pd

from streamflow import config, schema
from streamflow.errors import ServiceUnavailable, first_line
from streamflow.push_validation import validate_frame

log = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def _store(repo: str, project: str):
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

    return StreamflowFeatureStore(repo_path=repo)


def get_store():
    """The process's FeatureStore for the configured repo and project (opened once)."""
    return _store(str(config.feature_repo_dir()), config.feast_project())


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
    """Create the warehouse tables and register every Feast object (idempotent)."""
    from feature_repo import definitions
    from streamflow import warehouse
    import psycopg

    with database_errors("feast apply"):
        with psycopg.connect(config.postgres().conninfo, connect_timeout=5) as conn:
            warehouse.ensure_schema(conn)
        objects = definitions.all_objects()
        get_store().apply(objects)
    names = [o.name for o in objects]
    log.info("applied %d Feast objects to project %s: %s", len(names), config.feast_project(), ", ".join(names))
    return names


_VALIDATED = contextvars.ContextVar("streamflow_validated_push", default=False)


def push_is_validated() -> bool:
    """Whether the push being written in this thread was validated against the registry already
    (by :func:`push`): the offline store then skips checking the same rows again. A push that did
    not come through :func:`push` (``feast serve`` /push, a user's own ``store.push``) is checked."""
    return _VALIDATED.get()


def push(table: schema.Table, frame: pd.DataFrame, where: str = "push", *, validated: bool = False) -> int:
    """Validate a frame against the registry, then push it online and offline. Returns rows.

    ``validated``: the frame was built from events that :func:`streamflow.events.decode` checked,
    in the registry's dtypes (the consumer's hot path): it is not checked a second time.
    """
    from feast.data_source import PushMode

    typed = frame if validated else validate_frame(table, frame, where=where)
    if typed.empty:
        return 0
    token = _VALIDATED.set(True)
    try:
        get_store().push(table.push_source, typed, to=PushMode.ONLINE_AND_OFFLINE)
    finally:
        _VALIDATED.reset(token)
    return len(typed)
