"""Credentials that never break a script: `scripts/services.sh up` with an owner whose password holds
every character a shell or SQL treats specially (``' " ; $ \\`` and a space), then the demo's first
steps (`streamflow apply`, then a load) with it. The password never appears in a process's
arguments: every command services.sh runs as the postgres user goes through ``runuser``, and a
stand-in ``runuser`` first in the PATH records the arguments before running the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from streamflow import config

ROOT = config.REPO_ROOT
OWNER = "sf_edge_owner"
DATABASE = "sf_edge_db"
PASSWORD = "a'b\"c;d$e\\f g`h"


@pytest.fixture()
def hostile_owner(pg_settings, tmp_path):
    """Environment of an owner role and database of their own, with the hostile password; both
    dropped afterwards."""
    env = {
        **os.environ,
        "POSTGRES_USER": OWNER,
        "POSTGRES_PASSWORD": PASSWORD,
        "POSTGRES_DB": DATABASE,
        "FEAST_PROJECT": "sf_edge",
        "STREAMFLOW_LOG_LEVEL": "INFO",
    }
    yield env
    edge = pg_settings.with_database("postgres")
    conninfo = psycopg.conninfo.make_conninfo(edge.conninfo, user=OWNER, password=PASSWORD)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
    except psycopg.OperationalError:
        pass  # never created
    with psycopg.connect(pg_settings.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(OWNER)))


def recording_runuser(tmp_path: Path) -> tuple[dict, Path]:
    """A PATH whose ``runuser`` records its arguments (one line each) and runs the real one."""
    real = shutil.which("runuser")
    if real is None or os.geteuid() != 0:
        pytest.skip("services.sh runs psql through runuser as root only")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "runuser.args"
    shim = bin_dir / "runuser"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


def test_services_up_and_the_demos_first_steps_take_any_password(hostile_owner, tmp_path):
    path, args_log = recording_runuser(tmp_path)
    done = subprocess.run(
        [str(ROOT / "scripts" / "services.sh"), "up"],
        env={**hostile_owner, **path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # the owner logs in with the password as given, over TCP (scram), into its database
    edge = config.postgres().with_database(DATABASE)
    conninfo = psycopg.conninfo.make_conninfo(edge.conninfo, user=OWNER, password=PASSWORD)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (OWNER, DATABASE)
    # no process got it as an argument
    recorded = args_log.read_text()
    assert "psql" in recorded  # the stand-in saw services.sh's psql
    assert PASSWORD not in recorded and "a'b" not in recorded

    # the demo's first steps with the same owner: apply (Feast's registry through SQLAlchemy, our
    # stores through psycopg), then a load
    from streamflow.datagen.generate import generate

    data = tmp_path / "data"
    generate(data, users=20, seed=3, snapshots=["month_000"], progress=False)
    for step in (["apply"], ["load", str(data / "month_000")]):
        ran = subprocess.run(
            [sys.executable, "-m", "streamflow.cli", *step],
            cwd=ROOT,
            env=hostile_owner,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0, (step, ran.stderr[-3000:])
        assert PASSWORD not in ran.stderr + ran.stdout
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM users_snapshots").fetchone() == (20,)
