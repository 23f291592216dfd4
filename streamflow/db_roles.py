"""Least-privilege PostgreSQL roles for the long-running processes, created by `streamflow apply`.

Three roles (streamflow.config.Postgres says how a process picks one): the **owner**
(``POSTGRES_USER``) owns every table and runs apply, load and materialize; the **consumer**
(``POSTGRES_CONSUMER_USER``) and the **api** (``POSTGRES_API_USER``) roles get exactly what their
process does, found by running each under its role (tests/test_db_roles.py holds them to it):

api (``streamflow api``: lookups through ``OnlineReader``, the catalog and /ready from the registry)
  * SELECT on the project's online tables (``<project>_<feature view>``);
  * SELECT on Feast's registry tables that its refresh reads (all but the version history).

consumer (``streamflow consume``: ``feature_store.push`` online and offline, for every table)
  * SELECT, INSERT, UPDATE on the online tables of the views its push sources feed: the
    newest-wins merge is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` on the stored row;
  * SELECT, INSERT, UPDATE on the snapshot tables of those views: the offline store's merge
    (which reads the stored rows too), and Feast asks PostgreSQL for the source's columns;
  * TEMPORARY on the database: both merges COPY into a TEMP staging table first;
  * SELECT on the same registry tables as the API.

Both: CONNECT on the database and USAGE on the schema. Neither gets DELETE, TRUNCATE, REFERENCES
or TRIGGER, nor CREATE in the schema (revoked from PUBLIC: PostgreSQL 15's default, made sure
of), nor membership of another role; TEMPORARY is revoked from PUBLIC and given to the consumer.

:func:`ensure_roles` (apply, as the owner, after it created the tables) creates the two roles or
updates them (password from the settings, sent hashed), then, in one transaction, revokes every
privilege of both on the tables apply manages and grants the list above: a re-run also takes back
what is no longer needed, and covers tables apply has just created. Roles are cluster-wide,
grants are per database. :func:`check_ready` is what ``consume`` and ``api`` do first: one line
saying to run ``streamflow apply`` when their role cannot log in or lacks a grant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql

from streamflow import config, schema
from streamflow.errors import ServiceUnavailable, StreamflowError, first_line

log = logging.getLogger(__name__)

RESTRICTED: tuple[config.DbRole, ...] = ("consumer", "api")
"""The roles apply creates (the owner exists before apply runs)."""

READ = ("SELECT",)
MERGE = ("SELECT", "INSERT", "UPDATE")

_VARIABLES = {
    "consumer": ("POSTGRES_CONSUMER_USER", "POSTGRES_CONSUMER_PASSWORD"),
    "api": ("POSTGRES_API_USER", "POSTGRES_API_PASSWORD"),
}


class RoleSetupError(StreamflowError):
    """The roles cannot be created or granted as the settings say (apply)."""

    exit_code = 2


class RoleNotReady(StreamflowError):
    """A process's role cannot log in or lacks a grant: `streamflow apply` has not run (here)."""

    exit_code = 2


# --- what each role gets ----------------------------------------------------------------------


UNREAD_REGISTRY_TABLES = frozenset({"feature_view_version_history"})
"""Registry tables neither process reads: Feast reads the version history only when a registry
enables ``enable_online_feature_view_versioning`` (ours does not)."""


def registry_tables() -> list[str]:
    """Feast's SQL registry tables the processes read: every one its refresh lists objects from."""
    from feast.infra.registry.sql import metadata

    return sorted(set(metadata.tables) - UNREAD_REGISTRY_TABLES)


def all_registry_tables() -> list[str]:
    from feast.infra.registry.sql import metadata

    return sorted(metadata.tables)


def online_tables(project: str, tables: Iterable[schema.Table] = schema.TABLES) -> list[str]:
    return [schema.online_table(project, t.feature_view) for t in tables]


PUSHED: tuple[schema.Table, ...] = schema.TABLES
"""The tables the consumer pushes to: it subscribes to every table's topic (consumer.runner)."""


def table_grants(project: str) -> dict[config.DbRole, dict[str, tuple[str, ...]]]:
    """role -> table -> privileges: everything the restricted roles get on tables."""
    registry = {name: READ for name in registry_tables()}
    return {
        "api": {**registry, **{name: READ for name in online_tables(project)}},
        "consumer": {
            **registry,
            **{name: MERGE for name in online_tables(project, PUSHED)},
            **{t.snapshot_table: MERGE for t in PUSHED},
        },
    }


