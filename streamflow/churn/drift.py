"""``streamflow drift``: how far the model's inputs and its scores moved between two snapshots.

For each of the model's features, and for the champion's score, between the users of a reference
date and of a current date (each with its own features through the point-in-time path):

* **PSI**, the population stability index: the reference's deciles (a category's levels) as bins,
  ``sum((cur - ref) * ln(cur / ref))`` over the bins' shares (a share of 0 counts as 1e-4).
  Below 0.1 is stable, 0.1 to 0.25 a moderate shift (``warn``), above 0.25 a large one (``alert``):
  the thresholds in common use for PSI.
* **KS**, the two-sample Kolmogorov-Smirnov statistic and its p-value (numbers and the score).

The report is printed and stored in the table ``model_drift`` (one row per feature, replaced by
each run); the API exposes it as the gauges ``streamflow_drift_psi`` and ``streamflow_drift_ks``
(``monitoring/alerts.yml`` alerts on PSI above 0.25). Scipy (which scikit-learn already brings)
gives the KS test; PSI is a few lines of numpy, so no drift library is added (see docs).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone

import numpy as np

from streamflow import config, db_roles, logs, schema
from streamflow.churn import features
from streamflow.errors import StreamflowError

log = logging.getLogger("streamflow.drift")

WARN, ALERT = 0.1, 0.25
"""PSI thresholds: moderate and large shifts."""

SCORE = "churn_score"
"""The name of the score's row in the report."""

TABLE = "model_drift"
FLOOR = 1e-4


@dataclass
class Drift:
    feature: str
    psi: float
    ks: float | None
    ks_pvalue: float | None
    status: str  # "ok", "warn" or "alert"


def status(psi: float) -> str:
    return "alert" if psi > ALERT else "warn" if psi > WARN else "ok"


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of a number over the reference's quantile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    return _psi(ref, cur)


def psi_categorical(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of a category over the levels of both sets."""
    levels = sorted(set(reference.tolist()) | set(current.tolist()))
    ref = np.array([np.sum(reference == v) for v in levels])
    cur = np.array([np.sum(current == v) for v in levels])
    return _psi(ref, cur)


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    ref = np.maximum(ref_counts / max(ref_counts.sum(), 1), FLOOR)
    cur = np.maximum(cur_counts / max(cur_counts.sum(), 1), FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def compare(name: str, reference: np.ndarray, current: np.ndarray, categorical: bool) -> Drift:
    from scipy.stats import ks_2samp

    if categorical:
        psi = psi_categorical(reference, current)
        return Drift(name, round(psi, 6), None, None, status(psi))
    psi = psi_numeric(reference.astype(float), current.astype(float))
    ks = ks_2samp(reference.astype(float), current.astype(float))
    return Drift(name, round(psi, 6), round(float(ks.statistic), 6), float(ks.pvalue), status(psi))


def drift(reference: date, current: date, with_score: bool = True) -> list[Drift]:
    """Every feature's drift (and the champion's score's, when ``with_score`` and one is registered)."""
    from streamflow.churn.train import dataset

    ref, cur = dataset(reference), dataset(current)
    out = [
        compare(name, ref.frame[name].to_numpy(), cur.frame[name].to_numpy(), name in features.CATEGORICAL)
        for name in features.NAMES
    ]
    if with_score:
        from streamflow.churn.registry import NoChampion
        from streamflow.churn.scoring import Champion

        try:
            champion = Champion.load()
        except NoChampion as exc:
            log.warning("no score drift: %s", exc)
        else:
            ref_scores = champion.model.predict_proba(ref.frame)[:, 1]
            cur_scores = champion.model.predict_proba(cur.frame)[:, 1]
            out.append(compare(SCORE, ref_scores, cur_scores, categorical=False))
    return out


def store(results: list[Drift], reference: date, current: date) -> None:
    """Replace the table ``model_drift`` with these results (the API reads it for its gauges)."""
    import psycopg

    settings = config.settings().postgres
    now = datetime.now(timezone.utc)
    with psycopg.connect(config.postgres().conninfo, connect_timeout=5) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (feature TEXT PRIMARY KEY, psi DOUBLE PRECISION NOT NULL, "
            "ks DOUBLE PRECISION, ks_pvalue DOUBLE PRECISION, status TEXT NOT NULL, reference DATE NOT NULL, "
            "current DATE NOT NULL, computed_at TIMESTAMPTZ NOT NULL)"
        )
        conn.execute(f"DELETE FROM {TABLE}")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {TABLE} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [(d.feature, d.psi, d.ks, d.ks_pvalue, d.status, reference, current, now) for d in results],
            )
        db_roles.grant_api_read(conn, settings.api_user, table=TABLE)


def read_stored(conn) -> list[tuple[str, float, float | None]]:
    """(feature, psi, ks) of the last stored report; empty when there is none."""
    import psycopg

    try:
        return conn.execute(f"SELECT feature, psi, ks FROM {TABLE} ORDER BY feature").fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def format_report(results: list[Drift], reference: date, current: date) -> str:
    lines = [
        f"drift from {reference} to {current} (PSI: warn above {WARN}, alert above {ALERT})",
        f"{'feature':32} {'PSI':>8} {'KS':>8} {'KS p':>10}  status",
    ]
    for d in results:
        ks = f"{d.ks:8.4f}" if d.ks is not None else f"{'-':>8}"
        p = f"{d.ks_pvalue:10.2e}" if d.ks_pvalue is not None else f"{'-':>10}"
        lines.append(f"{d.feature:32} {d.psi:8.4f} {ks} {p}  {d.status}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamflow drift", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference", type=date.fromisoformat, default=schema.SNAPSHOTS["month_000"], help="YYYY-MM-DD"
    )
    parser.add_argument(
        "--current", type=date.fromisoformat, default=schema.SNAPSHOTS["month_001"], help="YYYY-MM-DD"
    )
    parser.add_argument("--no-score", action="store_true", help="features only (no champion needed)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    logs.setup()
    try:
        results = drift(args.reference, args.current, with_score=not args.no_score)
        store(results, args.reference, args.current)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    if args.json:
        print(json.dumps({"reference": str(args.reference), "current": str(args.current),
                          "drift": [asdict(d) for d in results]}))  # fmt: skip
    else:
        print(format_report(results, args.reference, args.current))
    alerts = [d.feature for d in results if d.status == "alert"]
    if alerts:
        log.warning("large drift (PSI above %s): %s", ALERT, ", ".join(alerts))
    return 0
