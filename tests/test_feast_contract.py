"""Our contract with the installed Feast: the private Feast names StreamFlow uses, and the Feast
methods our store classes override.

Feast promises nothing about either. Where Feast has a public name, our code uses it; these are
the ones without one:

* ``feast.infra.utils.postgres.connection_utils._get_conninfo`` and ``_get_conn_kwargs``: the
  connection settings of a ``PostgreSQLConfig`` (streamflow/feast_stores/online.py,
  ``connection_pool``, so that our pools connect as Feast's own PostgreSQL stores do);
* ``..postgres_offline_store.postgres._get_entity_schema`` and
  ``_get_entity_df_event_timestamp_range``: how stock Feast reads an entity DataFrame or SQL
  (streamflow/feast_stores/historical.py, so that both retrievals read the same contract);
* ``PostgreSQLRetrievalJob.__init__``'s keywords and its ``config`` attribute, and the
  ``RetrievalJob._to_arrow_internal`` hook (historical.py, ``StreamflowRetrievalJob``).

Feast calls our overrides (online store, offline store, provider, retrieval job, push error)
with its own signatures: each must accept every parameter of the Feast method it replaces, by
the same name and at the same position, be static/async where Feast's is, and add parameters
only with defaults. When Feast changes, this test fails naming every difference; adapt the code
named in the message (and this file's expectations) before upgrading.
"""

from __future__ import annotations

import importlib
import inspect
from datetime import datetime, timezone

import pandas as pd

P = inspect.Parameter

PRIVATE = [
    # (module, name, its parameters, who relies on it)
    (
        "feast.infra.utils.postgres.connection_utils",
        "_get_conninfo",
        ["config"],
        "streamflow/feast_stores/online.py connection_pool",
    ),
    (
        "feast.infra.utils.postgres.connection_utils",
        "_get_conn_kwargs",
        ["config"],
        "streamflow/feast_stores/online.py connection_pool",
    ),
    (
        "feast.infra.offline_stores.contrib.postgres_offline_store.postgres",
        "_get_entity_schema",
        ["entity_df", "config"],
        "streamflow/feast_stores/historical.py get_historical_features",
    ),
    (
        "feast.infra.offline_stores.contrib.postgres_offline_store.postgres",
        "_get_entity_df_event_timestamp_range",
        ["entity_df", "entity_df_event_timestamp_col", "config"],
        "streamflow/feast_stores/historical.py get_historical_features",
    ),
]


def _overrides():
    """(our class, the Feast class it extends, methods of ours Feast does not call) pairs."""
    from feast.errors import FeastError
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
        PostgreSQLOfflineStore,
        PostgreSQLRetrievalJob,
    )
    from feast.infra.online_stores.online_store import OnlineStore
    from feast.infra.passthrough_provider import PassthroughProvider

    from streamflow.feast_stores.historical import StreamflowRetrievalJob
    from streamflow.feast_stores.offline import StreamflowOfflineStore
    from streamflow.feast_stores.online import StreamflowOnlineStore
    from streamflow.feast_stores.provider import StreamflowProvider
    from streamflow.feast_stores.validation import InvalidPush

    return [
        (StreamflowOnlineStore, OnlineStore, set()),
        (StreamflowOfflineStore, PostgreSQLOfflineStore, set()),
        (StreamflowProvider, PassthroughProvider, set()),
        # Our code builds these two itself: their constructors are ours to choose.
        (StreamflowRetrievalJob, PostgreSQLRetrievalJob, {"__init__"}),
        (InvalidPush, FeastError, {"__init__"}),
    ]


def _signature_problems(where: str, ours, theirs) -> list[str]:
    problems = []
    try:
        mine = list(inspect.signature(ours).parameters.values())
        feast = list(inspect.signature(theirs).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return problems
    by_name = {p.name: (i, p) for i, p in enumerate(mine)}
    for i, p in enumerate(feast):
        if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            if not any(q.kind is p.kind for q in mine):
                problems.append(
                    f"{where}: Feast's takes {'*' if p.kind is P.VAR_POSITIONAL else '**'}{p.name}, ours not"
                )
            continue
        if p.name not in by_name:
            if any(q.kind is P.VAR_KEYWORD for q in mine) and p.kind is P.KEYWORD_ONLY:
                continue
            problems.append(f"{where}: Feast's has parameter {p.name!r} ({p.kind.description}), ours not")
            continue
        j, q = by_name[p.name]
        if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD) and j != i:
            problems.append(f"{where}: parameter {p.name!r} is at position {i} in Feast's, {j} in ours")
        if q.kind is not p.kind:
            problems.append(
                f"{where}: parameter {p.name!r} is {p.kind.description} in Feast's, "
                f"{q.kind.description} in ours"
            )
    known = {p.name for p in feast}
    for q in mine:
        if q.name not in known and q.default is P.empty and q.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD):
            problems.append(
                f"{where}: our parameter {q.name!r} has no default and Feast's method does not have it"
            )
    return problems


