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

Small requests (at most ``small_keys`` user ids: a model server asking for one user) are never
stuck behind large ones: a read takes the small requests first and then no large one (unless it
has the only thread), and large requests may hold every read thread but one, so a burst of
1,000-id requests leaves one thread to the lookups of everyone else.

A large read yields to the small ones: it goes to the database in chunks of ``large_chunk``
user ids, and while small requests are being served (one was read within the last
``SMALL_RECENT`` seconds) it rests after each chunk, so that large reads hold their thread (and
the interpreter lock, which every request needs) at most ``large_share`` of the time. With no
small requests around, a large read runs at full speed.

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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from api.features import MAX_BATCH, FeatureReader, FeaturesUnavailable, UserResult

log = logging.getLogger("api.batcher")

Selection = tuple[str, ...] | None
R = TypeVar("R")

SMALL_KEYS = 10
"""Requests of at most this many user ids are small (see the module)."""

MAX_WAITING = 20 * MAX_BATCH
"""User ids that may wait for a read at most (by default): 20 full batches."""

LARGE_CHUNK = 50
"""User ids per database read of a large request (by default)."""

LARGE_SHARE = 0.5
"""The share of its thread's time a large read may take while small requests are served (by default)."""

SMALL_RECENT = 1.0
"""Seconds after a small read during which large reads yield (see the module)."""


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
    render: Callable[[list[UserResult]], Any] | None = field(default=None, repr=False)


@dataclass
class _RenderFailed:
    error: Exception


class LookupBatcher:
    """Coalesces the lookups of concurrent requests into few database reads (see the module)."""

    def __init__(
        self,
        reader: FeatureReader,
        max_inflight: int = 2,
        max_keys: int = MAX_BATCH,
        max_waiting: int = MAX_WAITING,
        small_keys: int = SMALL_KEYS,
        large_chunk: int = LARGE_CHUNK,
        large_share: float = LARGE_SHARE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        if not 0 < large_share <= 1:
            raise ValueError(f"large_share must be in (0, 1], got {large_share}")
        self.reader = reader
        self.max_inflight = max_inflight
        self.max_keys = max(max_keys, 1)
        self.max_waiting = max(max_waiting, 1)
        self.small_keys = small_keys
        self.large_chunk = max(large_chunk, 1)
        self.large_share = large_share
        self._clock = clock
        self._sleep = sleep
        self._last_small = float("-inf")
        """When a small read last started (``clock``)."""
        self._large_inflight = 0
        """Reads running that carry a large request."""
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
        return await self._submit(user_ids, selection, None)

    async def lookup_rendered(
        self,
        user_ids: Sequence[str],
        selection: Sequence[str] | None,
        render: Callable[[list[UserResult]], R],
    ) -> R:
        """``render(await lookup(user_ids, selection))``, with ``render`` run on the lookup thread
        right after the read: a large answer is built (and serialized) off the event loop, so the
        loop stays free for other requests. Raises what :meth:`lookup` raises, and what ``render``
        raises."""
        return await self._submit(user_ids, selection, render)

    async def _submit(self, user_ids: Sequence[str], selection: Sequence[str] | None, render) -> Any:
        if self._pending and self._waiting + len(user_ids) > self.max_waiting:
            self.refused += 1
            raise Overloaded(self._waiting, self.max_waiting)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(
            _Pending(user_ids, tuple(selection) if selection is not None else None, future, render)
        )
        self._waiting += len(user_ids)
        if self._inflight < self.max_inflight and not self._launch_due:
            self._launch_due = True
            asyncio.get_running_loop().call_soon(self._launch)
        return await future

    def _large_allowed(self) -> bool:
        """Whether a read may carry a large request: one read thread stays for the small ones."""
        return self.max_inflight == 1 or self._large_inflight < self.max_inflight - 1

    def _take(self) -> tuple[list[_Pending], bool]:
        """The next read: the oldest small requests, then (when allowed) the oldest large ones, up
        to ``max_keys`` user ids but always at least one request; whether it carries a large one."""
        large_allowed = self._large_allowed()
        taken: list[_Pending] = []
        keys, large = 0, False
        for wanted_small in (True, False):
            if not wanted_small and (not large_allowed or (taken and self.max_inflight > 1)):
                break  # (small requests never wait in a large read when another thread may take it)
            for pending in self._pending:
                if (len(pending.user_ids) <= self.small_keys) != wanted_small:
                    continue
                if taken and keys + len(pending.user_ids) > self.max_keys:
                    break
                taken.append(pending)
                keys += len(pending.user_ids)
                large = large or not wanted_small
        chosen = {id(p) for p in taken}
        self._pending = [p for p in self._pending if id(p) not in chosen]
        self._waiting -= keys
        return taken, large

    def _launch(self) -> None:
        """Start reads for the pending requests while threads are free and they may take them."""
        self._launch_due = False
        while self._pending and self._inflight < self.max_inflight:
            batch, large = self._take()
            if not batch:
                return  # only large requests wait, and the threads they may use are busy
            self._inflight += 1
            self._large_inflight += large
            asyncio.get_running_loop().create_task(self._run(batch, large))

    async def _run(self, batch: list[_Pending], large: bool = False) -> None:
        try:
            self.start()
            loop = asyncio.get_running_loop()
            groups: dict[Selection, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault(pending.selection, []).append(pending)
            for selection, members in groups.items():
                try:
                    answers = await loop.run_in_executor(
                        self._executor, self._read, selection, members, large
                    )
                except Exception as exc:  # noqa: BLE001 - handed to the requests it concerns
                    for pending in members:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                self.reads += 1
                self.requests += len(members)
                for pending, answer in zip(members, answers):
                    if pending.future.done():  # (a client that went away cancelled it)
                        continue
                    if isinstance(answer, _RenderFailed):
                        pending.future.set_exception(answer.error)
                    else:
                        pending.future.set_result(answer)
        finally:
            self._inflight -= 1
            self._large_inflight -= large
            if self._pending and self._inflight < self.max_inflight and not self._launch_due:
                self._launch()

    def _lookup(self, user_ids: Sequence[str], selection: Selection, large: bool) -> list[UserResult]:
        """The users' features: a small read at once; a large one by chunks, yielding (see the module)."""
        if not large:
            self._last_small = self._clock()
            return self.reader.lookup(user_ids, selection)
        out: list[UserResult] = []
        for start in range(0, len(user_ids), self.large_chunk):
            began = self._clock()
            out.extend(self.reader.lookup(user_ids[start : start + self.large_chunk], selection))
            ended = self._clock()
            more = start + self.large_chunk < len(user_ids)
            if more and self.large_share < 1 and ended - self._last_small < SMALL_RECENT:
                self._sleep((ended - began) * (1 - self.large_share) / self.large_share)
        return out

    def _read(self, selection: Selection, members: list[_Pending], large: bool = False) -> list[Any]:
        """One read for every user of ``members`` (by chunks when ``large``), then each member's
        ``render`` of its users (on a lookup thread)."""
        if len(members) == 1:
            answers = [self._lookup(list(members[0].user_ids), selection, large)]
        else:
            everyone = list(dict.fromkeys(u for pending in members for u in pending.user_ids))
            by_user = {r.user_id: r for r in self._lookup(everyone, selection, large)}
            answers = [[by_user[u] for u in pending.user_ids] for pending in members]
        out: list[Any] = []
        for pending, answer in zip(members, answers):
            if pending.render is None:
                out.append(answer)
                continue
            try:
                out.append(pending.render(answer))
            except Exception as exc:  # noqa: BLE001 - this request's failure, not its neighbours'
                out.append(_RenderFailed(exc))
        return out