def managed_tables(project: str) -> list[str]:
    """Every table apply creates: the restricted roles get nothing on them but :func:`table_grants`."""
    warehouse_tables = [n for t in schema.TABLES for n in (t.base_table, t.snapshot_table)]
    return [*all_registry_tables(), *online_tables(project), *warehouse_tables]


# --- apply ---------------------------------------------------------------------------------------


def ensure_roles(conn: psycopg.Connection, pg: config.Postgres, project: str) -> None:
    """Create or update the consumer's and the API's roles and grant them their privileges in the
    connection's database. ``conn``: the owner's (autocommit); ``pg``: the settings (all roles)."""
    owner = _scalar(conn, "SELECT current_user")
    names: dict[str, str] = {"owner": owner, **{role: pg.credentials(role)[0] for role in RESTRICTED}}
    if len(set(names.values())) != len(names):
        raise RoleSetupError(
            "the owner, consumer and API roles must be three different roles, not "
            + ", ".join(f"{role}={name}" for role, name in names.items())
            + " (POSTGRES_USER, POSTGRES_CONSUMER_USER, POSTGRES_API_USER)"
        )
    if not _scalar(conn, "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"):
        raise RoleSetupError(
            f"role {owner} may not create roles: give it CREATEROLE (as a superuser: "
            f'ALTER ROLE "{owner}" CREATEROLE; scripts/services.sh up does), then run streamflow apply again'
        )
    for role in RESTRICTED:  # before any change: a privileged role named here is never altered
        _refuse_privileged(conn, pg.credentials(role)[0])
    for role in RESTRICTED:
        user, password = pg.credentials(role)
        _ensure_login_role(conn, user, password.get_secret_value())
    _grant(conn, names, project)
    log.info(
        "database roles: %s (consumer) and %s (api) granted in database %s",
        names["consumer"],
        names["api"],
        pg.database,
    )


def _ensure_login_role(conn: psycopg.Connection, user: str, password: str) -> None:
    """Create the role, or update an existing one: LOGIN, the password, no extra attributes."""
    verifier = sql.Literal(conn.pgconn.encrypt_password(password.encode(), user.encode()).decode())
    ident = sql.Identifier(user)
    if not role_exists(conn, user):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, verifier))
            log.info("created role %s", user)
        except psycopg.errors.DuplicateObject:
            pass  # another apply (of another database) created it meanwhile: updated below
    conn.execute(
        sql.SQL("ALTER ROLE {} WITH LOGIN NOCREATEDB NOCREATEROLE INHERIT PASSWORD {}").format(
            ident, verifier
        )
    )
    _refuse_privileged(conn, user)  # also after: a role changed meanwhile by someone else


def _refuse_privileged(conn: psycopg.Connection, user: str) -> None:
    """RoleSetupError when an existing role ``user`` is a superuser, has REPLICATION or BYPASSRLS,
    or is a member of another role: it is not least-privilege, and it is not ours to change."""
    row = conn.execute(
        """
        SELECT r.rolsuper OR r.rolreplication OR r.rolbypassrls,
               array(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                     WHERE m.member = r.oid ORDER BY 1)
        FROM pg_roles r WHERE r.rolname = %s
        """,
        (user,),
    ).fetchone()
    if row is not None and (row[0] or row[1]):
        raise RoleSetupError(
            f"role {user} is meant to be least-privilege but "
            + (
                "is a superuser or has REPLICATION or BYPASSRLS"
                if row[0]
                else f"is a member of {', '.join(row[1])}"
            )
            + ": take that away (as a superuser) or name another role"
        )


def _grant(conn: psycopg.Connection, names: dict[str, str], project: str) -> None:
    roles = {role: sql.Identifier(names[role]) for role in RESTRICTED}
    both = sql.SQL(", ").join(roles.values())
    grants = table_grants(project)
    with conn.transaction():
        database = sql.Identifier(_scalar(conn, "SELECT current_database()"))
        schema_ident = sql.Identifier(_scalar(conn, "SELECT current_schema()"))
        existing = _existing(conn, managed_tables(project))
        statements = [
            sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(database),
            sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(database, both),
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, both),
            sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(database, roles["consumer"]),
            sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(schema_ident),
            sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema_ident, both),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema_ident, both),
        ]
        if existing:
            statements.append(
                sql.SQL("REVOKE ALL ON {} FROM {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, existing)), both
                )
            )
        for role, tables in grants.items():
            by_privileges: dict[tuple[str, ...], list[str]] = {}
            for table, privileges in tables.items():
                if table in existing:
                    by_privileges.setdefault(privileges, []).append(table)
            for privileges, names_ in by_privileges.items():
                statements.append(
                    sql.SQL("GRANT {} ON {} TO {}").format(
                        sql.SQL(", ").join(map(sql.SQL, privileges)),
                        sql.SQL(", ").join(map(sql.Identifier, names_)),
                        roles[role],
                    )
                )
        for statement in statements:
            conn.execute(statement)


