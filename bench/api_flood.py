"""API under a flood: do other clients' lookups keep their latency while large requests pour in?

    .venv/bin/python -m bench.run --only api_flood
    .venv/bin/python -m bench.api_flood [--seconds 8]

N users (default 7,043, seed 42) are loaded and materialized first (not timed); then one
``streamflow api`` process (1 worker). The victims: 5 keep-alive clients, each asking
``GET /features/<user>`` for a random user 20 times a second (100 req/s in all). Their latency is
measured twice, ``--seconds`` each:

* alone (the baseline);
* while 4 flooders send ``POST /features`` with 1,000 user ids each as fast as they can, and one
  more sends 50 MB bodies over and over (answered 413 before they are read).

The flooders run in a process of their own, so that the victims' latencies are the server's and
not the wait for the client process's own interpreter lock (reading the flood's 1 MB answers).

Reported: the victims' p50 and p99 in both phases, their non-200 answers, and the flooders'
answers by status (200, 413, and 503 from the bounded lookup queue). All of it shares the
machine's cores with the server and PostgreSQL.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import threading
import time
from collections import Counter

from bench import (
    common,  # noqa: I001  (first: sets the benchmark environment)
    verify,
)
from streamflow.net import free_port
from streamflow.subprocesses import stop_process

NAME = "api_flood"
DEFAULT_USERS = 7043
VICTIMS, VICTIM_RATE = 5, 20.0
FLOODERS, FLOOD_IDS = 4, 1000
HUGE_BYTES = 50 * 1024 * 1024


def _start_api(port: int, user: str) -> subprocess.Popen:
    env = {**os.environ, "STREAMFLOW_LOG_LEVEL": "WARNING", "STREAMFLOW_NO_PROGRESS": "1"}
    proc = subprocess.Popen(
        [*common.cli(), "api", "--port", str(port), "--workers", "1"],
        cwd=common.REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamflow api exited {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", f"/features/{user}")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("streamflow api: no 200 within 120 s")


def _victim(port: int, users: list[str], until: float, out: list[float], bad: Counter) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    pace, next_at = 1.0 / VICTIM_RATE, time.monotonic()
    while next_at < until:
        time.sleep(max(0.0, next_at - time.monotonic()))
        started = time.perf_counter()
        try:
            conn.request("GET", f"/features/{random.choice(users)}")
            response = conn.getresponse()
            response.read()
            out.append(time.perf_counter() - started)
            if response.status != 200:
                bad[response.status] += 1
        except OSError as exc:
            bad[type(exc).__name__] += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        next_at += pace


def _flooder(port: int, users: list[str], until: float, answers: Counter) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"user_ids": random.sample(users, min(FLOOD_IDS, len(users)))})
    while time.monotonic() < until:
        try:
            conn.request("POST", "/features", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            answers[response.status] += 1
        except OSError as exc:
            answers[type(exc).__name__] += 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)


def _huge(port: int, until: float, answers: Counter) -> None:
    payload = b"x" * HUGE_BYTES
    while time.monotonic() < until:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.putrequest("POST", "/features")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(payload)))
            conn.endheaders()
            try:
                conn.send(payload)
            except OSError:
                pass  # the server answered and closed before taking 50 MB
            response = conn.getresponse()
            response.read()
            answers[response.status] += 1
        except OSError as exc:
            answers[type(exc).__name__] += 1
        finally:
            conn.close()


def _flood(port: int, users: list[str], until: float, results) -> None:
    """The flooders and the huge-body sender, as threads of one process; their answers to ``results``."""
    answers: Counter = Counter()
    threads = [threading.Thread(target=_flooder, args=(port, users, until, answers)) for _ in range(FLOODERS)]
    threads.append(threading.Thread(target=_huge, args=(port, until, answers)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(dict(answers))


def _phase(port: int, users: list[str], seconds: float, flood: bool) -> dict:
    import multiprocessing

    until = time.monotonic() + seconds  # (monotonic: the same clock in a forked process)
    latencies: list[list[float]] = [[] for _ in range(VICTIMS)]
    bad: Counter = Counter()
    flood_answers: Counter = Counter()
    threads = [
        threading.Thread(target=_victim, args=(port, users, until, latencies[i], bad)) for i in range(VICTIMS)
    ]
    flooders = None
    if flood:
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        flooders = context.Process(target=_flood, args=(port, users, until, results))
        flooders.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if flooders is not None:
        flood_answers.update(results.get(timeout=120))
        flooders.join(timeout=30)
    everyone = sorted(x for lat in latencies for x in lat)
    q = statistics.quantiles(everyone, n=100) if len(everyone) > 1 else [float("nan")] * 99
    return {
        "victim_requests": len(everyone),
        "victim_p50_ms": q[49] * 1000,
        "victim_p99_ms": q[98] * 1000,
        "victim_not_200": dict(bad),
        "flood_answers": {str(k): v for k, v in flood_answers.items()},
    }


def run(args) -> dict:
    users_count = getattr(args, "flood_users", None) or DEFAULT_USERS
    seconds = getattr(args, "flood_seconds", None) or 8.0
    verify.prepare(users_count)  # both months loaded and materialized online
    with common.connect() as conn:
        users = [r[0] for r in conn.execute("SELECT DISTINCT user_id FROM users_snapshots")]
    port = free_port()
    proc = _start_api(port, users[0])
    try:
        alone = _phase(port, users, seconds, flood=False)
        flooded = _phase(port, users, seconds, flood=True)
    finally:
        stop_process(proc)
    for name, r in (("alone", alone), ("flooded", flooded)):
        common.say(
            f"  {name}: victims p50 {r['victim_p50_ms']:.1f} ms, p99 {r['victim_p99_ms']:.1f} ms, "
            f"{r['victim_requests']} requests, not 200: {r['victim_not_200']}; flood: {r['flood_answers']}"
        )
    rows = [
        common.row(
            "5c API under a flood",
            f"victims' p99 ms ({VICTIMS} clients, {VICTIMS * VICTIM_RATE:g} req/s of GET /features/<user>): "
            f"ours under {FLOODERS} flooders of {FLOOD_IDS}-id POSTs and 50 MB bodies; baseline: alone",
            flooded["victim_p99_ms"],
            alone["victim_p99_ms"],
            "ms",
            higher_is_better=False,
            note=f"flood answers {flooded['flood_answers']}; victims' non-200 {flooded['victim_not_200']}",
        )
    ]
    return {
        "rows": rows,
        "details": {
            "users": users_count,
            "seconds": seconds,
            "alone": alone,
            "flooded": flooded,
            "method": __doc__.split("\n\n")[1].replace("\n", " ").strip(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_flood", description=__doc__.splitlines()[0])
    parser.add_argument("--users", dest="flood_users", type=int, default=DEFAULT_USERS)
    parser.add_argument("--seconds", dest="flood_seconds", type=float, default=8.0)
    result = run(parser.parse_args(argv))
    print(json.dumps(result["details"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
