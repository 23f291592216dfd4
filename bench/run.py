"""The benchmark suite: each figure measured with its stock baseline in the same run.

    .venv/bin/python -m bench.run                      # the default size, a few minutes
    .venv/bin/python -m bench.run --only online_write consumer_e2e
    .venv/bin/python -m bench.run --scale              # adds the 1,000,000-user run (long)
    .venv/bin/python -m bench.run --profile --only consumer_e2e   # pyinstrument profiles of our side

Benchmarks, not tests: nothing asserts on a number. Everything talks to 127.0.0.1 only, in the
database ``streamflow_bench`` with its own Feast projects and topics (bench/common.py). Results go
to bench/results/results.json (merged with earlier runs of other benchmarks) and results.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
import traceback
from datetime import datetime, timezone

from bench import common  # noqa: I001  (first: sets the benchmark environment)

BENCHMARKS = [
    "online_write",
    "consumer_e2e",
    "consumer_processes",
    "producer",
    "freshness",
    "api_latency",
    "api_load",
    "api_flood",
    "lag_sample",
    "offline_retrieval",
    "memory",
    "verify",
    "startup",
    "churn",
    "scale",
    "table_growth",
]
DEFAULT = BENCHMARKS[:-2]
"""Without --scale: scale, and table_growth (which needs the tables a scale run fills), are left out."""
RUNNERS = {"memory": ("bench.scale", "run_memory")}
"""Benchmarks run by a function other than their own module's run()."""
JSON = common.RESULTS / "results.json"
MARKDOWN = common.RESULTS / "results.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--users",
        type=int,
        default=20_000,
        help="users of the write, consumer and producer benchmarks (default 20,000)",
    )
    p.add_argument("--batch", type=int, default=5000, help="rows per write / events per consumer batch")
    p.add_argument("--scale", action="store_true", help="also run the 1,000,000-user scale benchmark")
    p.add_argument("--scale-users", type=int, default=1_000_000, help=argparse.SUPPRESS)
    p.add_argument(
        "--offline-users",
        type=int,
        nargs="+",
        default=[7043, 100_000],
        help="entity set sizes of the offline retrieval benchmark",
    )
    p.add_argument(
        "--rates",
        "--rate",
        type=float,
        nargs="+",
        default=[2000, 5000],
        help="events/s of the freshness benchmark, one run per rate (default 2000 5000)",
    )
    p.add_argument("--duration", type=float, default=15, help="seconds of the freshness benchmark, per rate")
    p.add_argument(
        "--verify-users", type=int, default=7043, help="users of the verify benchmark (default 7,043)"
    )
    p.add_argument(
        "--churn-users",
        type=int,
        default=100_000,
        help="users of the churn model benchmark (train, verify --model; default 100,000)",
    )
    p.add_argument(
        "--api-rates",
        type=float,
        nargs="+",
        default=[200, 1000],
        help="req/s of the online lookup benchmark, ours and feast serve's (default 200 1000)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only these: {', '.join(BENCHMARKS)}",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="profile our side (pyinstrument; py-spy for the API server under hey) into "
        "bench/results/profile_*.txt; figures slower, not saved",
    )
    return p


def api_latency(args) -> dict:
    """5. Online lookup, measured by bench/api_latency.py (owned by the API work) when it is usable:
    our API and `feast serve` under the same load at each of --api-rates, and the plain SQL floor."""
    try:
        module = importlib.import_module("bench.api_latency")
    except ImportError as exc:
        return {
            "rows": [],
            "details": {"method": f"skipped: bench/api_latency.py cannot be imported ({exc})"},
        }
    if not callable(getattr(module, "main", None)):
        return {"rows": [], "details": {"method": "skipped: bench/api_latency.py has no main(argv)"}}
    out = common.data_dir() / "api_latency.json"
    try:
        module.main(["--out", str(out), "--rates", *(f"{r:g}" for r in args.api_rates)])
    except SystemExit as exc:
        if not out.exists():
            raise RuntimeError(f"bench/api_latency.py stopped: {exc}") from None
    res = json.loads(out.read_text())
    rows = _floor_rows(res) + [row for rate, sides in res["load"].items() for row in _peer_rows(rate, sides)]
    return {"rows": rows, "details": {**res, "method": _api_method(res)}}


