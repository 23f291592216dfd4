"""TLS to PostgreSQL: a private PostgreSQL with ``ssl=on``, a certificate signed by a CA made here
with openssl, and a ``pg_hba.conf`` that accepts TCP logins over TLS only (``hostssl``).

* ``POSTGRES_SSLMODE=verify-full`` with ``POSTGRES_SSLROOTCERT`` naming that CA: ``streamflow
  apply`` (psycopg for the warehouse and the roles, SQLAlchemy for Feast's registry, Feast's
  stores) and ``streamflow lookup`` work, over TLS (``pg_stat_ssl``).
* The same with another CA: refused, exit code 4 (the service is unavailable), one line naming
  the database and the certificate failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from streamflow import config
from streamflow.errors import ServiceUnavailable
from streamflow.net import free_port

ROOT = config.REPO_ROOT
OWNER = "sf_tls_owner"
OWNER_PASSWORD = "tls owner's pw"
DATABASE = "sf_tls"


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        pytest.skip("PostgreSQL is not installed (scripts/services.sh up installs it)")
    return found[-1].parent


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    """``<name>.key`` and a self-signed ``<name>.pem``."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=folder,
    )  # fmt: skip


def make_server_cert(folder: Path, ca: str) -> None:
    """``server.key`` and ``server.crt`` for 127.0.0.1 and localhost, signed by ``ca``."""
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=folder,
    )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_postgres():
    """(port, folder) of a running PostgreSQL that takes TCP logins over TLS only; its owner role
    OWNER owns database DATABASE. Stopped and removed afterwards."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    bin_dir = pg_bin()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="sf-tls-pg-"))
    data = folder / "data"
    make_ca(folder, "ca")
    make_ca(folder, "other_ca")
    make_server_cert(folder, "ca")
    (folder / "server.key").chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for name in ("server.key", "server.crt"):
            shutil.chown(folder / name, "postgres")
    port = free_port()
    subprocess.run(
        [*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{folder}'\n"
            f"ssl = on\nssl_cert_file = '{folder}/server.crt'\nssl_key_file = '{folder}/server.key'\n"
            "fsync = off\n"
        )
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 reject\n"
    )
    subprocess.run(
        [*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"),
         "-w", "-t", "60", "start"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        with psycopg.connect(
            host=str(folder), port=port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute(
                psycopg.sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(
                    psycopg.sql.Identifier(OWNER), psycopg.sql.Literal(OWNER_PASSWORD)
                )
            )
            c.execute(
                psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    *map(psycopg.sql.Identifier, (DATABASE, OWNER))
                )
            )
        yield port, folder
    finally:
        subprocess.run(
            [*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)


def tls_env(port: int, rootcert: Path, sslmode: str = "verify-full") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "STREAMFLOW_DB_ROLE"))}
    return {
        **env,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(port),
        "POSTGRES_DB": DATABASE,
        "POSTGRES_USER": OWNER,
        "POSTGRES_PASSWORD": OWNER_PASSWORD,
        "POSTGRES_CONSUMER_USER": "sf_tls_consumer",
        "POSTGRES_API_USER": "sf_tls_api",
        "POSTGRES_SSLMODE": sslmode,
        "POSTGRES_SSLROOTCERT": str(rootcert),
        "FEAST_PROJECT": "sf_tls",
        "STREAMFLOW_NO_PROGRESS": "1",
    }


def streamflow(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_verify_full_with_the_servers_ca_connects_every_client_over_tls(tls_postgres, monkeypatch):
    port, folder = tls_postgres
    env = tls_env(port, folder / "ca.pem")
    applied = streamflow(env, "apply")
    assert applied.returncode == 0, applied.stderr[-3000:]
    # the registry (SQLAlchemy) and the warehouse (psycopg) were written through TLS connections
    looked_up = streamflow(env, "lookup", "0000-AAAAA", "--json")
    assert looked_up.returncode == 0, looked_up.stderr[-3000:]
    for name, value in env.items():
        if name.startswith("POSTGRES_"):
            monkeypatch.setenv(name, value)
    with psycopg.connect(config.postgres().conninfo) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        registered = conn.execute("SELECT count(*) FROM feature_views WHERE project_id = 'sf_tls'").fetchone()
    assert registered is not None and registered[0] > 0
    # the consumer's and the API's roles were created by apply and log in over TLS as well
    for role in ("consumer", "api"):
        with psycopg.connect(config.settings().postgres.for_role(role).conninfo) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (
                True,
            )


def test_another_ca_is_refused_with_one_clear_line(tls_postgres):
    port, folder = tls_postgres
    refused = streamflow(tls_env(port, folder / "other_ca.pem"), "apply")
    assert refused.returncode == ServiceUnavailable.exit_code, refused.stderr[-3000:]
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"127.0.0.1:{port}/{DATABASE}" in lines[0] and "certificate verify failed" in lines[0], lines[0]


def test_plain_text_is_refused_by_this_server(tls_postgres):
    """The server of these tests takes TLS only: the first test's logins cannot have been plain."""
    port, folder = tls_postgres
    refused = streamflow(tls_env(port, folder / "ca.pem", sslmode="disable"), "lookup", "0000-AAAAA")
    assert refused.returncode == ServiceUnavailable.exit_code, refused.stderr
    assert "no encryption" in refused.stderr, refused.stderr
