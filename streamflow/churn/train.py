"""``streamflow train``: fit the churn model on a point-in-time training set, validate it, log it to
MLflow, register it, and move the alias ``champion`` to it when it beats the champion.

1. **Data.** The training set at ``--as-of`` through the point-in-time path
   (:func:`streamflow.training.build_training_set`): each user's features as of that date and the
   label of that date. Users with a missing feature are left out and counted.
2. **Validation.** For every candidate (:mod:`streamflow.churn.candidates`): a stratified k-fold
   cross-validation on that set, and a temporal validation: the model fitted on the whole set
   scores the next snapshot's users with that date's features against that date's labels.
3. **Choice.** The candidate with the best validation ROC AUC (temporal when there is a next
   snapshot, else cross-validated) whose single-row scoring takes at most ``LATENCY_BUDGET_MS``
   at the median.
4. **MLflow.** One run with every candidate's metrics; the chosen model is logged with its
   signature (the 14 input features) and registered as a new version of ``STREAMFLOW_MODEL_NAME``.
5. **Promotion.** The alias ``champion`` moves to the new version when there is no champion, with
   ``--force``, or when the new version's ROC AUC on the validation set beats the champion's on
   the same set by at least ``STREAMFLOW_PROMOTION_MARGIN``. The decision is printed, logged and
   kept as tags of the run and of the version.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from streamflow import config, logs, schema
from streamflow.churn import features
from streamflow.errors import StreamflowError

log = logging.getLogger("streamflow.train")

LATENCY_BUDGET_MS = 50.0
"""A candidate whose median single-row scoring takes longer is not chosen."""

LABEL = schema.LABEL_TABLE.feature_names[0]


@dataclass
class Dataset:
    as_of: date
    frame: pd.DataFrame
    labels: np.ndarray
    left_out: int
    """Users of that date left out for a missing feature."""


@dataclass
class Candidate:
    name: str
    cv: dict[str, float]
    temporal: dict[str, float] | None
    latency_ms: float
    model: object = field(repr=False, default=None)

    def validation_auc(self) -> float:
        return (self.temporal or self.cv)["roc_auc"]


@dataclass
class Decision:
    promoted: bool
    reason: str
    new_auc: float
    champion_version: str | None = None
    champion_auc: float | None = None


@dataclass
class Report:
    as_of: date
    validation_as_of: date | None
    rows: int
    left_out: int
    churn_rate: float
    candidates: list[Candidate]
    chosen: str
    run_id: str = ""
    version: str = ""
    decision: Decision | None = None


def dataset(as_of: date) -> Dataset:
    """The labelled users of ``as_of`` with complete features."""
    from streamflow.training import build_training_set

    raw = build_training_set(as_of)
    if raw.empty:
        raise StreamflowError(f"no labelled users at {as_of}: load or stream that snapshot first")
    required = [f.name for f in features.MODEL_FEATURES if not f.nullable] + [LABEL]
    complete = raw[required].notna().all(axis=1)  # every view has such a feature: no view row is absent
    kept = raw[complete].reset_index(drop=True)
    if kept.empty:
        raise StreamflowError(f"no user at {as_of} has all of the model's features")
    labels = kept[LABEL].astype(bool).to_numpy().astype(int)
    return Dataset(as_of, features.model_frame(kept), labels, int((~complete).sum()))


def next_snapshot(as_of: date) -> date | None:
    """The first labelled snapshot date after ``as_of`` in the warehouse, if any."""
    import psycopg

    with psycopg.connect(config.postgres().conninfo, connect_timeout=5) as conn:
        row = conn.execute(
            f"SELECT min({schema.SNAPSHOT_TIME}) FROM {schema.LABEL_TABLE.snapshot_table} "
            f"WHERE {schema.SNAPSHOT_TIME} > %s",
            (schema.as_of_timestamp(as_of),),
        ).fetchone()
    return row[0].date() if row and row[0] is not None else None


def single_row_latency_ms(model, frame: pd.DataFrame, repeats: int = 200) -> float:
    """Median time to score one feature row the way the API will (ms): through the compiled
    scorer (streamflow.churn.compiled) when the model compiles, else building its input frame."""
    from streamflow.churn.compiled import CompiledScorer

    compiled = CompiledScorer.compile(model)
    records = frame.head(repeats).to_dict("records")
    times = []
    for i in range(repeats):
        row = records[i % len(records)]
        started = time.perf_counter()
        if compiled is not None:
            compiled.probabilities([row])
        else:
            model.predict_proba(features.model_frame([row]))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def evaluate(name: str, train: Dataset, validation: Dataset | None, folds: int) -> Candidate:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from streamflow.churn.candidates import CANDIDATES, SEED
    from streamflow.churn.metrics import scores

    template = CANDIDATES[name]()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=SEED)
    oof = cross_val_predict(clone(template), train.frame, train.labels, cv=splitter, method="predict_proba")[
        :, 1
    ]
    model = clone(template).fit(train.frame, train.labels)
    temporal = None
    if validation is not None:
        temporal = scores(validation.labels, model.predict_proba(validation.frame)[:, 1])
    return Candidate(
        name, scores(train.labels, oof), temporal, single_row_latency_ms(model, train.frame), model
    )


def choose(candidates: list[Candidate]) -> Candidate:
    fast = [c for c in candidates if c.latency_ms <= LATENCY_BUDGET_MS]
    if not fast:
        raise StreamflowError(
            f"no candidate scores one row within {LATENCY_BUDGET_MS:g} ms: "
            + ", ".join(f"{c.name} {c.latency_ms:.1f} ms" for c in candidates)
        )
    return max(fast, key=Candidate.validation_auc)


def decide(
    new: Candidate, validation: Dataset, train: Dataset, force: bool, margin: float, mlflow_client
) -> Decision:
    """Whether the new version takes the alias (see the module, step 5)."""
    from streamflow.churn import registry
    from streamflow.churn.metrics import scores

    new_auc = new.validation_auc()
    try:
        current = registry.champion(mlflow_client)
        if tuple(current.features) != tuple(features.NAMES):
            reason = f"the champion (version {current.version}) reads other features"
            return Decision(True, reason, new_auc, current.version)
        champion_model = registry.load(current)
    except registry.NoChampion:
        return Decision(True, "no champion yet", new_auc)
    except registry.ModelUnreadable as exc:
        if force:
            return Decision(True, f"--force ({exc})", new_auc)
        raise registry.ModelUnreadable(f"{exc}; `streamflow train --force` replaces it") from None
    # the champion on the same set as the new model's validation AUC: the next snapshot, or (no next
    # snapshot) the training date's users, which the new model saw only out of fold
    frame, labels = (
        (validation.frame, validation.labels) if new.temporal is not None else (train.frame, train.labels)
    )
    champion_auc = scores(labels, champion_model.predict_proba(frame)[:, 1])["roc_auc"]
    gain = new_auc - champion_auc
    if force:
        return Decision(
            True,
            f"--force (ROC AUC {new_auc:.4f} against {champion_auc:.4f})",
            new_auc,
            current.version,
            champion_auc,
        )
    if gain >= margin:
        reason = (
            f"ROC AUC {new_auc:.4f} beats the champion's {champion_auc:.4f} by {gain:+.4f} "
            f"(margin {margin:g})"
        )
        return Decision(True, reason, new_auc, current.version, champion_auc)
    reason = (
        f"ROC AUC {new_auc:.4f} against the champion's {champion_auc:.4f}: {gain:+.4f}, "
        f"short of the margin {margin:g}"
    )
    return Decision(False, reason, new_auc, current.version, champion_auc)


def train(as_of: date, force: bool = False, folds: int = 5, margin: float | None = None) -> Report:
    """Steps 1 to 5 of the module; returns the report (raises StreamflowError for what a user can fix)."""
    import mlflow

    from streamflow.churn import registry
    from streamflow.churn.candidates import CANDIDATES, one_thread

    one_thread()
    settings = config.settings().model
    margin = settings.promotion_margin if margin is None else margin
    experiment_id = registry.prepare()
    train_set = dataset(as_of)
    if len(np.unique(train_set.labels)) < 2:
        raise StreamflowError(f"the labels of {as_of} hold one class only: nothing to learn")
    next_day = next_snapshot(as_of)
    validation = dataset(next_day) if next_day is not None else None
    log.info(
        "training set %s: %d users (%d left out for a missing feature); validation: %s",
        as_of, len(train_set.frame), train_set.left_out, next_day or f"{folds}-fold cross-validation only",
    )  # fmt: skip
    candidates = []
    for name in CANDIDATES:
        started = time.perf_counter()
        candidates.append(evaluate(name, train_set, validation, folds))
        log.info("%s: evaluated in %.1f s", name, time.perf_counter() - started)
    chosen = choose(candidates)
    report = Report(
        as_of,
        next_day,
        len(train_set.frame),
        train_set.left_out,
        float(train_set.labels.mean()),
        candidates,
        chosen.name,
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train {as_of}") as run:
        _log_run(report, train_set, folds, margin)
        report.run_id, report.version = run.info.run_id, _log_model(chosen, train_set, settings.name)
        mlflow_client = registry.client()
        report.decision = decide(chosen, validation or train_set, train_set, force, margin, mlflow_client)
        if report.decision.promoted:
            mlflow_client.set_registered_model_alias(settings.name, registry.CHAMPION, report.version)
        text = ("promoted: " if report.decision.promoted else "not promoted: ") + report.decision.reason
        mlflow.set_tag("promotion", text)
        mlflow_client.set_model_version_tag(settings.name, report.version, "promotion", text)
    log.info("model %s version %s %s", settings.name, report.version, text)
    return report


def _log_run(report: Report, train_set: Dataset, folds: int, margin: float) -> None:
    """The run's parameters and every candidate's validation figures, into the active MLflow run."""
    import mlflow

    mlflow.log_params(
        {
            "as_of": report.as_of.isoformat(),
            "validation_as_of": report.validation_as_of.isoformat() if report.validation_as_of else "none",
            "rows": len(train_set.frame),
            "left_out": train_set.left_out,
            "folds": folds,
            "chosen": report.chosen,
            "features": ",".join(features.NAMES),
            "promotion_margin": margin,
        }
    )
    for c in report.candidates:
        mlflow.log_metrics({f"{c.name}.cv.{k}": v for k, v in c.cv.items()})
        if c.temporal:
            mlflow.log_metrics({f"{c.name}.temporal.{k}": v for k, v in c.temporal.items()})
        mlflow.log_metric(f"{c.name}.single_row_ms", c.latency_ms)


def _log_model(chosen: Candidate, train_set: Dataset, name: str) -> str:
    """Log the chosen model into the active MLflow run, with its signature (the features it was
    trained on), and register it as ``name``; its new version."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from streamflow.churn.candidates import trusted_types

    example = train_set.frame.head(5)
    signature = infer_signature(example, chosen.model.predict_proba(example)[:, 1])  # type: ignore[attr-defined]
    info = mlflow.sklearn.log_model(
        chosen.model,
        name="model",
        signature=signature,
        input_example=example,
        registered_model_name=name,
        pip_requirements=requirements(),  # given, so MLflow need not infer them (slow, needs pip)
        skops_trusted_types=trusted_types(chosen.model),
    )
    return str(info.registered_model_version)


