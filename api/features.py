"""Online feature lookups behind the API.

Two costs decide the latency of a lookup, and both are kept off the request path:

* **The Feast registry.** The feature views of the churn feature service are read from the
  registry once at start-up and refreshed in the background (every 60 s by default), so a
  request never waits for a registry round trip. If the registry cannot be reached, the last
  good catalog keeps serving; until one has been loaded, lookups answer 503.
* **PostgreSQL.** One read per request for every requested view and every user, through the
  reader our Feast online store reads with (``streamflow.feast_stores.online.OnlineReader``: one
  ``UNION ALL`` query and one pool checkout for all views), on the process-wide pool of
  ``connection_pool()``. Entity keys are encoded and rows decoded by our own plain-Python code
  (``value_encoding``), no protobuf objects on the way.

A database outage surfaces as :class:`FeaturesUnavailable` (the API answers 503); the pool
checks each connection it hands out, so lookups work again as soon as PostgreSQL is back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from api.limits import shown
from streamflow import config as streamflow_config
from streamflow import schema
from streamflow.errors import first_line
from streamflow.feast_stores.online import (
    Decoder,
    OnlineReader,
    close_pools,
    connection_pool,
    decode_values,
    string_key_bytes,
)
from streamflow.feast_stores.value_encoding import decode_elements, supports
from streamflow.timefmt import iso_utc

log = logging.getLogger("api.features")

MAX_BATCH = 1000
"""Most user ids one POST /features may ask for."""

DEFAULT_DB_TIMEOUT = float(streamflow_config.default("STREAMFLOW_API_DB_TIMEOUT"))
"""Seconds a lookup waits for a pooled connection before answering 503 (an outage fails fast)."""
CHECK_TIMEOUT = 3.0
"""Seconds /ready gives each dependency before calling it unreachable."""

JSONValue = bool | int | float | str | None


# --- errors ------------------------------------------------------------------------------------


class UnknownFeatures(ValueError):
    """A feature selection that names views or features the service does not have."""

    def __init__(self, unknown: list[str], hint: str = ""):
        self.unknown = unknown
        super().__init__(f"unknown feature{'s' if len(unknown) > 1 else ''}: {shown(unknown)}{hint}")


class FeaturesUnavailable(RuntimeError):
    """A dependency (PostgreSQL or the Feast registry) cannot be reached; the message is safe to show."""

    def __init__(self, part: str, message: str):
        self.part = part
        super().__init__(message)


def _database_errors() -> tuple[type[BaseException], ...]:
    import psycopg
    import psycopg_pool

    return (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)


# --- the catalog: what the feature service serves --------------------------------------------


@dataclass(frozen=True)
class ViewSpec:
    """One feature view of the service, as the registry declares it."""

    name: str
    view: Any  # feast.FeatureView (only its name is used for reads)
    features: tuple[str, ...]
    kinds: dict[str, str]
    """Feature -> schema kind (streamflow.contract.KINDS); decides how a value is rendered."""
    decode: Decoder = decode_elements
    """How the view's rows are decoded: ``decode_elements`` when it handles every value type of the
    view (``value_encoding.supports``), else through Feast's protobuf classes (``proto_elements``)."""


