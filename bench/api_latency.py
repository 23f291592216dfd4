"""Latency of the online feature API at a steady request rate, against the floor.

    .venv/bin/python bench/api_latency.py                 # 200 req/s for 10 s
    .venv/bin/python bench/api_latency.py --rate 400 --duration 20 --workers 2

What it does, in one run:

1. Applies the Feast definitions to the configured database (POSTGRES_*, FEAST_PROJECT;
   default the demo's ``streamflow``; idempotent) and reuses the users it has online; if it
   has none, generates ``--load-users`` users, loads both snapshots and materializes them.
2. Starts ``python -m api.main`` (uvicorn) in a subprocess on a free port of 127.0.0.1 and
   waits for ``GET /ready``.
3. Sends ``GET /features/{user_id}`` for random known users at a steady (open-loop) rate from
   keep-alive client threads: request i is due at t0 + i/rate. Latency is measured from the
   moment a request was *due* (so a slow answer that delays the next ones is counted, no
   coordinated omission), and also from the moment it was sent.
4. Stops the server, then measures in this process, on the same users:
   the floor, a plain SQL lookup of the same rows (psycopg, one SELECT over the views' online
   tables, prepared, one connection); the API's read path without HTTP
   (``FeatureReader.lookup``); and Feast's ``get_online_features`` for reference.
5. Prints a markdown table and writes JSON to bench/results/api_latency.json.

The client, the server and PostgreSQL share the machine's cores: the figures include that.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamflow import config, schema  # noqa: E402  (fills in the default environment)

RESULTS = REPO / "bench" / "results" / "api_latency.json"


# --- data ----------------------------------------------------------------------------------------


def online_table(view: str) -> str:
    from streamflow.feast_stores.online import table_name

    return table_name(os.environ["FEAST_PROJECT"], view)


def online_users(limit: int) -> list[str]:
    """Ids of users that have a row in the online table of every feature view of the service."""
    import psycopg
    from feast.infra.key_encoding_utils import deserialize_entity_key

    views = [t.feature_view for t in schema.FEATURE_TABLES]
    first, rest = views[0], views[1:]
    joins = " ".join(f'JOIN "{online_table(v)}" USING (entity_key)' for v in rest)
    with psycopg.connect(config.postgres().conninfo, connect_timeout=5) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f'"{online_table(first)}"',)).fetchone()[0]
        if exists is None:
            return []
        rows = conn.execute(
            f'SELECT entity_key FROM "{online_table(first)}" {joins} ORDER BY random() LIMIT %s', (limit,)
        ).fetchall()
    return [deserialize_entity_key(bytes(k), entity_key_serialization_version=3).entity_values[0].string_val
            for (k,) in rows]


def load_data(users: int) -> None:
    from streamflow.batch.load import load_snapshot
    from streamflow.datagen.generate import generate
    from streamflow.online import materialize

    print(f"no users online in {config.postgres().describe()} project {os.environ['FEAST_PROJECT']}: "
          f"loading {users} generated users", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for folder in generate(Path(tmp), users=users, progress=False).values():
            load_snapshot(folder)
    materialize(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))


# --- the server ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, workers: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "api.main", "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(workers), "--log-level", "WARNING"],
        cwd=REPO, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
    )


def wait_ready(proc: subprocess.Popen, port: int, timeout: float, log_path: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the API exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"the API was not ready within {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def server_buckets(port: int) -> dict[str, float]:
    """The server's own latency histogram of GET /features/{user_id} (200s): count per bound."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    buckets = {}
    for line in text.splitlines():
        if (line.startswith("streamflow_api_request_duration_seconds_bucket{")
                and 'route="/features/{user_id}"' in line and 'status="200"' in line):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def server_histogram(before: dict[str, float], after: dict[str, float]) -> dict:
    """Share of the measured requests the server answered within each bound (its own timing)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta.get("+Inf", 0.0)
    shares = {f"<= {float(le) * 1000:g} ms": round(n / total, 4) for le, n in delta.items() if le != "+Inf" and total}
    return {**shares, "requests": int(total)}


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the load ------------------------------------------------------------------------------------


def steady_load(port: int, users: list[str], rate: float, count: int, threads: int, seed: int) -> dict:
    """Open-loop load: request i is due at t0 + i / rate; returns latencies and statuses."""
    rng = random.Random(seed)
    paths = [f"/features/{rng.choice(users)}" for _ in range(count)]
    due_latency = [0.0] * count
    sent_latency = [0.0] * count
    statuses = [0] * count
    finished = [0.0] * count
    t0 = time.perf_counter() + 0.2

    def worker(j: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(j, count, threads):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            try:
                conn.request("GET", paths[i])
                resp = conn.getresponse()
                resp.read()
                statuses[i] = resp.status
            except (OSError, http.client.HTTPException):
                statuses[i] = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            end = time.perf_counter()
            due_latency[i] = end - due
            sent_latency[i] = end - sent
            finished[i] = end
        conn.close()

    pool = [threading.Thread(target=worker, args=(j,), daemon=True) for j in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = max(finished) - t0
    by_status: dict[str, int] = {}
    for s in statuses:
        by_status[str(s)] = by_status.get(str(s), 0) + 1
    ok = [d for d, s in zip(due_latency, statuses) if s == 200]
    return {
        "requests": count,
        "statuses": by_status,
        "target_rate": rate,
        "achieved_rate": round(count / elapsed, 1),
        "seconds": round(elapsed, 2),
        "latency_ms": summary(ok),
        "latency_from_send_ms": summary([d for d, s in zip(sent_latency, statuses) if s == 200]),
    }


# --- in-process references -----------------------------------------------------------------------


def timed(fn, items: list, pace: float | None = None) -> list[float]:
    out = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - started)
        if pace:
            time.sleep(max(0.0, pace - (time.perf_counter() - started)))
    return out


def sql_floor(users: list[str], count: int, seed: int, pace: float | None) -> dict:
    """One SELECT over the service's online tables per user: the least any lookup can cost."""
    import psycopg
    from feast.infra.key_encoding_utils import serialize_entity_key

    from api.features import entity_key

    views = [t.feature_view for t in schema.FEATURE_TABLES]
    query = " UNION ALL ".join(
        f'SELECT {i}::int2, names, vals, event_ts FROM "{online_table(v)}" WHERE entity_key = %(key)s'
        for i, v in enumerate(views)
    )
    rng = random.Random(seed)
    keys = [serialize_entity_key(entity_key(rng.choice(users)), entity_key_serialization_version=3)
            for _ in range(count)]
    with psycopg.connect(config.postgres().conninfo, autocommit=True, prepare_threshold=0) as conn:
        def lookup(key):
            rows = conn.execute(query, {"key": key}).fetchall()
            assert len(rows) == len(views)

        timed(lookup, keys[:50])  # warm-up
        return {"lookups": count, "latency_ms": summary(timed(lookup, keys, pace))}


