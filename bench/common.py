"""Shared set-up of the benchmarks: their own database, Feast projects and topics; data; the stock store.

Importing this module points the process at the benchmarks' own resources BEFORE any streamflow
module is imported (it must be the first import of every benchmark module):

* database ``streamflow_bench`` (or ``$STREAMFLOW_BENCH_DB``; created if missing), Feast project
  ``streamflow_bench`` for our store classes and ``streamflow_bench_stock`` for the stock ones
  (same SQL registry, same warehouse tables, their own online tables);
* a fresh topic prefix per run and per benchmark (``bench<run>-<name>-<id>``), deleted at the end.

So the benchmarks never touch the demo's (``streamflow``) or the tests' (``streamflow_test``) data.
"""

from __future__ import annotations

import os
import uuid
import warnings


def quiet_warnings() -> None:
    """Hide library deprecation chatter (Feast re-adds its own filters on import: call again after)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="pandas only supports SQLAlchemy")


quiet_warnings()

RUN_ID = uuid.uuid4().hex[:8]
BASE_PREFIX = f"bench{RUN_ID}"
os.environ["POSTGRES_DB"] = os.environ.get("STREAMFLOW_BENCH_DB", "streamflow_bench")
os.environ["FEAST_PROJECT"] = "streamflow_bench"
os.environ["STREAMFLOW_TOPIC_PREFIX"] = BASE_PREFIX
os.environ.setdefault("STREAMFLOW_LOG_LEVEL", "WARNING")

import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import cache  # noqa: E402
from pathlib import Path  # noqa: E402

import psycopg  # noqa: E402

from streamflow import config, db_roles, schema, warehouse  # noqa: E402

STOCK_PROJECT = "streamflow_bench_stock"
REPO = config.REPO_ROOT
RESULTS = REPO / "bench" / "results"
PROFILE = False  # set by bench.run --profile: wrap our side of each benchmark in pyinstrument


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- database and Feast ---------------------------------------------------------------------------


def ensure_database() -> None:
    """Create the benchmarks' database when missing."""
    from streamflow import warehouse

    warehouse.ensure_database()


def connect(**kwargs) -> psycopg.Connection:
    return psycopg.connect(config.postgres().conninfo, connect_timeout=5, **kwargs)


def reset() -> None:
    """Empty warehouse and online tables of both projects, then apply both projects again."""
    from feature_repo import definitions
    from streamflow.feature_store import apply

    with connect(autocommit=True) as conn:
        warehouse.drop_schema(conn)
        for project in (os.environ["FEAST_PROJECT"], STOCK_PROJECT):
            for view in definitions.FEATURE_VIEWS.values():
                conn.execute(f'DROP TABLE IF EXISTS "{project}_{view.name}"')
    apply()
    stock_store().apply(definitions.all_objects())  # the stock online store's own update(): tables, indexes


def our_store():
    from streamflow.feature_store import get_store

    return get_store()


@cache
def stock_store():
    """A FeatureStore on the same database whose provider (``local``) and online and offline stores
    (``type: postgres``) are Feast's stock classes, in project streamflow_bench_stock."""
    import yaml
    from feast import FeatureStore, RepoConfig

    from streamflow.feast_stores.settings import connection_fields

    repo = config.feature_repo_dir()
    raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
    raw["project"] = STOCK_PROJECT
    raw["provider"] = "local"
    raw["online_store"] = {**connection_fields(), **raw["online_store"], "type": "postgres"}
    raw["offline_store"] = {**connection_fields(), **raw["offline_store"], "type": "postgres"}
    repo_config = RepoConfig(**raw)
    repo_config.repo_path = repo
    return FeatureStore(repo_path=str(repo), config=repo_config)


def server_versions() -> dict[str, str]:
    with connect() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    jars = sorted((REPO / ".services" / "kafka" / "lib").glob("kafka_2.13-*.jar"))
    kafka = jars[0].stem.split("-", 1)[1] if jars else "unknown"
    return {"postgresql": pg, "kafka": kafka}


def service_ids() -> tuple:
    """PostgreSQL's start time and the Kafka broker's pid: a change means a restart in between
    (other sessions' fault tests restart the shared services)."""
    try:
        with connect() as conn:
            pg = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
    except psycopg.Error:
        pg = None
    pid_file = REPO / ".services" / "kafka" / "kafka.pid"
    kafka = pid_file.read_text().strip() if pid_file.exists() else None
    return pg, kafka


def speed_probe() -> float:
    """Milliseconds of a fixed pure-Python loop (median of 5): this machine's speed varies by up to
    2x from one hour to the next with nothing else running, so each run records it at its start
    and end, and figures of two runs can be told apart from the machine's mood."""
    times = []
    for _ in range(5):
        started, total = time.perf_counter(), 0
        for i in range(1_000_000):
            total += i * i
        times.append((time.perf_counter() - started) * 1000)
    return round(sorted(times)[2], 1)