def _override_problems() -> list[str]:
    problems = []
    for ours, base, own in _overrides():
        feast_bases = [c for c in ours.__mro__[1:] if c.__module__.split(".")[0] == "feast"]
        assert base in feast_bases, f"{ours.__name__} no longer extends Feast's {base.__name__}"
        for name, attr in vars(ours).items():
            if name in own or not callable(getattr(ours, name, None)) or isinstance(attr, type):
                continue
            defining = next((c for c in feast_bases if name in vars(c)), None)
            if defining is None:
                continue
            where = (
                f"{ours.__module__}.{ours.__name__}.{name} overrides "
                f"{defining.__module__}.{defining.__name__}.{name}"
            )
            theirs_static = isinstance(vars(defining)[name], staticmethod)
            if isinstance(attr, staticmethod) != theirs_static:
                static = (
                    "Feast's is a staticmethod, ours not"
                    if theirs_static
                    else "ours is a staticmethod, Feast's not"
                )
                problems.append(f"{where}: {static}")
            if inspect.iscoroutinefunction(getattr(ours, name)) != inspect.iscoroutinefunction(
                getattr(defining, name)
            ):
                problems.append(f"{where}: one is async and the other not")
            problems += _signature_problems(where, getattr(ours, name), getattr(defining, name))
    return problems


def _private_problems() -> list[str]:
    problems = []
    for module_name, name, params, user in PRIVATE:
        what = f"{module_name}.{name} (used by {user})"
        try:
            fn = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{what}: gone ({exc})")
            continue
        got = [p.name for p in inspect.signature(fn).parameters.values()]
        if got != params:
            problems.append(f"{what}: parameters are now {got}, we call it with {params}")
    if problems:
        return problems

    # What they answer, as our code uses it (no database needed).
    from feast.infra.offline_stores.contrib.postgres_offline_store import postgres
    from feast.infra.utils.postgres import connection_utils

    from streamflow.feast_stores.online import StreamflowOnlineStoreConfig

    config = StreamflowOnlineStoreConfig(host="db.example", port=6543, database="d", user="u", password="p")
    conninfo = connection_utils._get_conninfo(config)
    if not isinstance(conninfo, str) or "db.example" not in conninfo or "6543" not in conninfo:
        problems.append(
            f"_get_conninfo: no longer a libpq conninfo string naming host and port: {conninfo!r}"
        )
    kwargs = connection_utils._get_conn_kwargs(config)
    if not isinstance(kwargs, dict) or "sslmode" not in kwargs:
        problems.append(f"_get_conn_kwargs: no longer a dict of psycopg connection keywords: {kwargs!r}")

    times = [datetime(2024, 1, 31, tzinfo=timezone.utc), datetime(2024, 2, 29, tzinfo=timezone.utc)]
    frame = pd.DataFrame({"user_id": ["a", "b"], "event_timestamp": times})
    entity_schema = postgres._get_entity_schema(frame, None)
    if dict(entity_schema) != dict(zip(frame.columns, frame.dtypes)):
        problems.append(
            f"_get_entity_schema: a DataFrame's schema is no longer column -> dtype: {entity_schema!r}"
        )
    bounds = postgres._get_entity_df_event_timestamp_range(frame, "event_timestamp", None)
    if tuple(bounds) != tuple(times):
        problems.append(
            f"_get_entity_df_event_timestamp_range: no longer (min, max) of the column: {bounds!r}"
        )

    init = inspect.signature(postgres.PostgreSQLRetrievalJob.__init__).parameters
    ours = {"query", "config", "full_feature_names", "on_demand_feature_views", "metadata"}
    if not ours <= set(init):
        problems.append(
            f"PostgreSQLRetrievalJob.__init__ no longer takes {sorted(ours - set(init))} "
            "(streamflow/feast_stores/historical.py StreamflowRetrievalJob passes them)"
        )
    return problems


def test_the_private_feast_we_rely_on_is_the_installed_feast():
    problems = _private_problems() + _override_problems()
    if problems:
        import feast

        raise AssertionError(
            f"Feast {feast.__version__} changed what StreamFlow relies on:\n  " + "\n  ".join(problems)
        )
