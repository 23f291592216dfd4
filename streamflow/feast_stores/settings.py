"""What StreamFlow's Feast configuration takes from StreamFlow's settings: read here, and only here.

``feature_repo/feature_store.yaml`` carries no ``${VARIABLE}``. Feast 0.67 expands variables in
that file with ``os.path.expandvars`` before parsing it: there is no default syntax, an unset
variable stays as the literal text ``${VAR}`` (``port: '${POSTGRES_PORT}'`` then fails
validation), and no code of ours runs before Feast reads the file. What Feast does offer, and
what we use instead:

* **Store config classes.** Feast imports the online and offline store named by ``type:`` and
  builds its ``<Store>Config`` pydantic class from the yaml section. Ours
  (``StreamflowOnlineStoreConfig``, ``StreamflowOfflineStoreConfig``) give host, port, database,
  user and password defaults from :func:`database`, and ``sslmode`` and ``sslrootcert_path`` from
  :func:`tls` (the ``DatabaseDefaults`` fields below), so
  the yaml names none of them.
* **The SQL registry's engine.** Feast's ``registry_type: sql`` is fixed (0.67 resolves no custom
  registry class by import path), but it hands ``sqlalchemy_config_kwargs`` to SQLAlchemy's
  ``create_engine``: ``plugins: [streamflow]`` loads :class:`RegistryDatabase`, a SQLAlchemy
  ``CreateEnginePlugin`` that fills in what the registry URL leaves out from :func:`database`.
  It is registered with SQLAlchemy when this module is imported, which Feast does while it
  validates the yaml (the store classes import it), before it creates the registry's engine.
* **The project** is the one value Feast reads from the yaml only (no default, no environment
  variable of its own): ``project: streamflow``, the same value as :func:`project`'s default.
  StreamFlow's own code opens the store on :func:`project` (``FEAST_PROJECT``). So that a Feast
  command never works on another project than StreamFlow's settings name, our provider refuses a
  configuration whose project differs (:func:`check_project`); the Feast CLI on another project
  is ``feast -f <a yaml naming it>`` with ``FEAST_PROJECT`` set to the same name.

The order is the usual one: a value written in the yaml wins, else the environment variable,
else StreamFlow's local default. Values are read when Feast builds the object (a store config,
the registry's engine); ``streamflow.feature_store.open_store`` builds them all when it opens the
store, so a store keeps the settings it was opened with.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictStr
from sqlalchemy.dialects import plugins
from sqlalchemy.engine import URL, CreateEnginePlugin, make_url

from streamflow import config
from streamflow.errors import StreamflowError

# --- the one place that reads streamflow.config (the functions below) ------------------------


def database() -> dict:
    """host, port, database, user and password of the PostgreSQL that holds the offline store,
    the online store and the registry; user and password are those of the process's role
    (``STREAMFLOW_DB_ROLE``: the owner, or the consumer's or the API's role, see
    streamflow.config.Postgres), so Feast connects as the same role as our own code."""
    pg = config.postgres()
    return {
        "host": pg.host,
        "port": pg.port,
        "database": pg.database,
        "user": pg.user,
        "password": pg.password.get_secret_value(),
    }


def tls() -> dict:
    """``sslmode`` and ``sslrootcert_path`` (Feast's names for libpq's ``sslmode`` and
    ``sslrootcert``) of every connection: POSTGRES_SSLMODE and POSTGRES_SSLROOTCERT."""
    pg = config.postgres()
    return {"sslmode": pg.sslmode, "sslrootcert_path": pg.sslrootcert}


def project() -> str:
    """The Feast project StreamFlow works on."""
    return config.feast_project()


# --- store config classes ----------------------------------------------------------------------


def _setting(name: str):
    return Field(default_factory=lambda: database()[name])


def _tls_setting(name: str):
    return Field(default_factory=lambda: tls()[name])


class DatabaseDefaults(BaseModel):
    """Connection fields of a store config: from :func:`database` unless the yaml gives them.

    Listed first among a store config's bases, so these fields replace the required ones of
    Feast's ``PostgreSQLConfig``.
    """

    host: StrictStr = _setting("host")
    port: int = _setting("port")
    database: StrictStr = _setting("database")
    user: StrictStr = _setting("user")
    password: StrictStr = _setting("password")
    sslmode: StrictStr | None = _tls_setting("sslmode")
    sslrootcert_path: StrictStr | None = _tls_setting("sslrootcert_path")


def connection_fields() -> dict:
    """host, port, database, user, password and the TLS fields as a stock PostgreSQL store section
    wants them (for a stock-class store next to ours, as the tests and benchmarks build)."""
    return {**database(), **tls()}


# --- the registry's engine ---------------------------------------------------------------------

PLUGIN = "streamflow"
"""The SQLAlchemy plugin name that feature_store.yaml gives in registry.sqlalchemy_config_kwargs."""


def registry_url(url: str | URL) -> URL:
    """The registry URL with what it leaves out (host, port, database, user, password, and the
    query parameters ``sslmode`` and ``sslrootcert``) filled in."""
    url = make_url(url)
    db = database()
    given = tls()
    query = {"sslmode": given["sslmode"], "sslrootcert": given["sslrootcert_path"]}
    return url.set(
        host=url.host or db["host"],
        port=url.port or db["port"],
        database=url.database or db["database"],
        username=url.username or db["user"],
        password=url.password if url.password is not None else db["password"],
    ).update_query_dict({k: v for k, v in query.items() if v and k not in url.query})


class RegistryDatabase(CreateEnginePlugin):
    """SQLAlchemy plugin ``streamflow``: the registry's database from StreamFlow's settings."""

    def update_url(self, url: URL) -> URL:
        return registry_url(url)


plugins.register(PLUGIN, __name__, "RegistryDatabase")


def pin(repo_config) -> None:
    """Read every setting of a RepoConfig now (store configs, registry URL) rather than when Feast
    first needs it: a store opened by StreamFlow keeps the settings of the moment it was opened."""
    _ = repo_config.online_store, repo_config.offline_store  # properties: built (and kept) when read
    registry = repo_config.registry
    if getattr(registry, "registry_type", None) == "sql" and PLUGIN in _plugins_of(registry):
        registry.path = registry_url(registry.path).render_as_string(hide_password=False)


def _plugins_of(registry) -> list:
    return list((getattr(registry, "sqlalchemy_config_kwargs", None) or {}).get("plugins") or [])


# --- the project -------------------------------------------------------------------------------


class ProjectMismatch(StreamflowError):
    """Feast's configuration names another project than StreamFlow's settings."""


def check_project(repo_config) -> None:
    """Refuse a Feast configuration on another project than :func:`project` (FEAST_PROJECT).

    Feast takes the project from its yaml only; StreamFlow's commands, API and consumer take it
    from FEAST_PROJECT. Without this check, ``FEAST_PROJECT=x feast serve`` would silently serve
    the yaml's project while ``streamflow api`` serves x.
    """
    wanted = project()
    if repo_config.project != wanted:
        raise ProjectMismatch(
            f"Feast's configuration names project {repo_config.project!r} but StreamFlow's setting "
            f"FEAST_PROJECT is {wanted!r}. Feast reads the project only from its yaml: to run Feast "
            f"on project {wanted!r}, give it a copy of feature_repo/feature_store.yaml whose "
            f"'project:' is {wanted} (feast -f FILE, or FEAST_FS_YAML_FILE_PATH=FILE); to run it on "
            f"{repo_config.project!r}, set FEAST_PROJECT={repo_config.project}."
        )