def _api_method(res: dict) -> str:
    """How the lookup figures were made, with this run's settings."""
    client, fs = res["client"], res["server"]["feast_serve"]
    return (
        "bench/api_latency.py: our API (uvicorn) and `feast serve` (Feast's HTTP feature server, gunicorn + "
        f"uvicorn worker), {res['server']['workers']} worker process(es) each, run side by side as "
        "subprocesses on free ports; each rate is sent to one server after the other (the other idle; "
        f"{client['warmup_seconds']:g} s warm-up, then {client['duration_seconds']:g} s measured) by the "
        f"same open-loop generator ({client['threads']} keep-alive client threads, request i due at "
        "t0 + i/rate, latency from the due time, so queueing counts). Every request asks for one random user "
        f"({res['users_asked']:,} users) and the whole churn_model_v1 feature service: "
        "`GET /features/{user_id}` on ours, `POST /get-online-features` with the feature service on feast "
        f"serve (both answers checked to hold the same {res['server']['features_per_request']} features). "
        "feast serve runs on our feature repo and project with an explicit environment "
        f"({', '.join(fs['environment'])}), so it reads the very online tables and rows our API reads, "
        "through the same online store class (StreamflowOnlineStore; the stock PostgreSQL online store "
        "cannot read its table layout): the difference measured is the serving path, not the storage, "
        "which a stock-class peer (its own tables, another layout) would mix in. feast serve gets its best "
        "settings: no access log, no worker restart every 1,000 requests (its default --max-requests). "
        f"Errors: non-2xx, exceptions, timeouts ({client['timeout_seconds']:g} s); requests a server was too "
        "slow to be sent before the client gave up (3x the run + 5 s) are counted apart as unsent, and its "
        "latencies are then a lower bound. The floor is one prepared SELECT per user over the online tables. "
        + _log_errors(res["server"])
    )


def _log_errors(servers: dict) -> str:
    """What the servers logged as errors: a peer failing quietly must show."""
    said = []
    for name in ("api", "feast_serve"):
        errors = servers[name].get("log_errors", {})
        if errors.get("count"):
            said.append(f"{name} logged {errors['count']} error lines, the first: {errors['first'][0][:200]}")
    return ("; ".join(said) + ".") if said else "Neither server logged an error."


def _floor_rows(res: dict) -> list[dict]:
    """Our API at the first rate against the plain SQL floor (what any lookup must cost)."""
    api, floor = res["api"]["latency_ms"], res["sql_floor"]["latency_ms"]
    rate = res["api"]["target_rate"]
    feast = res["feast"]["latency_ms"]
    feast_note = (
        f"Feast get_online_features in-process (reference): p50 {feast['p50']:.2f} ms, "
        f"p99 {feast['p99']:.2f} ms."
    )
    at = f"at {rate:g} req/s (baseline: plain SQL floor)"
    return [
        common.row(
            "5 online lookup", f"API p50 {at}", api.get("p50"), floor["p50"], "ms", higher_is_better=False
        ),
        common.row(
            "5 online lookup",
            f"API p99 {at}",
            api.get("p99"),
            floor["p99"],
            "ms",
            "p99 < 10 ms",
            api.get("p99", float("inf")) < 10,
            higher_is_better=False,
            note=feast_note,
        ),
    ]


def _peer_rows(rate: str, sides: dict) -> list[dict]:
    """Ours against `feast serve` at one asked rate: p50, p99 (the goal), achieved rate, errors."""
    ours, peer = sides["api"], sides["feast_serve"]
    at = f"at {float(rate):,.0f} req/s asked (baseline: feast serve)"
    lat, peer_lat = ours["latency_ms"], peer["latency_ms"]  # {"n": 0} when nothing was answered
    met = (
        lat.get("p99") is not None
        and peer_lat.get("p99") is not None
        and lat["p99"] <= 0.1 * peer_lat["p99"]
        and ours["errors"] == 0
    )
    goal = "p99 ours / feast serve ≤ 0.1× at both rates, 0 errors on our side"
    return [
        common.row(
            "5 online lookup",
            f"API p50 {at}",
            lat.get("p50"),
            peer_lat.get("p50"),
            "ms",
            higher_is_better=False,
        ),
        common.row(
            "5 online lookup",
            f"API p99 {at}",
            lat.get("p99"),
            peer_lat.get("p99"),
            "ms",
            goal,
            met,
            higher_is_better=False,
            note=_peer_note(rate, ours, peer),
        ),
        common.row(
            "5 online lookup", f"answers/s {at}", ours["achieved_rate"], peer["achieved_rate"], "req/s"
        ),
        common.row(
            "5 online lookup",
            f"errors (non-2xx, exceptions, timeouts) {at}",
            ours["errors"],
            peer["errors"],
            "requests",
            higher_is_better=False,
        ),
    ]


def _peer_note(rate: str, ours: dict, peer: dict) -> str:
    """What the table leaves out: CPU per request, latency from send, requests never sent."""
    text = (
        f"At {float(rate):,.0f} req/s: server CPU per request ours "
        f"{ours['server_cpu_ms_per_request']} ms, feast serve {peer['server_cpu_ms_per_request']} ms; "
        f"p99 from send (without the client's queue) ours {_p99(ours['latency_from_send_ms'])} ms, "
        f"feast serve {_p99(peer['latency_from_send_ms'])} ms"
    )
    for name, side in (("ours", ours), ("feast serve", peer)):
        if side["unsent"]:
            text += (
                f"; {side['unsent']:,} of {side['requests']:,} requests to {name} never sent "
                "(too slow to take them), its latencies a lower bound"
            )
    return text + "."


