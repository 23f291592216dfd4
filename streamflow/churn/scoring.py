"""Scoring users with the champion: :class:`Champion` holds the loaded version and scores complete
feature rows; :class:`ChampionWatcher` keeps one current in a long-running process (the API),
reloading it when the alias moves, without a moment where no model serves."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamflow.churn import features
from streamflow.churn.registry import ModelVersion
from streamflow.errors import StreamflowError, first_line

log = logging.getLogger("streamflow.churn.scoring")


class IncompatibleModel(StreamflowError):
    """The champion reads other features than this code provides."""


@dataclass
class Scored:
    """One user: the churn probability, or the features that kept it from being scored."""

    user_id: str
    probability: float | None
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Champion:
    """A loaded model version. ``compiled``: its :class:`streamflow.churn.compiled.CompiledScorer`
    (checked equal to the pipeline when it was built), which :meth:`score` uses; None: the pipeline
    scores."""

    version: ModelVersion
    model: Any = field(repr=False)
    compiled: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, version: ModelVersion | None = None) -> Champion:
        """The champion (or the given version), loaded; raises NoChampion, IncompatibleModel."""
        from streamflow.churn import registry
        from streamflow.churn.candidates import one_thread
        from streamflow.churn.compiled import CompiledScorer

        one_thread()
        version = version or registry.champion()
        if tuple(version.features) != tuple(features.NAMES):
            raise IncompatibleModel(
                f"model {version.name} version {version.version} reads {', '.join(version.features)}; "
                f"this StreamFlow provides {', '.join(features.NAMES)}"
            )
        model = registry.load(version)
        return cls(version, model, CompiledScorer.compile(model))

    def score(self, user_ids: Sequence[str], rows: Sequence[Mapping[str, object]]) -> list[Scored]:
        """Score each user's row (feature name -> value); a row with a missing feature is not scored."""
        out = [Scored(u, None, features.missing(row)) for u, row in zip(user_ids, rows)]
        complete = [i for i, s in enumerate(out) if not s.missing]
        if complete:
            chosen = [rows[i] for i in complete]
            if self.compiled is not None:
                probabilities = self.compiled.probabilities(chosen)
            else:
                probabilities = self.pipeline_probabilities(chosen)
            for i, p in zip(complete, probabilities):
                out[i].probability = float(p)
        return out

    def pipeline_probabilities(self, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
        """The registered pipeline's own probabilities for complete rows (through model_frame)."""
        return np.asarray(self.model.predict_proba(features.model_frame(rows))[:, 1], dtype=float)


class ChampionWatcher:
    """The current champion of a long-running process. :meth:`start` loads it in the background and
    then checks the alias every ``refresh`` seconds; a moved alias loads the new version first and
    then swaps it in, so every request is scored by a complete model, old or new. A failed load
    keeps the model that serves and is retried at the next check."""

    def __init__(self, refresh: float, on_change=None) -> None:
        self.refresh = refresh
        self.on_change = on_change
        self.current: Champion | None = None
        self.problem: str | None = "the model is loading"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> None:
        """Load the champion if the alias names another version than the one serving."""
        from streamflow.churn import registry

        try:
            # one registry read per check; the model's files are read only when the alias moved
            wanted = registry.champion_version()
            if self.current is not None and self.current.version.version == wanted:
                return
            loaded = Champion.load(registry.describe(wanted))
        except registry.NoChampion as exc:
            if self.current is None:
                self.problem = str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - keep serving what serves; say why once per check
            self.problem = (
                self.problem if self.current is not None else f"the model cannot be loaded: {first_line(exc)}"
            )
            log.warning("cannot load the champion: %s: %s", type(exc).__name__, first_line(exc))
            return
        previous, self.current, self.problem = self.current, loaded, None
        log.info(
            "serving model %s version %s%s",
            loaded.version.name,
            loaded.version.version,
            f" (was version {previous.version.version})" if previous else "",
        )
        if self.on_change is not None:
            self.on_change(loaded)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.refresh)
