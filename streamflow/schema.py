"""The table registry: the one source of truth for the six snapshot tables.

For each table it declares the columns (name, type, nullability, allowed values and ranges),
the key, the CSV file it comes from, the PostgreSQL base and snapshot tables it loads into,
its Feast push source and feature view, and the name its Kafka topic ends with
(``<prefix>.<name>``: :mod:`streamflow.topics`, where the deployment's prefix is read). The
generator, the loader, the producer, the consumer, the feature views and the API all read it;
nothing else declares a column. It is pure data: no setting is read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone

from streamflow import contract

KEY = "user_id"
"""Join key of every table, Kafka record key of every event, Feast entity join key."""

ENTITY = "user"
"""Name of the Feast entity."""

SNAPSHOT_TIME = "as_of"
"""Column of the snapshot tables that holds the event time (Feast's timestamp field)."""

EVENT_TIME = "event_timestamp"
"""Field of an event that carries its event time (ISO 8601, UTC)."""

EVENT_SNAPSHOT = "snapshot"
"""Field of an event that names the snapshot it was replayed from."""

EVENT_TABLE_HEADER = "table"
EVENT_TIME_HEADER = "event_timestamp"
REPLAY_HEADER = "streamflow_replay"
"""Header naming the replay (`streamflow produce` run) that sent an event: the lag monitor reports
a backlog of such events as a deliberate replay (REPLAY), not an alarm."""

FEATURE_SERVICE = "churn_model_v1"


@dataclass(frozen=True)
class Column:
    """One field of a table and its contract (checked by :mod:`streamflow.contract`).

    ``kind`` is one of :data:`streamflow.contract.KINDS`: id (text of ``format``), date,
    timestamp, integer, float (always finite), boolean, category (one of ``choices``). ``min`` and
    ``max`` bound integers and floats (inclusive). Every text format is ASCII.
    """

    name: str
    kind: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    format: contract.Format | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in contract.KINDS:
            raise ValueError(f"column {self.name}: unknown kind {self.kind!r}; known: {contract.KINDS}")
        if (self.kind == "category") != (self.choices is not None):
            raise ValueError(f"column {self.name}: choices go with kind category, and only with it")
        if (self.kind == "id") != (self.format is not None):
            raise ValueError(f"column {self.name}: a format goes with kind id, and only with it")

    @property
    def sql_type(self) -> str:
        return _SQL_TYPES[self.kind]

    @property
    def pandas_dtype(self) -> str:
        return _PANDAS_DTYPES[self.kind]


_SQL_TYPES = {
    "id": "TEXT",
    "category": "TEXT",
    "integer": "BIGINT",
    "float": "DOUBLE PRECISION",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMPTZ",
}

_PANDAS_DTYPES = {
    "id": "string",
    "category": "string",
    "integer": "Int64",
    "float": "Float64",
    "boolean": "boolean",
    "date": "datetime64[ns, UTC]",
    "timestamp": "datetime64[ns, UTC]",
}

KEY_COLUMN = Column(KEY, "id", format=contract.USER_ID, description="The user (join key, Kafka record key)")
EVENT_TIME_COLUMN = Column(EVENT_TIME, "timestamp", description="Event time: the snapshot's as_of, UTC")
SNAPSHOT_COLUMN = Column(
    EVENT_SNAPSHOT, "id", nullable=True, format=contract.SNAPSHOT_ID, description="The snapshot replayed"
)
"""The fields every event carries besides its table's columns (the key, the event time and the
snapshot); a push frame carries the same, with the event time in SNAPSHOT_TIME."""


@dataclass(frozen=True)
class Table:
    """A snapshot table: one CSV file, one Kafka topic, one push source, one feature view."""

    name: str
    columns: tuple[Column, ...]
    feature_view: str
    snapshot_table: str
    description: str
    in_feature_service: bool = True
    extra_base_columns: tuple[tuple[str, str], ...] = field(default=())
    """Columns the course's base table has but the CSV does not carry (left NULL)."""

    @property
    def file(self) -> str:
        return f"{self.name}.csv"

    @property
    def base_table(self) -> str:
        return self.name

    @property
    def push_source(self) -> str:
        return f"{self.name}_push"

    @property
    def batch_source(self) -> str:
        return f"{self.name}_source"

    @property
    def header(self) -> list[str]:
        """Exact header of the CSV file: the key, then the columns."""
        return [KEY] + [c.name for c in self.columns]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name!r}")


def _b(name: str, nullable: bool = False, description: str = "") -> Column:
    return Column(name, "boolean", nullable=nullable, description=description)