def requirements() -> list[str]:
    """What loading the logged pipeline needs, pinned to the versions that trained it."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]


def format_report(report: Report) -> str:
    from streamflow.churn.metrics import METRICS

    lines = [
        f"training set {report.as_of}: {report.rows:,} users, churn {report.churn_rate:.1%}"
        + (f", {report.left_out} left out for a missing feature" if report.left_out else ""),
        f"validation: {report_validation(report)}",
        "",
        f"{'candidate':22} {'set':9} " + " ".join(f"{m:>9}" for m in METRICS) + f" {'1-row ms':>9}",
    ]
    for c in report.candidates:
        for label, values in (("cv", c.cv), ("temporal", c.temporal)):
            if values is None:
                continue
            mark = "*" if c.name == report.chosen else " "
            latency = f"{c.latency_ms:9.2f}" if label == "cv" else ""
            lines.append(
                f"{mark}{c.name:21} {label:9} "
                + " ".join(f"{values[m]:9.4f}" for m in METRICS)
                + f" {latency}"
            )
    d = report.decision
    lines += [
        "",
        f"chosen: {report.chosen} -> {config.settings().model.name} version {report.version} "
        f"(run {report.run_id})",
    ]
    if d is not None:
        lines.append(("promoted to champion: " if d.promoted else "not promoted: ") + d.reason)
    return "\n".join(lines)


def report_validation(report: Report) -> str:
    if report.validation_as_of is None:
        return "stratified cross-validation (no later snapshot for a temporal validation)"
    return (
        f"stratified cross-validation, and temporal on {report.validation_as_of} "
        "(features and labels of that date)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamflow train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=schema.SNAPSHOTS["month_000"],
        help="snapshot date of the training set, YYYY-MM-DD (default: 2024-01-31)",
    )
    parser.add_argument(
        "--force", action="store_true", help="make the new version champion whatever its score"
    )
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default: 5)")
    parser.add_argument("--margin", type=float, default=None, help="override STREAMFLOW_PROMOTION_MARGIN")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    logs.setup()
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    try:
        report = train(args.as_of, force=args.force, folds=args.folds, margin=args.margin)
    except StreamflowError as exc:
        log.error("%s", exc)
        return exc.exit_code
    if args.json:
        doc = asdict(report)
        for c in doc["candidates"]:
            c.pop("model", None)
        print(json.dumps(doc, default=str))
    else:
        print(format_report(report))
    return 0