def role_exists(conn: psycopg.Connection, user: str) -> bool:
    """Whether the database role ``user`` exists (``streamflow apply`` creates the pipeline's)."""
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone() is not None


def grant_api_read(
    conn: psycopg.Connection, api_user: str, *, schema_name: str = "", table: str = ""
) -> None:
    """Let the API's role read the tables of ``schema_name`` (and use the schema) or one ``table``,
    when the role exists (before ``streamflow apply``, the owner alone reads them)."""
    if not role_exists(conn, api_user):
        return
    role = sql.Identifier(api_user)
    if schema_name:
        conn.execute(
            sql.SQL(
                "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}"
            ).format(s=sql.Identifier(schema_name), r=role)
        )
    if table:
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), role))


def _scalar(conn: psycopg.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def _existing(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """The tables that exist (unqualified names, as the stores and the warehouse use them)."""
    rows = conn.execute(
        "SELECT name FROM unnest(%s::text[]) WITH ORDINALITY AS t(name, n)"
        " WHERE to_regclass(quote_ident(name)) IS NOT NULL ORDER BY n",
        (tables,),
    ).fetchall()
    return [name for (name,) in rows]


# --- the processes -------------------------------------------------------------------------------


def missing_grants(conn: psycopg.Connection, role: config.DbRole, project: str) -> list[str]:
    """What the connection's role lacks of what :func:`table_grants` gives ``role``, as
    ``PRIVILEGE on table`` (a missing table counts as missing)."""
    pairs = [(table, p) for table, privileges in table_grants(project)[role].items() for p in privileges]
    rows = conn.execute(
        """
        SELECT p || ' on ' || t FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS x(t, p, n)
        WHERE to_regclass(quote_ident(t)) IS NULL OR NOT has_table_privilege(to_regclass(quote_ident(t)), p)
        ORDER BY n
        """,
        ([t for t, _ in pairs], [p for _, p in pairs]),
    ).fetchall()
    missing = [text for (text,) in rows]
    if role == "consumer" and not _scalar(
        conn, "SELECT has_database_privilege(current_database(), 'TEMPORARY')"
    ):
        missing.insert(0, "TEMPORARY on the database")
    return missing


def _login_refused(exc: psycopg.OperationalError) -> bool:
    text = str(exc)
    return "password authentication failed" in text or ('role "' in text and "does not exist" in text)


def check_ready(who: str, pg: config.Postgres | None = None) -> None:
    """Raise RoleNotReady (one line: run `streamflow apply`) when the process's role cannot log
    in or lacks a grant; ServiceUnavailable when PostgreSQL is not reachable. Nothing to check for
    the owner."""
    pg = pg or config.postgres()
    if pg.role == "owner":
        return
    user_var, password_var = _VARIABLES[pg.role]
    try:
        conn = psycopg.connect(pg.conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if _login_refused(exc):
            raise RoleNotReady(
                f"{who}: PostgreSQL refused the login of role {pg.user} ({pg.role} role, {user_var}) at "
                f"{pg.host}:{pg.port}: run `streamflow apply` to create it and set its password "
                f"from {password_var}"
            ) from None
        raise ServiceUnavailable(
            f"{who}: PostgreSQL at {pg.describe()} is not reachable ({first_line(exc)})"
        ) from None
    from streamflow.feast_stores import settings as feast_settings

    with conn:
        missing = missing_grants(conn, pg.role, feast_settings.project())
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RoleNotReady(
            f"{who}: role {pg.user} lacks {missing[0]}{more} in database {pg.database}: "
            f"run `streamflow apply` there"
        )


__all__ = [
    "RoleNotReady",
    "RoleSetupError",
    "check_ready",
    "ensure_roles",
    "managed_tables",
    "missing_grants",
    "table_grants",
]
