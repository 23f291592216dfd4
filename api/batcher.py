"""Lookups of concurrent requests, read from PostgreSQL together.

Many model-serving processes ask at once. Served one by one, every request paid a thread-pool
hop, a pool checkout and a database round trip of its own, and a burst of ten requests queued
behind each other: at 200 req/s from ten clients the tail was eight times that of one client.

:class:`LookupBatcher` runs in the event loop. A request adds its user ids to the pending list
and awaits a future. When fewer than ``max_inflight`` reads are running, a read starts at the
end of the current turn of the event loop (``call_soon``): a burst of requests that arrived
together, whose handlers run in the same turn, goes out as one read, and a lone request waits
for nothing. While reads are running, requests that arrive wait for the next one, which takes
every pending request (up to ``max_keys`` user ids) and answers them all with one query per
feature selection. There is no timer: batching grows with load and costs no latency when idle.

The queue is bounded: when more than ``max_waiting`` user ids already wait for a read, a request
is refused at once with :class:`Overloaded` (a 503 with ``Retry-After``) instead of adding to a
backlog that every later request would wait behind.

The reads run on a small thread pool of their own (``max_inflight`` threads), through
:meth:`api.features.FeatureReader.lookup`, so the blocking psycopg calls never stall the loop,
and errors (unknown features, an unreachable database) reach exactly the requests they concern.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from api.features import MAX_BATCH, FeatureReader, FeaturesUnavailable, UserResult

log = logging.getLogger("api.batcher")

Selection = tuple[str, ...] | None

MAX_WAITING = 20 * MAX_BATCH
"""User ids that may wait for a read at most (by default): 20 full batches."""


class Overloaded(FeaturesUnavailable):
    """The lookup queue is full: the request is refused at once (503, ``Retry-After``)."""

    def __init__(self, waiting: int, limit: int):
        super().__init__(
            "api",
            f"the API is overloaded: {waiting:,} user ids already wait for a read (at most {limit:,}); "
            "retry shortly",
        )


@dataclass
class _Pending:
    user_ids: Sequence[str]
    selection: Selection
    future: asyncio.Future = field(repr=False)


class LookupBatcher:
    """Coalesces the lookups of concurrent requests into few database reads (see the module)."""

    def __init__(
        self,
        reader: FeatureReader,
        max_inflight: int = 2,
        max_keys: int = MAX_BATCH,
        max_waiting: int = MAX_WAITING,
    ):
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        self.reader = reader
        self.max_inflight = max_inflight
        self.max_keys = max(max_keys, 1)
        self.max_waiting = max(max_waiting, 1)
        self._pending: list[_Pending] = []
        self._waiting = 0
        """User ids of the pending requests."""
        self.refused = 0
        """Requests refused because the queue was full."""
        self._inflight = 0
        self._launch_due = False
        self._executor: ThreadPoolExecutor | None = None
        self.reads = 0
        """Database reads made (each answers one batch of requests)."""
        self.requests = 0
        """Requests answered through those reads."""

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="api-lookup")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    async def lookup(self, user_ids: Sequence[str], selection: Sequence[str] | None) -> list[UserResult]:
        """Features of each user, in the order asked; raises what FeatureReader.lookup raises, and
        :class:`Overloaded` when ``max_waiting`` user ids already wait (a request alone in the queue
        is always taken)."""
        if self._pending and self._waiting + len(user_ids) > self.max_waiting:
            self.refused += 1
            raise Overloaded(self._waiting, self.max_waiting)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(user_ids, tuple(selection) if selection is not None else None, future))
        self._waiting += len(user_ids)
        if self._inflight < self.max_inflight and not self._launch_due:
            self._launch_due = True
            asyncio.get_running_loop().call_soon(self._launch)
        return await future

    def _take(self) -> list[_Pending]:
        """The oldest pending requests, up to ``max_keys`` user ids (always at least one request)."""
        taken, keys = 0, 0
        for pending in self._pending:
            if taken and keys + len(pending.user_ids) > self.max_keys:
                break
            taken += 1
            keys += len(pending.user_ids)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._waiting -= keys
        return batch

    def _launch(self) -> None:
        self._launch_due = False
        batch = self._take()
        if not batch:
            return
        self._inflight += 1
        asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            self.start()
            loop = asyncio.get_running_loop()
            groups: dict[Selection, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.selection, []).append(pending)
            for selection, members in groups.items():
                try:
                    answers = await loop.run_in_executor(self._executor, self._read, selection, members)
                except Exception as exc:  # noqa: BLE001 - handed to the requests it concerns
                    for pending in members:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                self.reads += 1
                self.requests += len(members)
                for pending, answer in zip(members, answers):
                    if not pending.future.done():  # (a client that went away cancelled it)
                        pending.future.set_result(answer)
        finally:
            self._inflight -= 1
            if self._pending and self._inflight < self.max_inflight and not self._launch_due:
                self._launch()

    def _read(self, selection: Selection, members: list[_Pending]) -> list[list[UserResult]]:
        """One read for every user of ``members`` (on a lookup thread)."""
        if len(members) == 1:
            return [self.reader.lookup(members[0].user_ids, selection)]
        everyone = list(dict.fromkeys(u for pending in members for u in pending.user_ids))
        by_user = {r.user_id: r for r in self.reader.lookup(everyone, selection)}
        return [[by_user[u] for u in pending.user_ids] for pending in members]
