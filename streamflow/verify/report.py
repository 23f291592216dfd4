"""What ``streamflow verify`` found: counts per view and column, a few examples each; text and JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from streamflow.verify.values import show

EVENT_TIME = "event_timestamp"
"""Pseudo-column: the online event time against the offline row's as_of (and the snapshot's)."""


@dataclass
class Users:
    """Users in one category (e.g. only online): how many, and the first few ids."""

    limit: int
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, user_id: str) -> None:
        self.count += 1
        if len(self.examples) < self.limit:
            self.examples.append(user_id)

    def to_json(self) -> dict:
        return {"count": self.count, "examples": self.examples}


@dataclass
class ColumnMismatches:
    limit: int
    online_offline: int = 0
    offline_snapshot: int = 0
    examples: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.online_offline + self.offline_snapshot

    def wants_example(self) -> bool:
        return len(self.examples) < self.limit

    def to_json(self) -> dict:
        return {
            "online_offline": self.online_offline,
            "offline_snapshot": self.offline_snapshot,
            "examples": self.examples,
        }


@dataclass
class ViewReport:
    view: str
    table: str
    limit: int
    snapshot: bool
    users: int = 0
    online: int = 0
    offline: int = 0
    snapshot_rows: int = 0
    users_with_mismatches: int = 0
    rows_decoded: int = 0
    """Online rows whose bytes differed from the offline row's encoding, compared value by value."""
    seconds: float = 0.0
    only_online: Users = None  # type: ignore[assignment]
    only_offline: Users = None  # type: ignore[assignment]
    only_snapshot: Users = None  # type: ignore[assignment]
    """In the snapshot file, not offline."""
    not_in_snapshot: Users = None  # type: ignore[assignment]
    """Offline, not in the snapshot file."""
    columns: dict[str, ColumnMismatches] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("only_online", "only_offline", "only_snapshot", "not_in_snapshot"):
            setattr(self, name, Users(self.limit))

    def column(self, name: str) -> ColumnMismatches:
        found = self.columns.get(name)
        if found is None:
            found = self.columns[name] = ColumnMismatches(self.limit)
        return found

    @property
    def missing(self) -> int:
        """Users one side lacks."""
        sides = (self.only_online, self.only_offline, self.only_snapshot, self.not_in_snapshot)
        return sum(u.count for u in sides)

    @property
    def mismatches(self) -> int:
        return self.missing + sum(c.total for c in self.columns.values())

    def to_json(self) -> dict:
        out = {
            "table": self.table,
            "users": self.users,
            "online": self.online,
            "offline": self.offline,
            "mismatches": self.mismatches,
            "users_with_mismatches": self.users_with_mismatches,
            "only_online": self.only_online.to_json(),
            "only_offline": self.only_offline.to_json(),
            "columns": {name: c.to_json() for name, c in self.columns.items()},
            "rows_decoded": self.rows_decoded,
            "seconds": round(self.seconds, 3),
        }
        if self.snapshot:
            out.update(
                snapshot=self.snapshot_rows,
                only_snapshot=self.only_snapshot.to_json(),
                not_in_snapshot=self.not_in_snapshot.to_json(),
            )
        return out


@dataclass
class Report:
    checked_at: datetime
    database: str
    project: str
    views: dict[str, ViewReport]
    snapshot_dir: Path | None = None
    snapshot_as_of: date | None = None
    seconds: float = 0.0

    @property
    def users(self) -> int:
        """Users of the view that has the most (every view normally has every user)."""
        return max((v.users for v in self.views.values()), default=0)

    @property
    def mismatches(self) -> int:
        return sum(v.mismatches for v in self.views.values())

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def to_json(self) -> dict:
        snapshot = None
        if self.snapshot_dir is not None:
            assert self.snapshot_as_of is not None  # verify() sets both or neither
            snapshot = {"dir": str(self.snapshot_dir), "as_of": self.snapshot_as_of.isoformat()}
        return {
            "ok": self.ok,
            "users": self.users,
            "mismatches": self.mismatches,
            "checked_at": show(self.checked_at),
            "database": self.database,
            "project": self.project,
            "snapshot": snapshot,
            "views": {name: v.to_json() for name, v in self.views.items()},
            "seconds": round(self.seconds, 3),
        }

    def to_text(self) -> str:
        snap = self.snapshot_dir is not None
        against = f"the newest offline row at or before {show(self.checked_at)}"
        lines = [
            f"verify {self.database} (project {self.project}): online values against {against}"
            + (
                f", offline rows against snapshot {self.snapshot_dir} (as_of {self.snapshot_as_of})"
                if snap
                else ""
            )
        ]
        head = ["view", "users", "online", "offline"] + (["snapshot"] if snap else []) + ["mismatches"]
        rows: list[list[Any]] = [
            [v.view, v.users, v.online, v.offline] + ([v.snapshot_rows] if snap else []) + [v.mismatches]
            for v in self.views.values()
        ]
        widths = [max(len(_n(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            lines.append(
                "  "
                + "  ".join(
                    _n(x).ljust(w) if i == 0 else _n(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths))
                )
            )
        for v in self.views.values():
            lines += _problems(v, snap)
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {_count(self.mismatches, 'mismatch')}, {_count(self.users, 'user')}, "
            f"{_count(len(self.views), 'view')}, {self.seconds:.2f} s"
        )
        return "\n".join(lines)


def _n(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "es" if word.endswith("h") else "s")


def _problems(v: ViewReport, snap: bool) -> list[str]:
    lines = []
    for label, users in (
        ("only online", v.only_online),
        ("only offline", v.only_offline),
        ("in the snapshot, not offline", v.only_snapshot),
        ("offline, not in the snapshot", v.not_in_snapshot),
    ):
        if users.count:
            more = " ..." if users.count > len(users.examples) else ""
            ids = ", ".join(users.examples)
            lines.append(f"  {v.view}: {_count(users.count, 'user')} {label}: {ids}{more}")
    for name, c in v.columns.items():
        what = f"online != offline {c.online_offline:,}"
        if snap:
            what += f", offline != snapshot {c.offline_snapshot:,}"
        lines.append(f"  {v.view}.{name}: {_count(c.total, 'mismatch')} ({what})")
        for ex in c.examples:
            values = f"online {ex['online']!r}, offline {ex['offline']!r}"
            if snap:
                values += f", snapshot {ex['snapshot']!r}"
            lines.append(f"    {ex['user_id']}: {values}")
    return lines
