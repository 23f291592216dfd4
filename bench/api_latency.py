"""Latency of the online feature API at steady request rates, against `feast serve` and the floor.

    .venv/bin/python bench/api_latency.py                  # 200 and 1,000 req/s, 10 s each
    .venv/bin/python bench/api_latency.py --rates 400 --duration 20 --workers 2

What it does, in one run:

1. Applies the Feast definitions to the configured database (POSTGRES_*, FEAST_PROJECT;
   default the demo's ``streamflow``; idempotent) and reuses the users it has online; if it
   has none, generates ``--load-users`` users, loads both snapshots and materializes them.
2. Starts two HTTP servers on free ports of 127.0.0.1, one worker process each, and waits
   until both answer: ours, ``python -m api.cli`` (uvicorn), and the peer, ``feast serve``
   (Feast's own feature server, gunicorn + uvicorn worker) on the same feature repo and
   project, so it reads the same online tables through the same online store class. One
   request to each must return the same features of the churn feature service.
3. For each rate, one server after the other, with the other idle: a warm-up, then steady
   (open-loop) load from the same generator: request i is due at t0 + i/rate and is sent by
   the next free keep-alive client thread. Ours: ``GET /features/{user_id}``; the peer:
   ``POST /get-online-features`` with the feature service and one user. Latency is measured
   from the moment a request was *due* (a slow answer that delays the next ones is counted,
   no coordinated omission), and also from the moment it was sent. Errors: non-2xx answers,
   exceptions, timeouts; requests a server was too slow to get before the client gave up
   (3x the duration + 5 s) are counted apart as unsent. The CPU time each server's processes
   used per request is recorded too (it holds when other processes share the cores).
4. Stops both servers, then measures in this process, on the same users:
   the floor, a plain SQL lookup of the same rows (psycopg, one SELECT over the views' online
   tables, prepared, one connection); the API's read path without HTTP
   (``FeatureReader.lookup``); and Feast's ``get_online_features`` for reference.
5. Prints a markdown table and writes JSON to bench/results/api_latency.json.

The client, both servers and PostgreSQL share the machine's cores: the figures include that.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from streamflow import config, schema  # noqa: E402  (fills in the default environment)
from streamflow.net import free_port  # noqa: E402

RESULTS = REPO / "bench" / "results" / "api_latency.json"
FEAST_ENV = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_DB",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "FEAST_PROJECT",
    "STREAMFLOW_FEATURE_REPO",
)
"""StreamFlow's settings that our Feast classes read (and where the repo is): handed to `feast serve`
explicitly; the project also goes into the yaml it is given (-f), since Feast reads it there only."""


# --- data ----------------------------------------------------------------------------------------


def online_table(view: str) -> str:
    return schema.online_table(os.environ["FEAST_PROJECT"], view)


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
    return [
        deserialize_entity_key(bytes(k), entity_key_serialization_version=3).entity_values[0].string_val
        for (k,) in rows
    ]


def load_data(users: int) -> None:
    from streamflow.batch.load import load_snapshot
    from streamflow.datagen.generate import generate
    from streamflow.online_features import materialize

    print(
        f"no users online in {config.postgres().describe()} project {os.environ['FEAST_PROJECT']}: "
        f"loading {users} generated users",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for folder in generate(Path(tmp), users=users, progress=False).values():
            load_snapshot(folder)
    materialize(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc))


# --- the servers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None


@dataclass
class Server:
    """A server under load: its process, where it answers, and how to ask it for one user."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    ready_path: str
    request: Callable[[str], Request]
    command: list[str]
    env: dict[str, str]
    spawned: float = field(default_factory=time.perf_counter)


def api_request(user: str) -> Request:
    """What a client of our API sends for the whole churn feature service of one user."""
    return Request("GET", f"/features/{user}")


def feast_request(user: str) -> Request:
    """The same question to `feast serve`: the feature service by name, one user."""
    body = {"feature_service": schema.FEATURE_SERVICE, "entities": {schema.KEY: [user]}}
    return Request("POST", "/get-online-features", json.dumps(body).encode())


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A server in its own process group, so that stopping it also stops the workers it forked."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_api(port: int, workers: int, log_dir: Path) -> Server:
    command = [
        sys.executable,
        "-m",
        "api.cli",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "WARNING",
    ]
    log_path = log_dir / f"api-{port}.log"
    env = os.environ.copy()
    return Server("api", spawn(command, env, log_path), port, log_path, "/ready", api_request, command, env)


