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

from bench import common  # noqa: I001  (first: sets the benchmark environment)

import argparse
import importlib
import json
import time
import traceback
from datetime import datetime, timezone

BENCHMARKS = ["online_write", "consumer_e2e", "producer", "freshness", "api_latency", "offline_retrieval", "scale"]
DEFAULT = BENCHMARKS[:-1]
JSON = common.RESULTS / "results.json"
MARKDOWN = common.RESULTS / "results.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20_000,
                   help="users of the write, consumer and producer benchmarks (default 20,000)")
    p.add_argument("--batch", type=int, default=5000, help="rows per write / events per consumer batch")
    p.add_argument("--scale", action="store_true", help="also run the 1,000,000-user scale benchmark")
    p.add_argument("--scale-users", type=int, default=1_000_000, help=argparse.SUPPRESS)
    p.add_argument("--offline-users", type=int, nargs="+", default=[7043, 100_000],
                   help="entity set sizes of the offline retrieval benchmark")
    p.add_argument("--rate", type=float, default=2000, help="events/s of the freshness benchmark")
    p.add_argument("--duration", type=float, default=15, help="seconds of the freshness benchmark")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only these: {', '.join(BENCHMARKS)}")
    p.add_argument("--profile", action="store_true",
                   help="profile our side with pyinstrument (bench/results/profile_*.txt; figures slower)")
    return p


def api_latency(args) -> dict:
    """5. Online lookup, measured by bench/api_latency.py (owned by the API work) when it is usable."""
    try:
        module = importlib.import_module("bench.api_latency")
    except ImportError as exc:
        return {"rows": [], "details": {"method": f"skipped: bench/api_latency.py cannot be imported ({exc})"}}
    if not callable(getattr(module, "main", None)):
        return {"rows": [], "details": {"method": "skipped: bench/api_latency.py has no main(argv)"}}
    out = common.data_dir() / "api_latency.json"
    try:
        module.main(["--out", str(out)])
    except SystemExit as exc:
        if not out.exists():
            raise RuntimeError(f"bench/api_latency.py stopped: {exc}") from None
    res = json.loads(out.read_text())
    api, floor, feast = (res[k]["latency_ms"] for k in ("api", "sql_floor", "feast"))
    rate = res["api"]["achieved_rate"]
    feast_note = f"Feast get_online_features in-process (reference): p50 {feast['p50']:.2f} ms, p99 {feast['p99']:.2f} ms."
    return {
        "rows": [
            common.row("5 online lookup", f"API p50 at {rate:g} req/s (baseline: plain SQL floor)", api["p50"],
                       floor["p50"], "ms", higher_is_better=False),
            common.row("5 online lookup", f"API p99 at {rate:g} req/s (baseline: plain SQL floor)", api["p99"],
                       floor["p99"], "ms", "p99 < 10 ms", api["p99"] < 10, higher_is_better=False,
                       note=feast_note),
        ],
        "details": {**res, "method": "bench/api_latency.py: uvicorn subprocess, open-loop steady load from "
                                      "keep-alive threads, latency from the due time; the floor is one prepared "
                                      "SELECT per user over the online tables."},
    }


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
        f"load average at start {m['loadavg_at_start'][0]} (other processes share the CPUs).",
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
            lines.append(f"| {r['benchmark']} | {r['measure']} | {_fmt(r['ours'], r['unit'])} | "
                         f"{_fmt(r['baseline'], r['unit'])} | {r['unit']} | {ratio} | {r['goal']} | {met} |")
    lines.append("")
    for name in BENCHMARKS:
        entry = results["benchmarks"].get(name)
        if entry and not entry.get("error"):
            notes = [r["note"] for r in entry["rows"] if r.get("note")]
            if entry.get("disturbed"):
                notes.insert(0, f"**{entry['disturbed']}.**")
            method = entry.get("details", {}).get("method")
            lines.append(f"- **{name}** ({entry['when']}, {entry['seconds']:.0f} s): "
                         + " ".join(filter(None, [method, *notes])))
    return "\n".join(lines) + "\n"


def run_one(name: str, args) -> dict:
    common.say(f"== {name}")
    t0, services = time.perf_counter(), common.service_ids()
    entry = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        run = api_latency if name == "api_latency" else importlib.import_module(f"bench.{name}").run
        entry.update(run(args))
    except Exception as exc:  # noqa: BLE001 - one failed benchmark must not hide the others
        traceback.print_exc()
        entry["error"] = f"{type(exc).__name__}: {exc}"
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    if common.service_ids() != services:
        entry["disturbed"] = "PostgreSQL or Kafka restarted during this benchmark (figures not valid)"
    return entry


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
                common.RESULTS.mkdir(parents=True, exist_ok=True)
                JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
                MARKDOWN.write_text(markdown(results))
    finally:
        try:
            common.delete_run_topics()
        except Exception as exc:  # noqa: BLE001 - cleaning up must not hide the results
            common.say(f"could not delete this run's topics ({common.BASE_PREFIX}-*): {exc}")
        common.remove_data()
    print(markdown(results))
    where = "profiles in bench/results/profile_*.txt, figures not saved" if args.profile else f"written to {JSON} and {MARKDOWN}"
    print(f"suite run time: {time.perf_counter() - started:.0f} s; {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