def _p99(latency: dict) -> str:
    return f"{latency['p99']:.1f}" if "p99" in latency else "none (no answer)"


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if unit.endswith("/s") or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# StreamFlow benchmarks",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}, Kafka {m['kafka']} (KRaft, one node), all on 127.0.0.1; "
        f"load average at start {m['loadavg_at_start'][0]} (other processes share the CPUs); "
        f"a fixed pure-Python loop took {m.get('python_loop_ms_at_start', '?')} ms at the start and "
        f"{m.get('python_loop_ms_at_end', '?')} ms at the end (the machine's speed of the hour).",
        "",
        "Ratio: how many times better ours is than the baseline (ours/baseline for rates, "
        "baseline/ours for latencies and times).",
        "",
        "| benchmark | measure | ours | baseline | unit | ratio | goal | met |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for name in BENCHMARKS:
        entry = results["benchmarks"].get(name)
        if not entry:
            continue
        if entry.get("error"):
            lines.append(f"| {name} | failed: {entry['error'].splitlines()[-1][:120]} | | | | | | |")
            continue
        for r in entry["rows"]:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            ratio = f"{r['ratio']:.2f}×" if r["ratio"] else ""
            lines.append(
                f"| {r['benchmark']} | {r['measure']} | {_fmt(r['ours'], r['unit'])} | "
                f"{_fmt(r['baseline'], r['unit'])} | {r['unit']} | {ratio} | {r['goal']} | {met} |"
            )
    lines.append("")
    for name in BENCHMARKS:
        entry = results["benchmarks"].get(name)
        if entry and not entry.get("error"):
            notes = [r["note"] for r in entry["rows"] if r.get("note")]
            if entry.get("disturbed"):
                notes.insert(0, f"**{entry['disturbed']}.**")
            method = entry.get("details", {}).get("method")
            lines.append(
                f"- **{name}** ({entry['when']}, {entry['seconds']:.0f} s): "
                + " ".join(filter(None, [method, *notes]))
            )
    return "\n".join(lines) + "\n"


def run_one(name: str, args) -> dict:
    common.say(f"== {name}")
    t0, services = time.perf_counter(), common.service_ids()
    entry = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        module, func = RUNNERS.get(name, (f"bench.{name}", "run"))
        run = api_latency if name == "api_latency" else getattr(importlib.import_module(module), func)
        entry.update(run(args))
    except Exception as exc:  # noqa: BLE001 - one failed benchmark must not hide the others
        traceback.print_exc()
        entry["error"] = f"{type(exc).__name__}: {exc}"
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    if common.service_ids() != services:
        entry["disturbed"] = "PostgreSQL or Kafka restarted during this benchmark (figures not valid)"
    return entry


def save(results: dict) -> None:
    """Write the results to bench/results/results.json and results.md."""
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
    MARKDOWN.write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = args.only or (DEFAULT + (["scale"] if args.scale else []))
    common.PROFILE = args.profile
    started = time.perf_counter()
    common.ensure_database()
    results = {"benchmarks": {}}
    if JSON.exists():
        try:
            results = json.loads(JSON.read_text())
        except ValueError:
            pass
    results["machine"] = common.machine()
    common.say(f"machine: {results['machine']}")
    common.say("resetting the bench database (both Feast projects)...")
    common.reset()
    common.quiet_warnings()
    try:
        for name in names:
            results["benchmarks"][name] = entry = run_one(name, args)
            if entry.get("disturbed") and name != "scale":
                common.say(f"  {entry['disturbed']}: running {name} once more")
                common.stock_store.cache_clear()  # its singleton connection may be broken for good
                results["benchmarks"][name] = entry = run_one(name, args)
            if not args.profile:  # profiled figures are slower: never mixed into the results
                save(results)
    finally:
        try:
            common.delete_run_topics()
        except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the results
            common.say(f"could not delete this run's topics ({common.BASE_PREFIX}-*): {exc}")
        common.remove_data()
    results["machine"]["python_loop_ms_at_end"] = common.speed_probe()
    common.say(f"python loop at the end: {results['machine']['python_loop_ms_at_end']} ms")
    if not args.profile:
        save(results)
    print(markdown(results))
    where = (
        "profiles in bench/results/profile_*.txt, figures not saved"
        if args.profile
        else f"written to {JSON} and {MARKDOWN}"
    )
    print(f"suite run time: {time.perf_counter() - started:.0f} s; {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