def machine() -> dict:
    import platform

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    return {
        "nproc": os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        **server_versions(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python_loop_ms_at_start": speed_probe(),
    }


# --- Kafka topics -----------------------------------------------------------------------------------


def use_topics(name: str, partitions: int = 4) -> str:
    """Point this process (and the subprocesses it starts) at fresh topics for one benchmark."""
    from streamflow.kafka_topics import ensure_topics
    from streamflow.topics import dead_letter_topic, table_topics

    prefix = f"{BASE_PREFIX}-{name}-{uuid.uuid4().hex[:4]}"  # fresh on a second attempt too
    os.environ["STREAMFLOW_TOPIC_PREFIX"] = prefix
    ensure_topics(table_topics() + [dead_letter_topic()], partitions=partitions)
    return prefix


def delete_run_topics() -> None:
    """Delete the topics this run created (their names start with this run's prefix)."""
    from streamflow.kafka_topics import admin_client

    admin = admin_client()
    try:
        ours = [t for t in admin.list_topics() if t.startswith(BASE_PREFIX)]
        if ours:
            admin.delete_topics(ours, timeout_ms=30_000)
    finally:
        admin.close()


# --- data -------------------------------------------------------------------------------------------

_DATA_DIR: Path | None = None


def data_dir() -> Path:
    global _DATA_DIR
    if _DATA_DIR is None:
        _DATA_DIR = Path(tempfile.mkdtemp(prefix="streamflow-bench-"))
    return _DATA_DIR


def remove_data() -> None:
    if _DATA_DIR is not None:
        shutil.rmtree(_DATA_DIR, ignore_errors=True)


def snapshots(users: int) -> dict[str, Path]:
    """month_000 and month_001 of ``users`` generated users (seed 42), generated once per run."""
    from streamflow.datagen.generate import generate

    out = data_dir() / f"users_{users}"
    if not (out / "month_001" / "labels.csv").exists():
        started = time.perf_counter()
        generate(out, users=users, progress=False)
        say(f"  generated {users:,} users x 2 months in {time.perf_counter() - started:.1f} s")
    return {name: out / name for name in ("month_000", "month_001")}


def load_warehouse(users: int) -> None:
    """Warehouse tables holding exactly both months of ``users`` users (batch load)."""
    from streamflow.batch.load import load_snapshot

    folders = snapshots(users)
    started = time.perf_counter()
    with connect(autocommit=True) as conn:
        warehouse.drop_schema(conn)
        warehouse.ensure_schema(conn)
    for folder in folders.values():
        load_snapshot(folder)
    with connect(
        autocommit=True
    ) as conn:  # settle the fresh rows (hint bits, statistics): fair to both readers
        for table in schema.TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table.snapshot_table}")
        # the tables were made again: the consumer's and the API's roles need their grants again
        db_roles.ensure_roles(conn, config.postgres(), os.environ["FEAST_PROJECT"])
    say(f"  loaded {users:,} users x 2 months in {time.perf_counter() - started:.1f} s")


# --- measuring --------------------------------------------------------------------------------------


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


_SESSIONS: dict = {}
"""Profiles recorded with append=True, by name, combined until flush_profiles()."""


def _write_profile(name: str, session) -> None:
    from pyinstrument.renderers import ConsoleRenderer

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"profile_{name}.txt"
    path.write_text(ConsoleRenderer(unicode=True, color=False, show_all=False).render(session))
    session.save(str(path.with_suffix(".pyisession")))  # pyinstrument --load F --show-all
    say(f"  profile written to {path}")


@contextlib.contextmanager
def profiled(name: str, append: bool = False):
    """With --profile, record a pyinstrument profile of the block to bench/results/profile_<name>.txt
    (pyinstrument follows the thread it starts in). ``append``: add the block to the profile of
    that name, written by flush_profiles() (for a block run many times, e.g. in a worker thread)."""
    if not PROFILE:
        yield
        return
    from pyinstrument import Profiler
    from pyinstrument.session import Session

    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        if append:
            earlier = _SESSIONS.get(name)
            _SESSIONS[name] = (
                profiler.last_session if earlier is None else Session.combine(earlier, profiler.last_session)
            )
        else:
            _write_profile(name, profiler.last_session)


def flush_profiles() -> None:
    """Write the profiles recorded with append=True."""
    while _SESSIONS:
        _write_profile(*_SESSIONS.popitem())


def row(
    benchmark: str,
    measure: str,
    ours: float | None,
    baseline: float | None,
    unit: str,
    goal: str = "",
    met: bool | None = None,
    higher_is_better: bool = True,
    note: str = "",
) -> dict:
    """One line of the results table; ratio = ours / baseline (baseline / ours when lower is better)."""
    ratio = None
    if ours and baseline:
        ratio = ours / baseline if higher_is_better else baseline / ours
    return {
        "benchmark": benchmark,
        "measure": measure,
        "ours": ours,
        "baseline": baseline,
        "unit": unit,
        "ratio": ratio,
        "goal": goal,
        "met": met,
        "note": note,
    }


def cli() -> list[str]:
    """The `streamflow` command of this checkout (its virtualenv's, else ``python -m streamflow.cli``)."""
    exe = REPO / ".venv" / "bin" / "streamflow"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "streamflow.cli"]


PEAK_RSS = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))  # a stop reaches the stage
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""
"""Runs a command and writes its peak RSS (KiB) to a file. A child's ru_maxrss counts the RSS of
the process it was forked from (Linux keeps the forked image's high-water mark across exec): from
the benchmark's process every stage read at least its RSS, 200-300 MiB. Forked from this small
process (python -S, some 10 MiB), the stage's own peak is what is read."""