TABLES: tuple[Table, ...] = (
    Table(
        name="users",
        description="Who the user is: demographics and household.",
        feature_view="users_profile_fv",
        snapshot_table="users_snapshots",
        columns=(
            Column("signup_date", "date", min=None, max=None, description="Day the account was created"),
            Column("user_gender", "category", choices=("Female", "Male")),
            _b("user_is_senior"),
            _b("has_family"),
            _b("has_dependents"),
        ),
    ),
    Table(
        name="subscriptions",
        description="The user's plan, contract and billing.",
        feature_view="subs_profile_fv",
        snapshot_table="subscriptions_profile_snapshots",
        columns=(
            Column("months_active", "integer", min=0, max=1200),
            _b("plan_stream_tv", nullable=True, description="Empty (unknown) when net_service is No"),
            _b("plan_stream_movies", nullable=True, description="Empty (unknown) when net_service is No"),
            Column("contract_type", "category", choices=("Month-to-month", "One year", "Two year")),
            _b("paperless_billing"),
            Column("monthly_fee", "float", min=0, max=10_000),
            Column("total_paid", "float", min=0, max=10_000_000),
            Column("net_service", "category", choices=("DSL", "Fiber optic", "No")),
        ),
        extra_base_columns=(
            ("add_on_security", "BOOLEAN"),
            ("add_on_backup", "BOOLEAN"),
            ("add_on_device_protection", "BOOLEAN"),
            ("add_on_tech_support", "BOOLEAN"),
        ),
    ),
    Table(
        name="usage_agg_30d",
        description="Viewing over the last 30 (and 7) days.",
        feature_view="usage_agg_30d_fv",
        snapshot_table="usage_agg_30d_snapshots",
        columns=(
            Column("watch_hours_30d", "float", min=0, max=24 * 31),
            Column("avg_session_mins_7d", "float", min=0, max=24 * 60 * 7),
            Column("unique_devices_30d", "integer", min=0, max=1000),
            Column("skips_7d", "integer", min=0, max=1_000_000),
            Column("rebuffer_events_7d", "integer", min=0, max=1_000_000),
        ),
    ),
    Table(
        name="payments_agg_90d",
        description="Failed payments over the last 90 days.",
        feature_view="payments_agg_90d_fv",
        snapshot_table="payments_agg_90d_snapshots",
        columns=(Column("failed_payments_90d", "integer", min=0, max=1000),),
    ),
    Table(
        name="support_agg_90d",
        description="Support tickets over the last 90 days.",
        feature_view="support_agg_90d_fv",
        snapshot_table="support_agg_90d_snapshots",
        columns=(
            Column("support_tickets_90d", "integer", min=0, max=10_000),
            Column("ticket_avg_resolution_hrs_90d", "float", min=0, max=24 * 90),
        ),
    ),
    Table(
        name="labels",
        description="Whether the user churned (the training label).",
        feature_view="churn_labels_fv",
        snapshot_table="labels_snapshots",
        in_feature_service=False,
        columns=(_b("churn_label"),),
    ),
)

TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
FEATURE_TABLES: tuple[Table, ...] = tuple(t for t in TABLES if t.in_feature_service)
LABEL_TABLE: Table = TABLES_BY_NAME["labels"]


def table(name: str) -> Table:
    try:
        return TABLES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES_BY_NAME)}") from None


def online_table(project: str, view: str) -> str:
    """The online store's table of a feature view in a Feast project
    (streamflow.feast_stores.online.StreamflowOnlineStore)."""
    return f"{project}_{view}"


def table_for_feature_view(view: str) -> Table:
    for t in TABLES:
        if t.feature_view == view:
            return t
    raise KeyError(f"unknown feature view {view!r}")


# --- snapshots -------------------------------------------------------------------------------

SNAPSHOTS: dict[str, date] = {
    "month_000": date(2024, 1, 31),
    "month_001": date(2024, 2, 29),
}
"""Known snapshot ids and their as_of day (the event time of every row)."""


def snapshot_as_of(snapshot_id: str) -> date:
    """as_of day of a snapshot: known ids, or month_NNN = last day of the NNN-th month after 2024-01."""
    if snapshot_id in SNAPSHOTS:
        return SNAPSHOTS[snapshot_id]
    m = contract.SNAPSHOT_FOLDER.fullmatch(snapshot_id)
    if not m:
        raise ValueError(
            f"cannot tell the as_of date of snapshot {snapshot_id!r}: name it month_NNN "
            f"or pass the date explicitly"
        )
    n = int(m.group(1))
    year, month = 2024 + (n + 1) // 12, (n + 1) % 12 + 1
    first_of_next = date(year, month, 1)
    return date.fromordinal(first_of_next.toordinal() - 1)


def as_of_timestamp(day: date) -> datetime:
    """Event time of a snapshot day: midnight UTC."""
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def contract_fields() -> list[tuple[str, Column]]:
    """Every field of the registry as (where, column): the event fields, then each table's columns."""
    common = [("every event", c) for c in (KEY_COLUMN, EVENT_TIME_COLUMN, SNAPSHOT_COLUMN)]
    return common + [(t.name, c) for t in TABLES for c in t.columns]


def contract_markdown() -> str:
    """The contract of every field as the Markdown table of docs/reference/contract.md."""
    return contract.markdown_table(contract_fields())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m streamflow.schema", description="The table registry.")
    parser.add_argument(
        "--markdown", action="store_true", help="print the contract of every field as Markdown"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(contract_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
