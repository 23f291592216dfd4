"""`streamflow apply`: create the warehouse tables, register the Feast objects, and create the
consumer's and the API's least-privilege database roles with their grants."""

from __future__ import annotations

import argparse
import logging

from streamflow import config, logs
from streamflow.errors import StreamflowError
from streamflow.feature_store import apply

log = logging.getLogger("streamflow.apply")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="streamflow apply", description=__doc__).parse_args(argv)
    config.use_role("owner")  # tables, registry and roles are the owner's work
    logs.setup()
    try:
        names = apply()
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    print(f"registered: {', '.join(names)}")
    return 0
