"""Training = serving at the level of the score: ``streamflow verify --model champion``.

Every user of the warehouse is scored twice by the same model: once from the online store's row
(what the API serves) and once from the offline row that a training set built at "now" joins
(Feast's point-in-time retrieval). The two scores must be equal; any user whose scores differ,
or who can be scored on one side only, is reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from streamflow import config, schema
from streamflow.churn import features

log = logging.getLogger("streamflow.churn.parity")

TOLERANCE = 1e-12
"""Two scores closer than this are equal (the same model on the same values gives the same bits;
this only absorbs a last-bit difference of summation order)."""


@dataclass
class Mismatch:
    user_id: str
    online: float | None
    offline: float | None
    detail: str


@dataclass
class ParityReport:
    model: str
    version: str
    users: int
    scored: int
    seconds: float
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_text(self, examples: int = 10) -> str:
        lines = [
            f"model {self.model} version {self.version}: {self.users:,} users, {self.scored:,} scored "
            f"from both the online and the offline row, {len(self.mismatches):,} differ "
            f"({self.seconds:.1f} s)"
        ]
        for m in self.mismatches[:examples]:
            lines.append(f"  {m.user_id}: online {m.online}, offline {m.offline}: {m.detail}")
        if len(self.mismatches) > examples:
            lines.append(f"  ... and {len(self.mismatches) - examples:,} more")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "version": self.version,
            "users": self.users,
            "scored": self.scored,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "mismatches": [m.__dict__ for m in self.mismatches],
        }


def warehouse_users() -> list[str]:
    """Every user of the newest snapshot of the model's first view, in id order."""
    import psycopg

    table = schema.table_for_feature_view(features.MODEL_VIEWS[0])
    with psycopg.connect(config.postgres().conninfo, connect_timeout=5) as conn:
        rows = conn.execute(f"SELECT DISTINCT {schema.KEY} FROM {table.snapshot_table} ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def offline_rows(user_ids: list[str], now: datetime) -> list[dict]:
    """The rows a training set at ``now`` joins for these users (Feast's point-in-time retrieval)."""
    from streamflow.feature_store import database_errors, get_store

    entity_df = pd.DataFrame({schema.KEY: user_ids, "event_timestamp": [now] * len(user_ids)})
    with database_errors("offline rows"):
        frame = get_store().get_historical_features(entity_df=entity_df, features=features.refs()).to_df()
    frame = frame.drop_duplicates(schema.KEY).set_index(schema.KEY).reindex(user_ids)
    columns = [[_plain(v) for v in frame[name].to_numpy(dtype=object)] for name in features.NAMES]
    return [dict(zip(features.NAMES, values)) for values in zip(*columns)]


def _plain(value):
    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def check(champion, now: datetime | None = None) -> ParityReport:
    """Score every warehouse user from both rows with ``champion`` (a scoring.Champion)."""
    from streamflow.online_features import lookup

    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    users = warehouse_users()
    online = [{n: row.get(n) for n in features.NAMES} for row in lookup(users)] if users else []
    offline = offline_rows(users, now) if users else []
    from_online = champion.score(users, online)
    from_offline = champion.score(users, offline)
    report = ParityReport(champion.version.name, champion.version.version, len(users), 0, 0.0)
    for on_row, off_row, a, b in zip(online, offline, from_online, from_offline):
        if a.probability is None or b.probability is None:
            if a.missing != b.missing:
                detail = f"missing online: {a.missing or 'none'}; missing offline: {b.missing or 'none'}"
                report.mismatches.append(Mismatch(a.user_id, a.probability, b.probability, detail))
            continue
        report.scored += 1
        if abs(a.probability - b.probability) > TOLERANCE:
            differ = [n for n in features.NAMES if on_row.get(n) != off_row.get(n)]
            detail = (
                ("features differ: " + ", ".join(differ)) if differ else "same features, different scores"
            )
            report.mismatches.append(Mismatch(a.user_id, a.probability, b.probability, detail))
    report.mismatches += scorer_mismatches(champion, users, offline, from_offline)
    report.seconds = time.perf_counter() - started
    return report


def scorer_mismatches(champion, users: list[str], rows: list[dict], scored: list) -> list[Mismatch]:
    """Users whose score by the champion's serving scorer (``scored``: ``champion.score(users,
    rows)``) differs from the registered pipeline's own on the same row: the compiled encoding
    (streamflow.churn.compiled) checked on every user, not only on its probe rows. None when the
    champion scores through the pipeline."""
    if getattr(champion, "compiled", None) is None:
        return []
    complete = [i for i, s in enumerate(scored) if s.probability is not None]
    if not complete:
        return []
    theirs = champion.pipeline_probabilities([rows[i] for i in complete])
    out = []
    for i, p in zip(complete, theirs):
        if abs(scored[i].probability - float(p)) > TOLERANCE:
            detail = "the serving scorer and the registered pipeline differ on the same row"
            out.append(Mismatch(users[i], scored[i].probability, float(p), detail))
    return out
