"""Deterministic generator of StreamFlow snapshots (the format and distributions of DATA.md).

Users are generated in fixed blocks of ``BLOCK`` users, each with its own numpy Generator
seeded from (seed, month, block), so the output depends neither on ``chunk_size`` nor on how
many users come after: ``--users 7043`` is a prefix of ``--users 20000``. month_000 is drawn
from scratch; every later month applies one drift step to the month before it.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
from tqdm import tqdm

from streamflow import config, contract, logs, schema

log = logging.getLogger(__name__)

BLOCK = 1000
"""Users per random block (the unit of randomness; chunks are sliced from blocks)."""

DEFAULT_SNAPSHOTS = ("month_000", "month_001")

_ID_DIGITS, _ID_LETTERS = 10**4, 26**5
ID_SPACE = _ID_DIGITS * _ID_LETTERS
"""Number of distinct user ids (4 digits, 5 upper-case letters)."""
_ID_STREAM = 2**32 - 1  # seed-sequence tag of the user-id permutation

_SUBS = schema.table("subscriptions")
CONTRACTS = np.array(_SUBS.column("contract_type").choices)  # Month-to-month, One year, Two year
NETS = np.array(_SUBS.column("net_service").choices)  # DSL, Fiber optic, No
_MTM, _ONE_YEAR, _TWO_YEAR = 0, 1, 2
_DSL, _FIBER, _NO_NET = 0, 1, 2

_SIGNUP_START, _SIGNUP_DAYS = np.datetime64("2022-01-01"), 37  # up to 2022-02-06
_CONTRACT_P = [0.55, 0.21, 0.24]
_NET_P_BY_CONTRACT = np.array([[0.33, 0.55, 0.12], [0.37, 0.33, 0.30], [0.34, 0.30, 0.36]])
_TENURE_BETA = np.array([[0.8, 2.4], [1.4, 1.0], [2.2, 0.58]])  # months_active / 72 by contract
_STREAM_P = np.array([0.35, 0.60, 0.0])  # P(plan_stream_*) by net service
_FEE_MIN, _FEE_MAX = 18.25, 118.75
WATCH_MEAN, WATCH_SD, WATCH_MIN, WATCH_MAX = 29.6, 6.8, 5.7, 50.8
_WATCH_FEE_CORR = 0.45
AVG_SESSION_MINS = 29.14104464084511
_REBUFFER_LAMBDA = np.array([2.8, 2.05, 2.05])  # by net service
_FAILED_P = [0.845, 0.145, 0.008, 0.002]
_TICKETS_P = [0.74, 0.22, 0.035, 0.004, 0.001]

# churn logit: intercept by contract + offset by net service + effects of the other columns
_CHURN_000 = {
    "contract": [-1.35, -2.58, -3.66],
    "net": [0.0, 1.16, -0.78],
    "tenure": -0.45,
    "failed": 0.5,
    "tickets": 0.35,
    "senior": 0.3,
    "watch": -0.15,
}
_CHURN_DRIFT = {
    "contract": [-1.79, -1.78, -1.76],
    "net": [0.0, 0.76, -0.29],
    "tenure": -0.1,
    "failed": 0.5,
    "tickets": 0.35,
    "senior": 0.2,
    "watch": -0.35,
}

_DRIFT_WATCH_MEAN, _DRIFT_WATCH_SD = -0.6, 1.5
_DRIFT_REBUFFER_P, _DRIFT_FAILED_P, _DRIFT_TICKETS_P = 0.25, 0.03, 0.05
_STATIC_TABLES = ("users", "subscriptions")  # the drift leaves them unchanged


# --- month_000 ------------------------------------------------------------------------------


def _categorical(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """One category index per row of p (an n × k matrix of probabilities)."""
    cum = np.cumsum(p, axis=-1)
    u = rng.random(len(p))
    return (u[:, None] >= cum[:, :-1]).sum(axis=1)


def _users(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    family = rng.random(n) < 0.48
    return {
        "signup_date": (_SIGNUP_START + rng.integers(0, _SIGNUP_DAYS, n)).astype(str),
        "user_gender": np.where(rng.random(n) < 0.5, "Female", "Male"),
        "user_is_senior": rng.random(n) < 0.16,
        "has_family": family,
        "has_dependents": rng.random(n) < np.where(family, 0.52, 0.095),
    }


def _months_active(rng: np.random.Generator, contract: np.ndarray) -> np.ndarray:
    a, b = _TENURE_BETA[contract].T
    months = 1 + np.floor(72 * rng.beta(a, b)).astype(np.int64).clip(max=71)
    return np.where(rng.random(contract.size) < 0.002, 0, months)


def _fees(rng: np.random.Generator, net: np.ndarray, tv: np.ndarray, movies: np.ndarray) -> np.ndarray:
    n = net.size
    extras = 10.0 * (tv.astype(float) + movies)
    fee = np.select(
        [net == _DSL, net == _FIBER],
        [23.45 + extras + rng.uniform(0, 51.35, n), 68.5 + extras + rng.uniform(0, 30.25, n)],
        _FEE_MIN + 8.65 * rng.beta(1.5, 4.0, n),
    )
    return (np.round(fee * 20) / 20).clip(_FEE_MIN, _FEE_MAX)


def _subscriptions(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    contract = _categorical(rng, np.tile(_CONTRACT_P, (n, 1)))
    net = _categorical(rng, _NET_P_BY_CONTRACT[contract])
    months = _months_active(rng, contract)
    tv = rng.random(n) < _STREAM_P[net]
    movies = rng.random(n) < _STREAM_P[net]
    fee = _fees(rng, net, tv, movies)
    factor = 1 + 0.05 * rng.standard_normal(n).clip(-2, 2)
    return {
        "months_active": months,
        "plan_stream_tv": tv,
        "plan_stream_movies": movies,
        "contract": contract,
        "paperless_billing": rng.random(n) < 0.59,
        "monthly_fee": fee,
        "total_paid": np.round(fee * months * factor, 2),
        "net": net,
    }


def _usage(rng: np.random.Generator, fee: np.ndarray, net: np.ndarray) -> dict[str, np.ndarray]:
    n = fee.size
    z_fee = (fee - 65.0) / 30.0
    z = _WATCH_FEE_CORR * z_fee + math.sqrt(1 - _WATCH_FEE_CORR**2) * rng.standard_normal(n)
    return {
        "watch_hours_30d": (WATCH_MEAN + WATCH_SD * z).clip(WATCH_MIN, WATCH_MAX),
        "avg_session_mins_7d": np.full(n, AVG_SESSION_MINS),
        "unique_devices_30d": rng.integers(1, 4, n),
        "skips_7d": rng.poisson(5.0, n),
        "rebuffer_events_7d": rng.poisson(_REBUFFER_LAMBDA[net]).clip(max=9),
    }


def _aggregates(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "failed_payments_90d": rng.choice(len(_FAILED_P), n, p=_FAILED_P),
        "support_tickets_90d": rng.choice(len(_TICKETS_P), n, p=_TICKETS_P),
        "ticket_avg_resolution_hrs_90d": rng.integers(10, 250, n) / 10,
    }


def _churn(rng: np.random.Generator, s: dict[str, np.ndarray], coef: dict) -> np.ndarray:
    logit = (
        np.asarray(coef["contract"])[s["contract"]]
        + np.asarray(coef["net"])[s["net"]]
        + coef["tenure"] * (s["months_active"] - 32) / 24
        + coef["failed"] * s["failed_payments_90d"]
        + coef["tickets"] * s["support_tickets_90d"]
        + coef["senior"] * s["user_is_senior"]
        + coef["watch"] * (s["watch_hours_30d"] - WATCH_MEAN) / WATCH_SD
    )
    return rng.random(logit.size) < 1 / (1 + np.exp(-logit))


def _month_000(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """All columns (with contract and net as category codes) of n new users."""
    s = _users(rng, n) | _subscriptions(rng, n)
    s |= _usage(rng, s["monthly_fee"], s["net"]) | _aggregates(rng, n)
    s["churn_label"] = _churn(rng, s, _CHURN_000)
    return s


# --- drift ----------------------------------------------------------------------------------


def _drift_watch(rng: np.random.Generator, watch: np.ndarray) -> np.ndarray:
    """Move every user's watch hours; a step that would leave the range goes the other way."""
    step = rng.normal(_DRIFT_WATCH_MEAN, _DRIFT_WATCH_SD, watch.size)
    moved = watch + step
    outside = (moved < WATCH_MIN) | (moved > WATCH_MAX)
    return np.where(outside, watch - step, moved).clip(WATCH_MIN, WATCH_MAX)