def feast_serve_env(runtime_dir: Path) -> dict[str, str]:
    """Exactly what `feast serve` gets: the settings our Feast classes read, our code on the path.

    XDG_RUNTIME_DIR gives gunicorn's control socket a private place (its default,
    ~/.gunicorn/gunicorn.ctl, would be shared with any other gunicorn of the same user)."""
    env = {k: os.environ[k] for k in FEAST_ENV if k in os.environ}
    env.update(
        PATH=os.environ.get("PATH", "/usr/bin:/bin"),
        HOME=os.environ.get("HOME", "/tmp"),
        PYTHONPATH=str(REPO),
        XDG_RUNTIME_DIR=str(runtime_dir),
        PYTHONUNBUFFERED="1",
    )
    return env


def start_feast_serve(port: int, workers: int, log_dir: Path) -> Server:
    """`feast serve` on our feature repo, tuned for the best it can do: no access log, and no
    worker restart every 1,000 requests (its default --max-requests, a restart a second at 1,000
    req/s)."""
    from streamflow.feature_store import feast_yaml

    feast_cli = str(Path(sys.executable).parent / "feast")
    runtime_dir = Path(tempfile.mkdtemp(prefix="feast-serve-", dir=log_dir))
    fs_yaml = runtime_dir / "feature_store.yaml"  # the repo's, naming the benchmark's project
    fs_yaml.write_text(feast_yaml(os.environ["FEAST_PROJECT"]))
    command = [
        sys.executable,
        feast_cli,
        "-c",
        str(config.feature_repo_dir()),
        "-f",
        str(fs_yaml),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--max-requests",
        "0",
    ]
    log_path = log_dir / f"feast-serve-{port}.log"
    env = feast_serve_env(runtime_dir)
    proc = spawn(command, env, log_path)
    return Server("feast_serve", proc, port, log_path, "/health", feast_request, command, env)


def wait_ready(server: Server, timeout: float) -> float:
    """Seconds from its start until the server's readiness path answers 200 (SystemExit if never)."""
    while time.perf_counter() - server.spawned < timeout:
        if server.proc.poll() is not None:
            raise SystemExit(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_path.read_text()[-3000:]}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", server.ready_path)
            if conn.getresponse().status == 200:
                return time.perf_counter() - server.spawned
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(
        f"{server.name} was not ready within {timeout:.0f} s:\n{server.log_path.read_text()[-3000:]}"
    )


def ask(server: Server, user: str) -> dict:
    """One request, answered 200 with JSON (SystemExit otherwise)."""
    req = server.request(user)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request(req.method, req.path, body=req.body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise SystemExit(f"{server.name} answered {resp.status} to {req.method} {req.path}: {body[:500]!r}")
    return json.loads(body)


def answered_features(server: Server, user: str) -> list[str]:
    """The feature names one user's answer holds, all present (so both sides do the same work)."""
    answer = ask(server, user)
    if server.name == "api":
        return sorted(f for view in answer["views"].values() if view["found"] for f in view["features"])
    names = answer["metadata"]["feature_names"]
    missing = [n for n, r in zip(names, answer["results"]) if r["statuses"] != ["PRESENT"]]
    if missing:
        raise SystemExit(f"feast serve has no value of {missing} for user {user}")
    return sorted(n for n in names if n != schema.KEY)


def server_buckets(port: int) -> dict[str, float]:
    """The server's own latency histogram of GET /features/{user_id} (200s): count per bound."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    buckets = {}
    for line in text.splitlines():
        if (
            line.startswith("streamflow_api_request_duration_seconds_bucket{")
            and 'route="/features/{user_id}"' in line
            and 'status="200"' in line
        ):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def server_histogram(before: dict[str, float], after: dict[str, float]) -> dict:
    """Share of the measured requests the server answered within each bound (its own timing)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in after}
    total = delta.get("+Inf", 0.0)
    shares = {
        f"<= {float(le) * 1000:g} ms": round(n / total, 4)
        for le, n in delta.items()
        if le != "+Inf" and total
    }
    return {**shares, "requests": int(total)}


