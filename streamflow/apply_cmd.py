"""`streamflow apply`: create the warehouse tables and register the Feast objects."""

from __future__ import annotations

import argparse
import logging

from streamflow import logs
from streamflow.errors import StreamflowError
from streamflow.feature_store import apply

log = logging.getLogger("streamflow.apply")


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="streamflow apply", description=__doc__).parse_args(argv)
    logs.setup()
    try:
        names = apply()
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    print(f"registered: {', '.join(names)}")
    return 0
