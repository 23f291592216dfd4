"""The docs: the README stays short and its links resolve, the CLI reference is what argparse prints,
and the site builds in mkdocs' strict mode (a broken link or a page left out of the nav fails)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from streamflow import cli_reference, config

ROOT = config.REPO_ROOT


def _local_env() -> dict[str, str]:
    """The environment of a machine with nothing set: the defaults the reference shows."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL"}
    return {k: v for k, v in os.environ.items() if k in keep}


def test_the_cli_reference_is_what_argparse_prints_with_the_local_defaults():
    printed = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "streamflow.cli_reference"],
        cwd=ROOT,
        env=_local_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert cli_reference.generated_part(page) == printed, (
        "regenerate it: python -m streamflow.cli_reference --write (with no STREAMFLOW_*, POSTGRES_* "
        "or KAFKA_* variable set)"
    )
    for command in cli_reference.COMMANDS:  # every command has its section
        assert f"### streamflow {command}\n" in page, command
        assert f"usage: streamflow {command}" in page, command


def test_the_readme_is_short_and_its_local_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert local, "the README links to the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_the_data_readme_lists_every_file_with_its_columns_in_header_order():
    from streamflow import schema

    readme = (ROOT / "data" / "README.md").read_text()
    for table in schema.TABLES:
        columns = ", ".join(f"`{name}`" for name in table.header)
        assert f"| `{table.file}` | {columns} |" in readme, table.file
