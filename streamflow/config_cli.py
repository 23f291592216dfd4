"""`streamflow config`: the settings in effect, and the configuration reference's table.

    streamflow config [--json | --markdown]
    python -m streamflow.config_cli --markdown    # the table of docs/reference/configuration.md

Each setting with its value (secrets masked), its variable and whether it comes from the
environment or is the default; ``--markdown`` prints every variable with its default and meaning,
which ``tests/test_settings.py`` checks against the page.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from streamflow.config import REPO_ROOT, SECRET_MASK, ConfigError, Settings, settings, source, variables


def _value(value: Any) -> Any:
    """A value as JSON has it: secrets masked, paths as text."""
    if isinstance(value, SecretStr):
        return SECRET_MASK
    if isinstance(value, Path):
        return str(value)
    return value


def _text(value: Any) -> str:
    value = _value(value)
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def effective(current: Settings | None = None) -> list[dict[str, Any]]:
    """Every setting in effect: name, value (secrets masked), variable and source."""
    current = current or settings()
    return [
        {
            "setting": v.setting,
            "value": _value(getattr(getattr(current, v.group), v.field)),
            "variable": v.name,
            "source": source(v.name),
        }
        for v in variables()
    ]


def render_text(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["setting"]) for r in rows)
    values = [_text(r["value"]) for r in rows]
    value_width = max(len(v) for v in values)
    var_width = max(len(r["variable"]) for r in rows)
    return "".join(
        f"{r['setting']:<{width}} = {value:<{value_width}}  {r['variable']:<{var_width}}  {r['source']}\n"
        for r, value in zip(rows, values)
    )


def markdown_default(value: Any) -> str:
    """A default as the configuration reference shows it (paths relative to the repository)."""
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif isinstance(value, Path) and value.is_relative_to(REPO_ROOT):
        value = f"<repo>/{value.relative_to(REPO_ROOT)}"
    return f"`{_text(value)}`"


def markdown_table() -> str:
    """The configuration reference table: variable | default | meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {markdown_default(v.default)} | {v.description} |" for v in variables()]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamflow config",
        description="Print the settings in effect: value, variable and whether it "
        "comes from the environment or is the default (secrets masked).",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--json", action="store_true", help="one JSON object: setting -> value, variable, source"
    )
    out.add_argument(
        "--markdown",
        action="store_true",
        help="print the table of variables (variable | default | meaning) of docs/reference/configuration.md",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    rows = effective()
    if args.json:
        doc = {r["setting"]: {k: r[k] for k in ("value", "variable", "source")} for r in rows}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(rows))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