def _bump(rng: np.random.Generator, values: np.ndarray, p: float, low: int, high: int) -> np.ndarray:
    """Add low..high to a fraction p of the values."""
    hit = rng.random(values.size) < p
    return values + hit * rng.integers(low, high + 1, values.size)


def _drift(rng: np.random.Generator, prev: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One month of drift: users and subscriptions unchanged, usage/payments/support/labels move."""
    s = dict(prev)
    s["watch_hours_30d"] = _drift_watch(rng, prev["watch_hours_30d"])
    s["rebuffer_events_7d"] = _bump(rng, prev["rebuffer_events_7d"], _DRIFT_REBUFFER_P, 1, 4)
    s["failed_payments_90d"] = _bump(rng, prev["failed_payments_90d"], _DRIFT_FAILED_P, 1, 1)
    s["support_tickets_90d"] = _bump(rng, prev["support_tickets_90d"], _DRIFT_TICKETS_P, 1, 1)
    s["churn_label"] = _churn(rng, s, _CHURN_DRIFT)
    return s


# --- user ids -------------------------------------------------------------------------------


def _id_permutation(seed: int) -> tuple[int, int]:
    """(a, b) of the bijection i -> (a*i + b) mod ID_SPACE (a coprime with ID_SPACE)."""
    rng = np.random.default_rng([seed, _ID_STREAM])
    while True:
        a = int(rng.integers(ID_SPACE // 3, ID_SPACE))
        if math.gcd(a, ID_SPACE) == 1:
            return a, int(rng.integers(0, ID_SPACE))


def user_ids(seed: int, start: int, stop: int) -> np.ndarray:
    """Unique ids of users start..stop-1, like 7590-VHVEG."""
    a, b = _id_permutation(seed)
    i = np.arange(start, stop, dtype=np.int64)
    hi, lo = i >> 20, i & (2**20 - 1)  # split so that no product overflows int64
    v = ((((a * hi) % ID_SPACE) << 20) + a * lo + b) % ID_SPACE
    digits, letters = v % _ID_DIGITS, v // _ID_DIGITS
    codes = np.empty((i.size, 10), dtype=np.uint8)
    for p in range(4):
        codes[:, 3 - p] = ord("0") + (digits // 10**p) % 10
    codes[:, 4] = ord("-")
    for p in range(5):
        codes[:, 9 - p] = ord("A") + (letters // 26**p) % 26
    return codes.view("S10").ravel().astype(str)


# --- chunks ---------------------------------------------------------------------------------


def _block_rng(seed: int, month: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, month, block])


def _chunk_months(seed: int, start: int, stop: int, months: int) -> Iterator[dict[str, np.ndarray]]:
    """Columns of users start..stop-1 for month 0, 1, ..., months-1."""
    blocks = range(start // BLOCK, (stop - 1) // BLOCK + 1)
    states = [_month_000(_block_rng(seed, 0, b), BLOCK) for b in blocks]
    rows = slice(start - blocks.start * BLOCK, stop - blocks.start * BLOCK)
    for month in range(months):
        if month:
            states = [_drift(_block_rng(seed, month, b), s) for b, s in zip(blocks, states)]
        yield {k: np.concatenate([s[k] for s in states])[rows] for k in states[0]}


def _frame(table: schema.Table, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """The table's columns in header order, with codes turned into labels and NULL plan flags."""
    no_net = cols["net"] == _NO_NET
    out = {}
    for name in table.header:
        if name == "contract_type":
            out[name] = CONTRACTS[cols["contract"]]
        elif name == "net_service":
            out[name] = NETS[cols["net"]]
        elif name in ("plan_stream_tv", "plan_stream_movies"):
            out[name] = pd.arrays.BooleanArray(cols[name], no_net)
        else:
            out[name] = cols[name]
    return pd.DataFrame(out, copy=False)


def _csv(table: schema.Table, cols: dict[str, np.ndarray]) -> str:
    return _frame(table, cols).to_csv(header=False, index=False, lineterminator="\n")


# --- generate -------------------------------------------------------------------------------


def snapshot_month(snapshot: str) -> int:
    """Month index of a snapshot id: month_002 -> 2."""
    m = contract.SNAPSHOT_FOLDER.fullmatch(snapshot)
    if not m:
        raise ValueError(f"unknown snapshot {snapshot!r}: snapshot ids look like month_000, month_001, ...")
    return int(m.group(1))


def validate(users: int, seed: int, snapshots: Sequence[str], chunk_size: int) -> dict[str, int]:
    """Check the arguments; return {snapshot: month index} without duplicates. Raises ValueError."""
    if not 1 <= users <= ID_SPACE:
        raise ValueError(f"users must be between 1 and {ID_SPACE}, got {users}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if chunk_size < 1:
        raise ValueError(f"chunk size must be >= 1, got {chunk_size}")
    if isinstance(snapshots, str) or not snapshots:
        raise ValueError("give at least one snapshot id, e.g. month_000")
    return {s: snapshot_month(s) for s in snapshots}


def _open_files(folders: dict[str, Path], stack: ExitStack) -> dict[tuple[str, str], TextIO]:
    files: dict[tuple[str, str], TextIO] = {}
    for snapshot, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        for table in schema.TABLES:
            f = stack.enter_context(open(folder / table.file, "w", encoding="utf-8", newline=""))
            f.write(",".join(table.header) + "\n")
            files[snapshot, table.name] = f
    return files


def generate(
    out_dir: Path,
    users: int = 7043,
    seed: int = 42,
    snapshots: Sequence[str] = DEFAULT_SNAPSHOTS,
    chunk_size: int = 100_000,
    progress: bool = True,
) -> dict[str, Path]:
    """Write out_dir/<snapshot>/<table>.csv for every snapshot; return {snapshot: folder}."""
    months = validate(users, seed, snapshots, chunk_size)
    folders = {s: Path(out_dir) / s for s in months}
    seconds = dict.fromkeys(folders, 0.0)
    started = time.perf_counter()
    show = progress and sys.stderr.isatty()
    with ExitStack() as stack:
        files = _open_files(folders, stack)
        bar = stack.enter_context(tqdm(total=users, unit="users", disable=not show))
        for start in range(0, users, chunk_size):
            stop = min(start + chunk_size, users)
            ids = user_ids(seed, start, stop)
            static: dict[str, str] = {}
            for month, cols in enumerate(_chunk_months(seed, start, stop, max(months.values()) + 1)):
                cols["user_id"] = ids
                for snapshot in (s for s, m in months.items() if m == month):
                    t0 = time.perf_counter()
                    _write_month(files, snapshot, cols, static)
                    seconds[snapshot] += time.perf_counter() - t0
            bar.update(stop - start)
    for snapshot, folder in folders.items():
        log.info(
            "wrote %s: %d users x %d tables in %.1f s", folder, users, len(schema.TABLES), seconds[snapshot]
        )
    log.info(
        "generated %d snapshot(s) of %d users in %.1f s", len(folders), users, time.perf_counter() - started
    )
    return folders


def _write_month(
    files: dict[tuple[str, str], TextIO], snapshot: str, cols: dict[str, np.ndarray], static: dict[str, str]
) -> None:
    """Append one chunk of one snapshot; users and subscriptions text is shared by all months."""
    for table in schema.TABLES:
        if table.name not in _STATIC_TABLES:
            text = _csv(table, cols)
        elif table.name in static:
            text = static[table.name]
        else:
            text = static[table.name] = _csv(table, cols)
        files[snapshot, table.name].write(text)


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamflow generate",
        description="Generate deterministic StreamFlow snapshots "
        "(one CSV per table of streamflow/schema.py).",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=config.data_dir(),
        help="output folder (default: STREAMFLOW_DATA_DIR, else data/ in the repository)",
    )
    p.add_argument("--users", type=int, default=7043, help="number of users (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    p.add_argument(
        "--snapshots",
        nargs="+",
        default=list(DEFAULT_SNAPSHOTS),
        metavar="month_NNN",
        help="snapshot ids to write (default: %(default)s)",
    )
    p.add_argument("--chunk-size", type=int, default=100_000, help="users per write (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2 for invalid arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        try:
            validate(args.users, args.seed, args.snapshots, args.chunk_size)
        except ValueError as exc:
            parser.error(str(exc))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logs.setup()
    try:
        generate(
            args.out,
            args.users,
            args.seed,
            args.snapshots,
            args.chunk_size,
            not args.no_progress and logs.progress_enabled(),
        )
    except OSError as exc:
        log.error("cannot write snapshots to %s: %s", args.out, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