def reader_path(users: list[str], count: int, seed: int, pace: float | None) -> dict:
    """The API's read path in-process: catalog, one multi-view read, decoding (no HTTP)."""
    from api.features import FeatureReader

    reader = FeatureReader()
    reader.start()
    try:
        rng = random.Random(seed)
        picks = [rng.choice(users) for _ in range(count)]
        timed(lambda u: reader.lookup([u]), picks[:50])
        return {"lookups": count, "latency_ms": summary(timed(lambda u: reader.lookup([u]), picks, pace))}
    finally:
        reader.stop()


def feast_reference(users: list[str], count: int, seed: int) -> dict:
    """Feast's own get_online_features with the feature service (registry cache on)."""
    from streamflow.feature_store import get_store

    store = get_store()
    service = store.get_feature_service(schema.FEATURE_SERVICE, allow_cache=True)
    rng = random.Random(seed)
    picks = [rng.choice(users) for _ in range(count)]

    def lookup(u):
        store.get_online_features(features=service, entity_rows=[{schema.KEY: u}]).to_dict()

    timed(lookup, picks[:10])
    return {"lookups": count, "latency_ms": summary(timed(lookup, picks))}


# --- report --------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summary(seconds: list[float]) -> dict:
    v = sorted(seconds)
    if not v:
        return {"n": 0}
    ms = lambda x: round(x * 1000, 3)  # noqa: E731
    return {"n": len(v), "p50": ms(percentile(v, 50)), "p95": ms(percentile(v, 95)),
            "p99": ms(percentile(v, 99)), "max": ms(v[-1]), "mean": ms(statistics.fmean(v))}


