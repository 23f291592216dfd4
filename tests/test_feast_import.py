"""Feast imported without typeguard's import-time instrumentation (streamflow.feast_without_typeguard).

Each case runs in a fresh interpreter: what is checked is the first import of Feast in a process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from streamflow import config


def run(code: str, tmp_path) -> str:
    script = tmp_path / "script.py"  # a file: typeguard instruments only code whose source it can read
    script.write_text(textwrap.dedent(code))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=config.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_feast_imported_after_streamflow_skips_typeguard_and_user_code_keeps_it(tmp_path):
    out = run(
        """
        import streamflow
        import typeguard
        real = typeguard.typechecked
        from feast import Entity
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
        assert typeguard.typechecked is real, "the real decorator is back after Feast's import"
        Entity(name="user", join_keys=["user_id"], description=123)  # typeguard would refuse the int
        PostgreSQLSource(name="s", query="select 1", timestamp_field="t", description=123)

        @typeguard.typechecked
        def mine(x: int) -> int:
            return x

        try:
            mine("not an int")
        except typeguard.TypeCheckError:
            print("user code checked")
        """,
        tmp_path,
    )
    assert out == "user code checked"


def test_feast_imported_before_streamflow_keeps_typeguard(tmp_path):
    out = run(
        """
        import feast
        import streamflow
        import typeguard
        try:
            feast.Entity(name="user", join_keys=["user_id"], description=123)
        except typeguard.TypeCheckError:
            print("checked")
        """,
        tmp_path,
    )
    assert out == "checked"


def test_feast_works_as_before_without_the_checks(tmp_path):
    out = run(
        """
        import streamflow
        from feast import Entity, Field, FeatureView
        from feast.types import Int64
        from feature_repo import definitions
        views = [v for v in vars(definitions).values() if isinstance(v, FeatureView)]
        assert views and all(isinstance(f, Field) for v in views for f in v.features)
        assert Field(name="x", dtype=Int64).dtype == Int64
        print(len(views))
        """,
        tmp_path,
    )
    assert int(out) >= 6
