"""How long Kafka has been away, with the consumer's backoff and its outage budget.

Every call the consumer makes to its Kafka client goes through ``Outage.call``: an error is one log
line, then a backoff, then the loop carries on. After ``rebuild_after`` failures in a row (or one
error that is not a ``KafkaError``, which means the client's own state is broken) the caller is
told to replace the client. Only when the outage has lasted longer than the budget
(``--max-outage``) does ``OutageExceeded`` end the consumer, with one clear line; without a budget
it waits forever.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import traceback

from kafka.errors import KafkaError

from streamflow.errors import AuthenticationFailed, ServiceUnavailable

log = logging.getLogger("consumer")


class OutageExceeded(ServiceUnavailable):
    """Kafka was unreachable for longer than the consumer's outage budget."""


class Outage:
    def __init__(
        self,
        servers: str,
        stopping: threading.Event,
        *,
        max_outage: float | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 5.0,
        rebuild_after: int = 3,
        clock=time.monotonic,
    ):
        self.servers = servers
        self.stopping = stopping
        self.max_outage = max_outage
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rebuild_after = rebuild_after
        self.clock = clock
        self.since: float | None = None
        """When the current outage began (None: Kafka answers)."""
        self.failures = 0
        """Failed client calls in a row."""
        self.total_errors = 0
        self.outages = 0
        self.rebuild_wanted = False
        self._delay = backoff_initial
        self.busy: tuple[str, float, int] | None = None
        """The client call in progress: what, since when, in which thread (for the watchdog)."""

    def ok(self) -> None:
        """A client call succeeded: the outage, if any, is over."""
        if self.since is not None:
            log.info(
                "Kafka answers again after %.1f s (%d failed calls)", self.clock() - self.since, self.failures
            )
        self.since = None
        self.failures = 0
        self._delay = self.backoff_initial

    @property
    def seconds(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since

    def failed(self, what: str, exc: BaseException) -> None:
        """A client call failed: log one line, check the budget, back off."""
        now = self.clock()
        if self.since is None:
            self.since = now
            self.outages += 1
        self.failures += 1
        self.total_errors += 1
        broken = not isinstance(exc, KafkaError)
        if broken or self.failures >= self.rebuild_after:
            self.rebuild_wanted = True
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        log.warning(
            "Kafka %s failed (%s%s), outage %.1f s; retrying in %.1f s",
            what,
            type(exc).__name__,
            f": {first}" if first else "",
            now - self.since,
            self._delay,
        )
        self.check_budget()
        self.stopping.wait(self._delay)
        self._delay = min(self._delay * 2, self.backoff_max)
        self.check_budget()

    def check_budget(self) -> None:
        if self.max_outage is not None and self.since is not None and self.seconds > self.max_outage:
            raise OutageExceeded(
                f"Kafka at {self.servers} unreachable for {self.seconds:.0f} s, more than the outage budget "
                f"(--max-outage {self.max_outage:g} s): giving up; nothing past the last commit was committed"
            )

    @contextlib.contextmanager
    def watching(self, what: str):
        """Marks a client call in progress, so the watchdog can tell one that never returns."""
        self.busy = (what, self.clock(), threading.get_ident())
        try:
            yield
        finally:
            self.busy = None

    def call(self, what: str, fn, *args, default=None, **kwargs):
        """fn(*args, **kwargs); on any error: failed(), and ``default`` is returned."""
        try:
            with self.watching(what):
                result = fn(*args, **kwargs)
        except (OutageExceeded, AuthenticationFailed):
            raise
        except Exception as exc:  # noqa: BLE001 - no error the client raises ends the consumer
            self.failed(what, exc)
            return default
        return result

    def connect(self, what: str, build):
        """build() until it succeeds (a client needs a broker to start), within the budget; refused
        credentials end it at once (waiting does not change them)."""
        while True:
            try:
                client = build()
            except (OutageExceeded, AuthenticationFailed):
                raise
            except Exception as exc:  # noqa: BLE001 - not reachable yet
                if self.stopping.is_set():
                    raise
                self.failed(what, exc)
                continue
            self.ok()
            return client


class Watchdog:
    """A daemon thread that catches a client call that never returns.

    Every call the consumer makes to its Kafka client is bounded by a timeout of its own (poll
    0.5 s, commit and offsets by the request timeout), so a call still running after ``limit``
    seconds means the client hangs. The watchdog then logs the call and where it hangs (once per
    call) and calls ``on_hang``, which closes the client: the call returns or raises, and the loop
    replaces the client."""

    def __init__(self, outage: Outage, limit: float, on_hang, *, every: float = 1.0):
        self.outage = outage
        self.limit = limit
        self.on_hang = on_hang
        self.every = every
        self.hangs = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-call-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        reported = None
        while not self._done.wait(self.every):
            busy = self.outage.busy
            if busy is None or busy is reported or self.outage.clock() - busy[1] < self.limit:
                continue
            reported = busy
            what, since, thread_id = busy
            frame = sys._current_frames().get(thread_id)  # noqa: SLF001 - the one way to see a hang
            where = "".join(traceback.format_stack(frame)[-6:]) if frame is not None else "(no stack)\n"
            self.hangs += 1
            log.warning(
                "Kafka %s has not returned for %.0f s (its own timeout is far shorter): closing the "
                "client so that the loop replaces it; it hangs in:\n%s",
                what,
                self.outage.clock() - since,
                where.rstrip(),
            )
            try:
                self.on_hang()
            except Exception:  # noqa: BLE001 - the watchdog never dies
                log.debug("closing the hung client failed", exc_info=True)