def stop_server(server: Server) -> None:
    """SIGTERM to the server's process group (gunicorn's arbiter and workers too), SIGKILL if slow."""
    proc = server.proc
    if proc.poll() is None:
        with_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with_group(proc, signal.SIGKILL)
            proc.wait()
    if group_stats(proc.pid):  # a worker that outlived its parent (the group lives: still ours)
        with_group(proc, signal.SIGKILL)


def with_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group start_new_session gave it: only what it started
    except (ProcessLookupError, PermissionError):
        pass


def group_stats(pgid: int) -> list[list[str]]:
    """/proc/<pid>/stat fields (after the command) of the live processes of one process group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp, ...
            out.append(fields)
    return out


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of a server and its workers: what each server costs per request
    holds whatever else runs on the machine."""
    ticks = sum(int(f[11]) + int(f[12]) for f in group_stats(pgid))  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# --- the load ------------------------------------------------------------------------------------


def plan(server: Server, users: list[str], count: int, seed: int) -> list[Request]:
    """The requests of one run, for random users (same seed: same users in the same order on both sides)."""
    rng = random.Random(seed)
    return [server.request(rng.choice(users)) for _ in range(count)]


def steady_load(
    server: Server, requests: list[Request], rate: float, threads: int, timeout: float, give_up: float
) -> dict:
    """Open-loop load: request i is due at t0 + i / rate and sent by the next free client thread.

    A thread never waits for a slow answer of another one, so a slow server is met with the
    planned rate until every thread is busy; after that requests queue in the client, which the
    latency from the due time includes. Requests not sent ``give_up`` seconds after t0 are left."""
    count = len(requests)
    due_latency, sent_latency = [0.0] * count, [0.0] * count
    statuses: list[str] = ["unsent"] * count
    finished = [0.0] * count
    headers = {"Content-Type": "application/json"}
    order = itertools.count()  # next() is atomic under the GIL: each index goes to one thread
    t0 = time.perf_counter() + 0.2

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)

    def worker() -> None:
        conn = connect()
        for i in order:
            if i >= count:
                break
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            if sent - t0 > give_up:
                break
            req = requests[i]
            try:
                conn.request(req.method, req.path, body=req.body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                statuses[i] = str(resp.status)
            except TimeoutError:  # socket.timeout too
                statuses[i] = "timeout"
            except (OSError, http.client.HTTPException):
                statuses[i] = "exception"
            if statuses[i] in ("timeout", "exception"):
                conn.close()
                conn = connect()
            end = time.perf_counter()
            due_latency[i], sent_latency[i], finished[i] = end - due, end - sent, end
        conn.close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return load_result(statuses, due_latency, sent_latency, finished, t0, rate)


def load_result(
    statuses: list[str], due: list[float], sent: list[float], finished: list[float], t0: float, rate: float
) -> dict:
    """Counts, rates and latencies of one run; latencies are of the 2xx answers.

    Errors are non-2xx answers, exceptions and timeouts; requests the client never sent (it gave
    up) are counted apart as ``unsent``: the server did not fail them, it was too slow to get
    them, and the latencies then leave out the longest waits (a lower bound)."""
    done = [f for f in finished if f]
    elapsed = max(done) - t0 if done else float("nan")
    by_status: dict[str, int] = {}
    for s in statuses:
        by_status[s] = by_status.get(s, 0) + 1
    ok = [i for i, s in enumerate(statuses) if s.startswith("2")]
    unsent = by_status.get("unsent", 0)
    return {
        "requests": len(statuses),
        "statuses": by_status,
        "errors": len(statuses) - len(ok) - unsent,
        "timeouts": by_status.get("timeout", 0),
        "unsent": unsent,
        "target_rate": rate,
        "achieved_rate": round(len(ok) / elapsed, 1) if done else 0.0,
        "seconds": round(elapsed, 2),
        "latency_ms": summary([due[i] for i in ok]),
        "latency_from_send_ms": summary([sent[i] for i in ok]),
    }


def measure(server: Server, users: list[str], rate: float, args) -> dict:
    """Warm-up, then the measured run, at one rate against one server (ours: with its histogram)."""
    if args.warmup > 0:
        warm = plan(server, users, int(rate * args.warmup), args.seed + 1)
        steady_load(server, warm, rate, args.threads, args.timeout, args.warmup * 3 + 5)
    before = server_buckets(server.port) if server.name == "api" else None
    requests = plan(server, users, int(rate * args.duration), args.seed)
    cpu = group_cpu_seconds(server.proc.pid), time.process_time()
    result = steady_load(server, requests, rate, args.threads, args.timeout, args.duration * 3 + 5)
    answered = max(1, result["requests"] - result["unsent"])
    server_cpu = group_cpu_seconds(server.proc.pid) - cpu[0]
    result["server_cpu_ms_per_request"] = round(server_cpu * 1000 / answered, 2)
    result["client_cpu_ms_per_request"] = round((time.process_time() - cpu[1]) * 1000 / answered, 2)
    if before is not None:
        result["server_histogram"] = server_histogram(before, server_buckets(server.port))
    lat = result["latency_ms"]
    print(
        f"  {server.name} at {rate:g} req/s: achieved {result['achieved_rate']:g}, "
        f"p50 {lat.get('p50', float('nan')):.2f} ms, p99 {lat.get('p99', float('nan')):.2f} ms, "
        f"errors {result['errors']}, {result['statuses']}, server CPU "
        f"{result['server_cpu_ms_per_request']} ms/request",
        file=sys.stderr,
        flush=True,
    )
    return result


def compare(servers: list[Server], users: list[str], rates: list[float], args) -> dict[str, dict]:
    """Each rate against each server in turn (rate-major: both sides of a rate are close in time)."""
    return {f"{rate:g}": {s.name: measure(s, users, rate, args) for s in servers} for rate in rates}


def log_problems(path: Path, most: int = 5) -> dict:
    """Error lines a server logged during the run (its log is deleted after a clean run)."""
    lines = [
        line.strip()
        for line in path.read_text(errors="replace").splitlines()
        if any(word in line for word in ("ERROR", "Traceback", "CRITICAL", "Exception"))
    ]
    return {"count": len(lines), "first": lines[:most]}


def free_ports(n: int) -> list[int]:
    """n distinct free ports (each one bound to port 0 by the kernel, then released)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def serve_and_load(users: list[str], args) -> tuple[dict, dict]:
    """Start both servers, check they answer the same features, load them; always stop them.

    Their logs are deleted after a clean run and kept (path printed) after a failure."""
    log_dir = Path(tempfile.mkdtemp(prefix="streamflow-api-bench-"))
    servers: list[Server] = []
    try:
        for start, port in zip((start_api, start_feast_serve), free_ports(2)):
            servers.append(start(port, args.workers, log_dir))
        startup = {s.name: round(wait_ready(s, 180), 1) for s in servers}
        features = {s.name: answered_features(s, users[0]) for s in servers}
        if features["api"] != features["feast_serve"]:
            raise SystemExit(f"the two servers answer different features: {features}")
        load = compare(servers, users, args.rates, args)
    except BaseException:
        print(f"server logs kept in {log_dir}", file=sys.stderr)
        raise
    finally:
        for s in servers:
            stop_server(s)
    info = {
        s.name: {
            "command": " ".join(s.command[1:]),
            "startup_seconds": startup[s.name],
            "log_errors": log_problems(s.log_path),
        }
        for s in servers
    }
    shutil.rmtree(log_dir, ignore_errors=True)
    info["feast_serve"]["environment"] = sorted(servers[1].env)  # names only: it holds the password
    info["features_per_request"] = len(features["api"])
    return load, info


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

    from streamflow.feast_stores.value_encoding import string_entity_key

    views = [t.feature_view for t in schema.FEATURE_TABLES]
    query = " UNION ALL ".join(
        f'SELECT {i}::int2, names, vals, event_ts FROM "{online_table(v)}" WHERE entity_key = %(key)s'
        for i, v in enumerate(views)
    )
    rng = random.Random(seed)
    keys = [string_entity_key(schema.KEY, rng.choice(users)) for _ in range(count)]
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
    return {
        "n": len(v),
        "p50": ms(percentile(v, 50)),
        "p95": ms(percentile(v, 95)),
        "p99": ms(percentile(v, 99)),
        "max": ms(v[-1]),
        "mean": ms(statistics.fmean(v)),
    }


LABELS = {"api": "API `GET /features/{user_id}`", "feast_serve": "`feast serve` `POST /get-online-features`"}


def table(result: dict) -> str:
    rows = []
    for rate, sides in result["load"].items():
        for name, side in sides.items():
            extra = (
                f"{side['achieved_rate']} of {rate}; {side['errors']} errors, {side['unsent']} unsent; "
                f"server CPU {side['server_cpu_ms_per_request']} ms/req"
            )
            rows.append((f"{LABELS[name]} (from due time)", side["latency_ms"], extra))
            rows.append((f"{LABELS[name]} (from send)", side["latency_from_send_ms"], extra))
    rows += [
        ("floor: plain SQL, one SELECT over the 5 online tables", result["sql_floor"]["latency_ms"], ""),
        ("API read path in-process (FeatureReader.lookup, no HTTP)", result["reader"]["latency_ms"], ""),
        ("Feast `get_online_features` in-process (reference)", result["feast"]["latency_ms"], ""),
    ]
    out = [
        "| path | n | p50 ms | p95 ms | p99 ms | max ms | req/s achieved of asked; errors; CPU |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, s, extra in rows:
        if s.get("n"):
            out.append(
                f"| {name} | {s['n']} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} | "
                f"{s['max']:.2f} | {extra} |"
            )
    return "\n".join(out)


def report(result: dict, args) -> None:
    """The run on stdout: settings, the table, our API's own histogram, what the servers logged."""
    servers, machine = result["server"], result["machine"]
    print(
        f"\none user's whole {schema.FEATURE_SERVICE} per request ({servers['features_per_request']} "
        f"features), {result['users_asked']} users; {args.workers} worker(s) per server, {args.threads} "
        f"client threads, {machine['cpus']} CPUs; load average before {machine['loadavg_before'][0]:.2f}, "
        f"after {machine['loadavg_after_load'][0]:.2f} (other processes share the CPUs)\n"
    )
    print(table(result))
    hist = result["api"].get("server_histogram", {})
    print(
        f"\nour API's own histogram at {args.rates[0]:g} req/s: "
        + ", ".join(f"{hist[k] * 100:.1f}% {k}" for k in ("<= 5 ms", "<= 10 ms", "<= 25 ms") if k in hist)
    )
    for name in ("api", "feast_serve"):
        errors = servers[name]["log_errors"]
        if errors["count"]:
            print(
                f"\n{name} logged {errors['count']} error lines, the first:\n  "
                + "\n  ".join(errors["first"])
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        "--rate",
        type=float,
        nargs="+",
        default=[200.0, 1000.0],
        help="requests per second, one run per rate and server (default 200 1000)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds of steady load per run (default 10)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured run")
    parser.add_argument("--threads", type=int, default=16, help="client threads (keep-alive connections)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds a request may take (then: an error)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes of each server")
    parser.add_argument("--users", type=int, default=1000, help="distinct users to ask for")
    parser.add_argument("--load-users", type=int, default=2000, help="users to generate when none are online")
    parser.add_argument("--floor-lookups", type=int, default=2000)
    parser.add_argument("--feast-lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def known_users(args) -> list[str]:
    from streamflow.feature_store import apply

    apply()  # idempotent: the registry and the online tables in their current layout
    users = online_users(args.users)
    if not users:
        load_data(args.load_users)
        users = online_users(args.users)
    if not users:
        raise SystemExit("no users online after loading; see the errors above")
    return users


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    users = known_users(args)
    load_before = os.getloadavg()
    load, servers = serve_and_load(users, args)
    load_after = os.getloadavg()
    first = load[f"{args.rates[0]:g}"]
    pace = 1.0 / args.rates[0]
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after_load": [round(x, 2) for x in load_after],
        },
        "database": config.postgres().describe(),
        "feast_project": os.environ["FEAST_PROJECT"],
        "users_asked": len(users),
        "server": {"workers": args.workers, **servers},
        "client": {
            "threads": args.threads,
            "warmup_seconds": args.warmup,
            "duration_seconds": args.duration,
            "timeout_seconds": args.timeout,
        },
        "load": load,
        "api": first["api"],  # our API at the first rate, against the floor below
        "sql_floor": sql_floor(users, args.floor_lookups, args.seed, pace),
        "reader": reader_path(users, args.floor_lookups, args.seed, pace),
        "feast": feast_reference(users, args.feast_lookups, args.seed),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result, args)
    print(f"\nwritten to {args.out}")
    return 1 if any(sides["api"]["errors"] for sides in load.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
