"""7. Scale (``--scale`` only): 1,000,000 users through the real CLI, stage by stage.

Each stage runs as its own process of ``.venv/bin/streamflow`` (generate, apply, load both months,
produce both months, consume until drained, training set for 2024-01-31), one after the other, in
the benchmarks' database and topics. Wall time per stage, and the peak RSS of that process
(``os.wait4``'s ``ru_maxrss``, the stage's own process; no stage forks workers). The consumer's
peak must stay under 1 GiB. Logs go to bench/results/scale_<stage>.log.
"""

from __future__ import annotations

from bench import common  # noqa: I001  (first: sets the benchmark environment)

import os
import subprocess
import sys
import time
import uuid

NAME = "scale"
STAGE_TIMEOUT = 4 * 3600  # seconds; a stage past this is killed (bounded, even at scale)


def cli() -> list[str]:
    exe = common.REPO / ".venv" / "bin" / "streamflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "streamflow.cli"]


def stage(name: str, argv: list[str]) -> dict:
    log_path = common.RESULTS / f"scale_{name}.log"
    env = {**os.environ, "STREAMFLOW_LOG_LEVEL": "INFO", "STREAMFLOW_NO_PROGRESS": "1"}
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cli() + argv, cwd=common.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > STAGE_TIMEOUT:
                proc.kill()
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
    seconds = time.perf_counter() - started
    rss_mib = usage.ru_maxrss / 1024  # Linux: KiB
    common.say(f"  {name:13} {seconds:8.1f} s  peak RSS {rss_mib:7.0f} MiB  exit {proc.returncode}")
    return {"seconds": seconds, "peak_rss_mib": rss_mib, "exit": proc.returncode, "log": str(log_path)}


def run(args) -> dict:
    users = args.scale_users
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    common.use_topics("scale")
    data = common.data_dir() / f"scale_{users}"
    months = [str(data / "month_000"), str(data / "month_001")]
    stages = [
        ("generate", ["generate", "--users", str(users), "--out", str(data), "--no-progress"]),
        ("apply", ["apply"]),
        ("load", ["load", *months]),
        ("produce", ["produce", "--snapshots", *months, "--no-progress"]),
        ("consume", ["consume", "--group", f"bench-scale-{uuid.uuid4().hex[:8]}", "--until-drained",
                     "--max-idle", "300"]),
        ("training-set", ["training-set", "--as-of", "2024-01-31", "--out", str(data / "training.parquet")]),
    ]
    results = {}
    for name, argv in stages:
        results[name] = stage(name, argv)
        if results[name]["exit"] != 0:
            common.say(f"  {name} failed (exit {results[name]['exit']}); see {results[name]['log']}")
            break
    events = users * 12  # 6 tables x 2 months
    rows = []
    for name, r in results.items():
        per_s = f" ({common.rate(events, r['seconds']):,.0f} events/s)" if name in ("produce", "consume") else ""
        goal, met = ("< 1 GiB peak RSS", r["peak_rss_mib"] < 1024) if name == "consume" else ("", None)
        rows.append(common.row("7 scale", f"{users:,} users: {name}, wall s; peak RSS {r['peak_rss_mib']:,.0f} MiB"
                               + per_s + ("" if r["exit"] == 0 else f" — FAILED, exit {r['exit']}"),
                               r["seconds"], None, "s", goal, met if r["exit"] == 0 else False))
    return {"rows": rows, "details": {"users": users, "events": events, "stages": results,
                                      "method": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip()}}
