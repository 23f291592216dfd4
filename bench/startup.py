"""9. Start-up: how long a cold process takes, for the commands users start often, against Feast's own.

N users (default 7,043, seed 42) are loaded and materialized first (not timed). Then each command
runs as a fresh process, ``RUNS`` times, and the median wall time is reported (interpreter start,
imports and the work included):

* ``python -c "import feast"`` (the stock import, typeguard's instrumentation included) and
  ``python -c "import streamflow, feast"`` (Feast imported through streamflow.feast_without_typeguard);
* ``feast feature-views list`` in ``feature_repo/`` (Feast's own CLI, the baseline of the commands);
* ``streamflow lookup <user>`` (goal < 1 s) and ``streamflow training-set --as-of 2024-02-29``
  (goal < 2.5 s), both against ``feast feature-views list``;
* ``streamflow api``: from the process start to the first 200 of ``GET /features/<user>``, polled
  every 20 ms (goal < 2 s);
* ``streamflow consume``: from the process start to its first batch written (its first 'wrote'
  log line), month_000 replayed into fresh topics first (goal < 3 s).

    .venv/bin/python -m bench.startup [--users N]
    .venv/bin/python -m bench.run --only startup
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

from bench import (
    common,  # noqa: I001  (first: sets the benchmark environment)
    consumer_processes,
    verify,
)
from bench.consumer_e2e import produce
from streamflow.net import free_port
from streamflow.subprocesses import stop_process

NAME = "startup"
RUNS = 3
DEFAULT_USERS = 7043
GOALS = {"lookup": 1.0, "training_set": 2.5, "api": 2.0, "consumer": 3.0}


def _env() -> dict[str, str]:
    return {**os.environ, "STREAMFLOW_NO_PROGRESS": "1", "STREAMFLOW_LOG_LEVEL": "WARNING"}


def wall(argv: list[str], cwd=None) -> float:
    """Seconds from the start of a process to its exit (which must be 0)."""
    started = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd or common.REPO, env=_env(), capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return seconds


def median(measure, runs: int = RUNS) -> dict:
    times = [measure() for _ in range(runs)]
    return {"median": statistics.median(times), "runs": times}


def api_first_200(user: str) -> float:
    """Seconds from ``streamflow api``'s start to its first 200 for one user's features."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/features/{user}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*common.cli(), "api", "--port", str(port), "--workers", "1"],
        cwd=common.REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while time.perf_counter() - started < 120:
            if proc.poll() is not None:
                raise RuntimeError(f"streamflow api exited {proc.returncode}: {proc.stderr.read()[-800:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # not listening yet, or 503 until its catalog is loaded
            time.sleep(0.02)
        raise RuntimeError("streamflow api: no 200 within 120 s")
    finally:
        stop_process(proc)


def run(args) -> dict:
    users = getattr(args, "startup_users", None) or DEFAULT_USERS
    verify.prepare(users)  # both months loaded, materialized online
    with common.connect() as conn:  # a user of the generated data
        user = conn.execute("SELECT min(user_id) FROM users_snapshots").fetchone()[0]
    py = sys.executable
    results = {
        "import_feast": median(lambda: wall([py, "-c", "import feast"])),
        "import_streamflow_feast": median(lambda: wall([py, "-c", "import streamflow, feast"])),
        "feast_feature_views_list": median(
            lambda: wall(
                [str(common.REPO / ".venv" / "bin" / "feast"), "feature-views", "list"],
                cwd=common.REPO / "feature_repo",
            )
        ),
        "lookup": median(lambda: wall([*common.cli(), "lookup", user])),
        "training_set": median(
            lambda: wall(
                [
                    *common.cli(),
                    "training-set",
                    "--as-of",
                    "2024-02-29",
                    "--out",
                    str(common.data_dir() / "t.parquet"),
                ]
            )
        ),
        "api": median(lambda: api_first_200(user)),
    }
    common.use_topics("startup")
    events = produce(common.snapshots(users)["month_000"])
    common.say(f"  produced {events:,} events for the consumer (not timed)")
    consumer_runs = []
    for _ in range(RUNS):
        common.reset()
        consumer_runs.append(
            consumer_processes.consume(1, getattr(args, "batch", 5000))["first_write_seconds"]
        )
    results["consumer"] = {"median": statistics.median(consumer_runs), "runs": consumer_runs}
    for name, r in results.items():
        common.say(f"  {name}: median {r['median']:.2f} s ({', '.join(f'{t:.2f}' for t in r['runs'])})")
    feast_cli = results["feast_feature_views_list"]["median"]

    def goal_row(name: str, measure: str, baseline: float | None, base_name: str) -> dict:
        ours = results[name]["median"]
        return common.row(
            "9 start-up",
            f"{measure}: median wall s of {RUNS} cold processes (baseline: {base_name})",
            ours,
            baseline,
            "s",
            f"< {GOALS[name]:g} s",
            ours < GOALS[name],
            higher_is_better=False,
        )

    rows = [
        common.row(
            "9 start-up",
            f"import Feast: median wall s of {RUNS} processes "
            "(ours: through streamflow; baseline: import feast)",
            results["import_streamflow_feast"]["median"],
            results["import_feast"]["median"],
            "s",
            higher_is_better=False,
        ),
        goal_row("lookup", "streamflow lookup, one user", feast_cli, "feast feature-views list"),
        goal_row(
            "training_set", f"streamflow training-set, {users:,} users", feast_cli, "feast feature-views list"
        ),
        goal_row("api", "streamflow api, start → first 200", feast_cli, "feast feature-views list"),
        goal_row(
            "consumer",
            "streamflow consume, start → first batch written",
            feast_cli,
            "feast feature-views list",
        ),
    ]
    return {
        "rows": rows,
        "details": {
            "users": users,
            "runs": results,
            "events": events,
            "method": __doc__.split("\n\n")[1].replace("\n", " ").strip(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--users", dest="startup_users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args(argv)
    common.ensure_database()
    common.quiet_warnings()
    try:
        result = run(args)
    finally:
        common.delete_run_topics()
        common.remove_data()
    for row in result["rows"]:
        print(f"{row['measure']}: {row['ours']:,.2f} {row['unit']} (baseline {row['baseline']:,.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