@dataclass(frozen=True)
class Catalog:
    views: dict[str, ViewSpec]
    loaded_at: float = field(default_factory=time.time)

    def all_features(self) -> dict[str, tuple[str, ...]]:
        return {name: spec.features for name, spec in self.views.items()}

    def resolve(self, selection: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
        """view -> features for a selection of ``view:feature`` names (None: everything).

        Views and features come back in the service's order. Raises UnknownFeatures naming
        every entry that is malformed or unknown.
        """
        if selection is None:
            return self.all_features()
        wanted: dict[str, set[str]] = {}
        unknown: list[str] = []
        for raw in selection:
            ref = raw.strip()
            view, sep, feature = ref.partition(":")
            spec = self.views.get(view) if sep else None
            if spec is None or feature not in spec.kinds:
                unknown.append(ref)
                continue
            wanted.setdefault(view, set()).add(feature)
        if unknown or not wanted:
            raise UnknownFeatures(unknown or [""], f"; expected view:feature, one of: {self.known()}")
        return {
            name: tuple(f for f in spec.features if f in wanted[name])
            for name, spec in self.views.items()
            if name in wanted
        }

    def known(self) -> str:
        return ", ".join(f"{name}:{f}" for name, spec in self.views.items() for f in spec.features)


def parse_selection(text: str | None) -> list[str] | None:
    """``view:feature,view:feature`` from a query string (None: every feature; blank is an error)."""
    if text is None:
        return None
    return text.split(",")


def _kind_of(view_name: str, feature: Any) -> str:
    try:
        return schema.table_for_feature_view(view_name).column(feature.name).kind
    except KeyError:
        from feast.types import Bool, Float32, Float64, Int32, Int64, UnixTimestamp

        return {
            Bool: "boolean",
            Int32: "integer",
            Int64: "integer",
            Float32: "float",
            Float64: "float",
            UnixTimestamp: "datetime",
        }.get(feature.dtype, "category")


def _plain(feature: Any) -> bool:
    """Whether our plain-Python decoder handles the feature's value type."""
    try:
        return supports(feature.dtype.to_value_type())
    except Exception:  # noqa: BLE001 - a type without a value type: let Feast's classes decode it
        return False


def load_catalog(store) -> Catalog:
    """The feature service's views and features, straight from the registry (no cache)."""
    registry = store.registry
    project = store.project
    service = registry.get_feature_service(schema.FEATURE_SERVICE, project, allow_cache=False)
    views = {v.name: v for v in registry.list_feature_views(project, allow_cache=False)}
    specs: dict[str, ViewSpec] = {}
    for projection in service.feature_view_projections:
        view = views.get(projection.name)
        if view is None:
            raise LookupError(
                f"feature view {projection.name!r} of service {schema.FEATURE_SERVICE} is not in the registry"
            )
        fields = projection.features or view.features
        name = projection.name_to_use()
        specs[name] = ViewSpec(
            name=name,
            view=view,
            features=tuple(f.name for f in fields),
            kinds={f.name: _kind_of(view.name, f) for f in fields},
            decode=decode_elements if all(_plain(f) for f in view.features) else proto_elements,
        )
    return Catalog(specs)


# --- reads -------------------------------------------------------------------------------------


Element = tuple[str | None, Any]
"""One decoded value: (protobuf field of ``Value``, Python value), e.g. ("double_val", 29.5)."""


def proto_elements(raw: bytes) -> list[Element]:
    """``decode_elements`` through Feast's protobuf classes (for value types it does not handle)."""
    out: list[Element] = []
    for value in decode_values(raw):
        which = value.WhichOneof("val")
        out.append((which, getattr(value, which) if which is not None else None))
    return out


def decode_value(element: Element | None, kind: str) -> JSONValue:
    """A decoded value as a JSON value: bool, int, float, str, an ISO date, or None."""
    if element is None:
        return None
    which, raw = element
    if which == "string_val" or which == "int64_val" or which == "bool_val" or which == "int32_val":
        return raw
    if which == "double_val" or which == "float_val":
        return raw if math.isfinite(raw) else None
    if which is None or which == "null_val":
        return None
    if which == "unix_timestamp_val":
        try:
            ts = datetime.fromtimestamp(raw, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):  # Feast's null timestamp (-2**63): no value
            return None
        return ts.date().isoformat() if kind == "date" else iso_utc(ts)
    if which == "bytes_val":
        return raw.hex()
    return str(raw)  # pragma: no cover - the views only have the kinds above


@dataclass
class ViewResult:
    """One view of one user, as models.ViewFeatures (same fields, same order: the API writes it to
    JSON as it is). ``event_timestamp`` is in UTC."""

    found: bool
    event_timestamp: datetime | None
    age_seconds: float | None
    features: dict[str, JSONValue]


@dataclass
class UserResult:
    """One user, as models.UserFeatures (same fields, same order)."""

    user_id: str
    found: bool
    views: dict[str, ViewResult]


class FeatureReader:
    """Everything a request needs: the store, the cached catalog, the pool, the checks."""

    def __init__(
        self,
        store=None,
        refresh_seconds: float | None = None,
        db_timeout: float | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self._store = store
        env = streamflow_config.settings().api  # (``config`` is a Feast RepoConfig in this module)
        self.refresh_seconds = refresh_seconds if refresh_seconds is not None else env.registry_refresh
        self.db_timeout = db_timeout if db_timeout is not None else env.db_timeout
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.online = OnlineReader()
        self._catalog: Catalog | None = None
        self._catalog_lock = threading.Lock()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self._checks: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def store(self):
        if self._store is None:
            from streamflow.feature_store import get_store

            self._store = get_store()
        return self._store

    @property
    def config(self):
        return self.store.config

    def start(self) -> None:
        """Open the pool (without waiting for PostgreSQL), load the catalog, start refreshing."""
        connection_pool(self.config.online_store)
        self._checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="api-ready")
        try:
            self.refresh()
        except FeaturesUnavailable as exc:
            log.warning("starting without the feature catalog (%s); will retry", exc)
        self._stop.clear()
        self._refresher = threading.Thread(
            target=self._refresh_loop, name="api-registry-refresh", daemon=True
        )
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
            self._refresher = None
        if self._checks is not None:
            self._checks.shutdown(wait=False, cancel_futures=True)
            self._checks = None
        close_pools()

    def _refresh_loop(self) -> None:
        # Retry sooner while no catalog has been loaded yet.
        while not self._stop.wait(self.refresh_seconds if self._catalog else min(5.0, self.refresh_seconds)):
            try:
                self.refresh()
            except FeaturesUnavailable as exc:
                log.warning(
                    "registry refresh failed, keeping the catalog loaded %s: %s", self._catalog_age(), exc
                )

    def _catalog_age(self) -> str:
        if self._catalog is None:
            return "(none yet)"
        return f"{time.time() - self._catalog.loaded_at:.0f} s ago"

    # -- the catalog ----------------------------------------------------------------------------

    def refresh(self) -> Catalog:
        """Reload the catalog from the registry (raises FeaturesUnavailable)."""
        try:
            catalog = load_catalog(self.store)
        except Exception as exc:  # noqa: BLE001 - any registry failure: keep serving the old one
            log.warning(
                "cannot load feature service %s from the Feast registry: %s: %s",
                schema.FEATURE_SERVICE,
                type(exc).__name__,
                first_line(exc),
            )
            raise FeaturesUnavailable("feast_registry", "the Feast registry is not reachable") from None
        with self._catalog_lock:
            changed = self._catalog is None or self._catalog.all_features() != catalog.all_features()
            self._catalog = catalog
        if changed:
            log.info(
                "feature service %s: %d views, %d features",
                schema.FEATURE_SERVICE,
                len(catalog.views),
                sum(len(s.features) for s in catalog.views.values()),
            )
        return catalog

    def catalog(self) -> Catalog:
        catalog = self._catalog
        if catalog is not None:
            return catalog
        with self._catalog_lock:
            if self._catalog is not None:
                return self._catalog
        return self.refresh()

    # -- lookups --------------------------------------------------------------------------------

    def lookup(self, user_ids: Sequence[str], selection: Sequence[str] | None = None) -> list[UserResult]:
        """Features of each user, in the order asked (raises UnknownFeatures, FeaturesUnavailable)."""
        catalog = self.catalog()
        chosen = catalog.resolve(selection)
        specs = [catalog.views[name] for name in chosen]
        config = self.config
        version = config.entity_key_serialization_version
        unique = list(dict.fromkeys(user_ids))
        keys = [string_key_bytes(schema.KEY, u, version) for u in unique]
        try:
            per_view = self.online.read(
                config,
                [s.view.name for s in specs],
                keys,
                [chosen[s.name] for s in specs],
                decode=[s.decode for s in specs],
                timeout=self.db_timeout,
            )
        except _database_errors() as exc:
            log.warning("online read failed: %s: %s", type(exc).__name__, first_line(exc))
            raise FeaturesUnavailable("postgres", "the online store (PostgreSQL) is not reachable") from None
        now = self.clock()
        by_user: dict[str, UserResult] = {}
        for i, user in enumerate(unique):
            views: dict[str, ViewResult] = {}
            any_found = False
            for spec, rows in zip(specs, per_view):
                event_ts, values = rows[i]
                if values is None:
                    views[spec.name] = ViewResult(False, None, None, {})
                    continue
                any_found = True
                if event_ts is not None and event_ts.utcoffset():
                    event_ts = event_ts.astimezone(timezone.utc)
                views[spec.name] = ViewResult(
                    True,
                    event_ts,
                    round((now - event_ts).total_seconds(), 3) if event_ts is not None else None,
                    {f: decode_value(values.get(f), spec.kinds[f]) for f in chosen[spec.name]},
                )
            by_user[user] = UserResult(user, any_found, views if any_found else {})
        return [by_user[u] for u in user_ids]

    # -- readiness ------------------------------------------------------------------------------

    def check_postgres(self) -> None:
        def probe():
            with self.online.connection(self.config, timeout=min(self.db_timeout, CHECK_TIMEOUT)) as conn:
                conn.execute("SELECT 1").fetchone()

        self._run_check("postgres", probe, "PostgreSQL (online store) is not reachable")

    def check_registry(self) -> None:
        def probe():
            self.store.registry.get_feature_service(
                schema.FEATURE_SERVICE, self.store.project, allow_cache=False
            )
            if self._catalog is None:
                self.refresh()

        self._run_check("feast_registry", probe, "the Feast registry is not reachable")

    def _run_check(self, part: str, probe: Callable[[], None], message: str) -> None:
        if self._checks is None:
            self._checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="api-ready")
        try:
            self._checks.submit(probe).result(timeout=CHECK_TIMEOUT)
        except FutureTimeout:
            log.warning("readiness: %s did not answer within %.0f s", part, CHECK_TIMEOUT)
            raise FeaturesUnavailable(part, f"{message} (no answer within {CHECK_TIMEOUT:.0f} s)") from None
        except Exception as exc:  # noqa: BLE001
            log.warning("readiness: %s failed: %s: %s", part, type(exc).__name__, first_line(exc))
            raise FeaturesUnavailable(part, message) from None


__all__ = [
    "Catalog",
    "FeatureReader",
    "FeaturesUnavailable",
    "MAX_BATCH",
    "UnknownFeatures",
    "UserResult",
    "ViewResult",
    "decode_value",
    "iso_utc",
    "load_catalog",
    "parse_selection",
]