def table(result: dict) -> str:
    rows = [
        ("API `GET /features/{user_id}` (from due time)", result["api"]["latency_ms"], result["api"]["achieved_rate"]),
        ("API `GET /features/{user_id}` (from send)", result["api"]["latency_from_send_ms"], result["api"]["achieved_rate"]),
        ("floor: plain SQL, one SELECT over the 5 online tables", result["sql_floor"]["latency_ms"], None),
        ("API read path in-process (FeatureReader.lookup, no HTTP)", result["reader"]["latency_ms"], None),
        ("Feast `get_online_features` in-process (reference)", result["feast"]["latency_ms"], None),
    ]
    out = ["| path | n | p50 ms | p95 ms | p99 ms | max ms | rate req/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s, rate in rows:
        if not s.get("n"):
            continue
        out.append(f"| {name} | {s['n']} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | "
                   f"{'' if rate is None else rate} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of steady load (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--threads", type=int, default=8, help="client threads (keep-alive connections)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--users", type=int, default=1000, help="distinct users to ask for")
    parser.add_argument("--load-users", type=int, default=2000, help="users to generate when none are online")
    parser.add_argument("--floor-lookups", type=int, default=2000)
    parser.add_argument("--feast-lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from streamflow.feature_store import apply

    apply()  # idempotent: the registry and the online tables in their current layout
    users = online_users(args.users)
    if not users:
        load_data(args.load_users)
        users = online_users(args.users)
    if not users:
        raise SystemExit("no users online after loading; see the errors above")

    count = int(args.rate * args.duration)
    load_before = os.getloadavg()
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"streamflow-api-bench-{port}.log"
    proc = start_server(port, args.workers, log_path)
    try:
        startup = wait_ready(proc, port, 180, log_path)
        if args.warmup > 0:
            steady_load(port, users, args.rate, int(args.rate * args.warmup), args.threads, args.seed + 1)
        before = server_buckets(port)
        api = steady_load(port, users, args.rate, count, args.threads, args.seed)
        api["server_histogram"] = server_histogram(before, server_buckets(port))
    finally:
        stop_server(proc)
    load_after = os.getloadavg()

    pace = 1.0 / args.rate
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after_api": [round(x, 2) for x in load_after]},
        "database": config.postgres().describe(),
        "feast_project": os.environ["FEAST_PROJECT"],
        "users_asked": len(users),
        "server": {"workers": args.workers, "startup_seconds": round(startup, 1)},
        "client": {"threads": args.threads, "warmup_seconds": args.warmup},
        "api": api,
        "sql_floor": sql_floor(users, args.floor_lookups, args.seed, pace),
        "reader": reader_path(users, args.floor_lookups, args.seed, pace),
        "feast": feast_reference(users, args.feast_lookups, args.seed),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{count} x GET /features/{{user_id}} at {args.rate:g} req/s target, "
          f"{api['achieved_rate']} achieved; statuses {api['statuses']}; "
          f"{args.workers} uvicorn worker(s), {os.cpu_count()} CPUs; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f} (other processes share the CPUs)\n")
    print(table(result))
    hist = api["server_histogram"]
    print("\nserver-side, its own histogram of the measured requests: "
          + ", ".join(f"{hist[k] * 100:.1f}% {k}" for k in ("<= 5 ms", "<= 10 ms", "<= 25 ms") if k in hist))
    print(f"\nwritten to {args.out}")
    bad = sum(n for s, n in api["statuses"].items() if s != "200")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
