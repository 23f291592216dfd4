"""8. Parity check: ``streamflow verify --snapshot-dir month_001`` over N generated users.

Generates N users (default 7,043, seed 42), loads both months (batch load), materializes them
online, then runs ``streamflow verify --snapshot-dir <month_001> --json`` as its own process (peak
RSS read as in bench/scale.py: ``ru_maxrss`` through ``common.PEAK_RSS``, a small forking
wrapper). Reported: the process's wall time (interpreter start included) and users/s, the time
verify itself reports, and the peak RSS. Goal: 7,043 users in under 5 s; the design goal
(1,000,000 users in under 2 minutes, memory flat in the users) is not run by default.

    .venv/bin/python -m bench.verify [--users N]
    .venv/bin/python -m bench.run --only verify [--verify-users N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import (
    common,  # noqa: I001  (first: sets the benchmark environment)
)

NAME = "verify"
DEFAULT_USERS = 7043
GOAL_SECONDS = 5.0
"""Wall time goal at DEFAULT_USERS users."""


def prepare(users: int) -> Path:
    """Both months of ``users`` users loaded and materialized, in emptied stores (the benchmarks
    before it in a run leave their users online, which verify rightly reports as "only online");
    returns the month_001 folder."""
    common.reset()
    folders = common.snapshots(users)
    common.load_warehouse(users)
    started = time.perf_counter()
    common.our_store().materialize(
        start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), end_date=datetime.now(timezone.utc)
    )
    common.say(f"  materialized {users:,} users in {time.perf_counter() - started:.1f} s")
    return folders["month_001"]


def measure(snapshot: Path) -> dict:
    """One ``streamflow verify`` process: wall s, peak RSS MiB, exit code, its JSON report."""
    rss_path = common.data_dir() / "peak_rss_verify"
    rss_path.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-S",
        "-c",
        common.PEAK_RSS,
        str(rss_path),
        *common.cli(),
        "verify",
        "--snapshot-dir",
        str(snapshot),
        "--json",
    ]
    env = {**os.environ, "STREAMFLOW_NO_PROGRESS": "1", "STREAMFLOW_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=common.REPO, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    rss_mib = int(rss_path.read_text()) / 1024 if rss_path.exists() else float("nan")  # Linux: KiB
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {}
    if proc.returncode != 0:
        common.say(f"  verify exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return {"seconds": seconds, "peak_rss_mib": rss_mib, "exit": proc.returncode, "report": report}


def run(args) -> dict:
    users = getattr(args, "verify_users", None) or DEFAULT_USERS
    snapshot = prepare(users)
    r = measure(snapshot)
    report = r["report"]
    inner = report.get("seconds", float("nan"))
    common.say(
        f"  verify {users:,} users: {r['seconds']:.2f} s wall ({inner:.2f} s inside), "
        f"{common.rate(users, r['seconds']):,.0f} users/s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
        f"exit {r['exit']}, {report.get('mismatches')} mismatches"
    )
    ok = r["exit"] == 0 and report.get("ok") is True and report.get("users") == users
    goal = f"< {GOAL_SECONDS:g} s at {DEFAULT_USERS:,} users" if users == DEFAULT_USERS else ""
    rows = [
        common.row(
            "8 verify",
            f"{users:,} users, 6 views, with the snapshot: wall s (process)"
            + ("" if ok else f" — FAILED, exit {r['exit']}"),
            r["seconds"],
            None,
            "s",
            goal,
            (r["seconds"] < GOAL_SECONDS and ok) if goal else None,
            higher_is_better=False,
        ),
        common.row(
            "8 verify",
            f"{users:,} users: users/s (process wall)",
            common.rate(users, r["seconds"]),
            None,
            "users/s",
        ),
        common.row(
            "8 verify",
            f"{users:,} users: time verify reports (no interpreter start)",
            inner,
            None,
            "s",
            higher_is_better=False,
        ),
        common.row(
            "8 verify", f"{users:,} users: peak RSS", r["peak_rss_mib"], None, "MiB", higher_is_better=False
        ),
    ]
    return {
        "rows": rows,
        "details": {
            "users": users,
            "process": {k: v for k, v in r.items() if k != "report"},
            "views": {
                name: {k: v.get(k) for k in ("users", "mismatches", "rows_decoded", "seconds")}
                for name, v in report.get("views", {}).items()
            },
            "method": __doc__.split("\n\n")[1].replace("\n", " ").strip(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--users", dest="verify_users", type=int, default=DEFAULT_USERS)
    args = parser.parse_args(argv)
    common.ensure_database()
    common.quiet_warnings()
    try:
        result = run(args)
    finally:
        common.remove_data()
    for row in result["rows"]:
        print(f"{row['measure']}: {row['ours']:,.2f} {row['unit']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
