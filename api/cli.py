"""`streamflow api`: serve the online feature API with uvicorn.

    streamflow api [--host 127.0.0.1] [--port 8000] [--workers N]

Workers: one by default. A worker is one event loop; a lookup costs about 0.25 ms of it, so
one worker serves about 4,000 lookups/s at saturation (bench/api_load.py). ``--workers N``
(0: one per CPU core) shares one port between N processes, but each keeps its own Prometheus
counters, lag sampler and dead-letter tally, and a scrape or a dashboard refresh reaches any
one of them. To use more cores, run one API process per core, each on its own port behind
the load balancer and each its own Prometheus target (docs/how-to/scaling.md).

Every flag falls back to an environment variable (STREAMFLOW_API_HOST, STREAMFLOW_API_PORT,
STREAMFLOW_API_WORKERS, STREAMFLOW_LOG_LEVEL); PostgreSQL and Feast come from the usual
POSTGRES_* and FEAST_PROJECT variables (streamflow.config). The API connects as its read-only role
(POSTGRES_API_USER, POSTGRES_API_PASSWORD; streamflow.db_roles) and stops at once, with one line
saying to run `streamflow apply`, when that role cannot log in or lacks a grant.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from streamflow import config, db_roles, logs
from streamflow.errors import ServiceUnavailable, StreamflowError

log = logging.getLogger("api")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of workers: {text!r}") from None
    if workers < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (one per CPU core) or more: {workers}")
    return workers


def build_parser() -> argparse.ArgumentParser:
    env = config.settings().api
    parser = argparse.ArgumentParser(prog="streamflow api", description="Serve the online feature API.")
    parser.add_argument(
        "--host", default=env.host, help="address to listen on (env STREAMFLOW_API_HOST; default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=env.port,
        help="port to listen on (env STREAMFLOW_API_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=env.workers,
        help="worker processes (env STREAMFLOW_API_WORKERS, 0: one per CPU core; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=logs.configured_level("INFO"),
        help="log level (env STREAMFLOW_LOG_LEVEL; default %(default)s)",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request (costs latency)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workers = config.settings().api.worker_count(args.workers)  # 0: one per CPU core
    config.use_role("api")  # this process and its workers read as the API's role (streamflow.db_roles)
    logs.setup(args.log_level)
    # No garbage collection while the server imports and starts (the objects it creates live on):
    # the app's start-up collects once, freezes what is alive, and turns it back on (api.app).
    if workers == 1:  # (several: this process only supervises them)
        gc.disable()
    try:
        db_roles.check_ready("the API")
    except ServiceUnavailable as exc:  # the API starts anyway: /ready answers 503 until PostgreSQL does
        log.warning("%s", exc)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    import uvicorn

    uvicorn.run(
        "api.app:create_server_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=workers,
        log_level=args.log_level.lower(),
        log_config=None,  # keep streamflow.logs' format
        access_log=args.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
