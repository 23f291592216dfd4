"""The API's lookup batcher (api.batcher) with a stand-in reader: no I/O, only the coalescing.

The reader records every read; a gate holds a read open so that requests pile up behind it.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.batcher import LookupBatcher
from api.features import UnknownFeatures, UserResult


class RecordingReader:
    def __init__(self) -> None:
        self.reads: list[tuple[list[str], tuple[str, ...] | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def lookup(self, user_ids, selection=None):
        self.reads.append((list(user_ids), None if selection is None else tuple(selection)))
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if selection is not None and "nope" in selection:
            raise UnknownFeatures(["nope"])
        return [UserResult(u, not u.startswith("0000"), {}) for u in user_ids]


def run(coro):
    return asyncio.run(coro)


def test_requests_of_one_loop_turn_go_out_as_one_read_and_each_gets_its_own_answer():
    reader = RecordingReader()
    batcher = LookupBatcher(reader)  # type: ignore[arg-type]
    asks = [["1111-AAAAA"], ["2222-BBBBB", "0000-ZZZZZ"], ["1111-AAAAA"], ["3333-CCCCC", "1111-AAAAA"]]

    async def main():
        try:
            return await asyncio.gather(*(batcher.lookup(ids, None) for ids in asks))
        finally:
            batcher.stop()

    answers = run(main())
    assert len(reader.reads) == 1
    assert reader.reads[0][0] == ["1111-AAAAA", "2222-BBBBB", "0000-ZZZZZ", "3333-CCCCC"]  # once each
    assert [[r.user_id for r in a] for a in answers] == asks
    assert [[r.found for r in a] for a in answers] == [[True], [True, False], [True], [True, True]]
    assert batcher.reads == 1 and batcher.requests == 4


def test_requests_arriving_during_a_read_wait_and_go_out_together():
    reader = RecordingReader()
    batcher = LookupBatcher(reader, max_inflight=1)  # type: ignore[arg-type]

    async def main():
        reader.gate.clear()
        first = asyncio.ensure_future(batcher.lookup(["1111-AAAAA"], None))
        await asyncio.get_running_loop().run_in_executor(None, reader.entered.wait, 10)
        later = [asyncio.ensure_future(batcher.lookup([f"{i}000-DDDDD"], None)) for i in range(1, 6)]
        await asyncio.sleep(0)  # let them queue
        assert len(reader.reads) == 1  # still held by the gate
        reader.gate.set()
        try:
            return await first, await asyncio.gather(*later)
        finally:
            batcher.stop()

    first, later = run(main())
    assert [r.user_id for r in first] == ["1111-AAAAA"]
    assert [a[0].user_id for a in later] == [f"{i}000-DDDDD" for i in range(1, 6)]
    assert [ids for ids, _ in reader.reads] == [["1111-AAAAA"], [f"{i}000-DDDDD" for i in range(1, 6)]]


def test_an_error_reaches_only_the_requests_of_its_selection():
    reader = RecordingReader()
    batcher = LookupBatcher(reader)  # type: ignore[arg-type]

    async def main():
        try:
            return await asyncio.gather(
                batcher.lookup(["1111-AAAAA"], ["nope"]),
                batcher.lookup(["2222-BBBBB"], None),
                batcher.lookup(["3333-CCCCC"], ["v:f"]),
                return_exceptions=True,
            )
        finally:
            batcher.stop()

    bad, everything, chosen = run(main())
    assert isinstance(bad, UnknownFeatures)
    assert [r.user_id for r in everything] == ["2222-BBBBB"]  # type: ignore[union-attr]
    assert [r.user_id for r in chosen] == ["3333-CCCCC"]  # type: ignore[union-attr]
    assert sorted(sel or () for _, sel in reader.reads) == [(), ("nope",), ("v:f",)]


def test_a_read_never_takes_more_than_max_keys_user_ids_but_always_one_request():
    reader = RecordingReader()
    batcher = LookupBatcher(reader, max_inflight=1, max_keys=4)  # type: ignore[arg-type]
    asks = [[f"{i}{j}00-EEEEE" for j in range(n)] for i, n in enumerate([3, 1, 2, 6, 1], start=1)]

    async def main():
        try:
            return await asyncio.gather(*(batcher.lookup(ids, None) for ids in asks))
        finally:
            batcher.stop()

    answers = run(main())
    assert [[r.user_id for r in a] for a in answers] == asks
    assert [len(ids) for ids, _ in reader.reads] == [4, 2, 6, 1]  # 3+1 | 2 (2+6 > 4) | 6 alone | 1


def test_max_inflight_must_be_positive():
    with pytest.raises(ValueError, match="max_inflight"):
        LookupBatcher(RecordingReader(), max_inflight=0)  # type: ignore[arg-type]


def test_a_full_queue_refuses_a_request_at_once_and_takes_requests_again_once_read():
    from api.batcher import Overloaded

    reader = RecordingReader()
    batcher = LookupBatcher(reader, max_inflight=1, max_keys=4, max_waiting=5)  # type: ignore[arg-type]

    async def main():
        reader.gate.clear()
        held = asyncio.ensure_future(batcher.lookup(["1000-HHHHH"], None))  # the read in flight
        await asyncio.get_running_loop().run_in_executor(None, reader.entered.wait, 10)
        waiting = [
            asyncio.ensure_future(batcher.lookup([f"{i}100-WWWWW", f"{i}200-WWWWW"], None)) for i in (1, 2)
        ]
        await asyncio.sleep(0)  # 4 user ids wait
        with pytest.raises(Overloaded, match="4 user ids already wait"):
            await batcher.lookup(["3100-RRRRR", "3200-RRRRR"], None)  # 6 > 5: refused, not queued
        fits = asyncio.ensure_future(batcher.lookup(["4100-FFFFF"], None))  # 5: taken
        await asyncio.sleep(0)
        reader.gate.set()
        try:
            answers = await asyncio.gather(held, *waiting, fits)
            return answers, await batcher.lookup(["5100-AAAAA", "5200-AAAAA"], None)  # drained: taken
        finally:
            batcher.stop()

    answers, after = run(main())
    assert [r.user_id for r in answers[-1]] == ["4100-FFFFF"]
    assert [r.user_id for r in after] == ["5100-AAAAA", "5200-AAAAA"]
    assert batcher.refused == 1
    assert not any("3100-RRRRR" in ids for ids, _ in reader.reads)  # the refused one never read


def test_a_request_larger_than_the_bound_is_taken_when_it_waits_alone():
    reader = RecordingReader()
    batcher = LookupBatcher(reader, max_waiting=2)  # type: ignore[arg-type]

    async def main():
        try:
            return await batcher.lookup([f"{i}000-LLLLL" for i in range(1, 6)], None)
        finally:
            batcher.stop()

    assert len(run(main())) == 5


class BulkHoldingReader(RecordingReader):
    """Reads of more than 10 user ids wait for the gate; smaller ones go through."""

    def lookup(self, user_ids, selection=None):
        self.reads.append((list(user_ids), None))
        if len(user_ids) > 10:
            self.entered.set()
            assert self.gate.wait(10), "the test never opened the gate"
        return [UserResult(u, True, {}) for u in user_ids]


def test_small_lookups_are_not_stuck_behind_large_ones():
    reader = BulkHoldingReader()
    batcher = LookupBatcher(reader, max_inflight=2, max_keys=1000, large_chunk=1000)  # type: ignore[arg-type]
    bulk = [f"{i:04d}-BULKK" for i in range(500)]

    async def main():
        reader.gate.clear()
        first = asyncio.ensure_future(batcher.lookup(bulk, None))  # holds one thread
        await asyncio.get_running_loop().run_in_executor(None, reader.entered.wait, 10)
        second = asyncio.ensure_future(batcher.lookup(bulk[:300], None))  # may not take the last thread
        small = asyncio.ensure_future(batcher.lookup(["1234-SMALL"], None))
        answer = await asyncio.wait_for(small, 5)  # answered while both large ones wait
        held = [len(ids) for ids, _ in reader.reads]
        reader.gate.set()
        try:
            await asyncio.gather(first, second)
            return answer, held
        finally:
            batcher.stop()

    answer, held = run(main())
    assert [r.user_id for r in answer] == ["1234-SMALL"]
    assert held == [500, 1]  # the second large request had not been read yet
    assert sorted(len(ids) for ids, _ in reader.reads) == [1, 300, 500]


def test_a_rendered_lookup_is_rendered_on_the_lookup_thread_and_a_failed_render_fails_only_its_request():
    reader = RecordingReader()
    batcher = LookupBatcher(reader)  # type: ignore[arg-type]
    loop_thread = threading.current_thread()
    rendered_on: list[threading.Thread] = []

    def render(results):
        rendered_on.append(threading.current_thread())
        return ",".join(r.user_id for r in results).encode()

    def broken(results):
        raise ValueError("cannot render")

    async def main():
        try:
            return await asyncio.gather(
                batcher.lookup_rendered(["1111-AAAAA", "2222-BBBBB"], None, render),
                batcher.lookup_rendered(["3333-CCCCC"], None, broken),
                batcher.lookup(["4444-DDDDD"], None),
                return_exceptions=True,
            )
        finally:
            batcher.stop()

    rendered, failed, plain = run(main())
    assert len(reader.reads) == 1  # one read for all three
    assert rendered == b"1111-AAAAA,2222-BBBBB"
    assert isinstance(failed, ValueError) and str(failed) == "cannot render"
    assert [r.user_id for r in plain] == ["4444-DDDDD"]
    assert rendered_on and all(t is not loop_thread and t.name.startswith("api-lookup") for t in rendered_on)


class TimedReader:
    """Each read takes 10 ms of a fake clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.reads: list[int] = []

    def clock(self) -> float:
        return self.now

    def lookup(self, user_ids, selection=None):
        self.reads.append(len(user_ids))
        self.now += 0.01
        return [UserResult(u, True, {}) for u in user_ids]


@pytest.mark.parametrize(
    ("share", "small_first", "rests"),
    [(0.5, False, []), (0.5, True, [0.01, 0.01]), (0.25, True, [0.03, 0.03]), (1.0, True, [])],
    ids=["no-small-requests", "half", "quarter", "share-1"],
)
def test_a_large_read_goes_by_chunks_and_rests_only_while_small_requests_are_served(
    share, small_first, rests
):
    reader = TimedReader()
    slept: list[float] = []
    batcher = LookupBatcher(
        reader,  # type: ignore[arg-type]
        large_chunk=50,
        large_share=share,
        clock=reader.clock,
        sleep=slept.append,
    )
    bulk = [f"{i:04d}-BULKK" for i in range(120)]

    async def main():
        try:
            if small_first:
                await batcher.lookup(["1234-SMALL"], None)
            return await batcher.lookup(bulk, None)
        finally:
            batcher.stop()

    answer = run(main())
    assert [r.user_id for r in answer] == bulk
    assert reader.reads == ([1] if small_first else []) + [50, 50, 20]
    assert slept == pytest.approx(rests)


def test_large_reads_stop_resting_once_small_requests_are_gone():
    reader = TimedReader()
    slept: list[float] = []
    batcher = LookupBatcher(reader, large_chunk=50, clock=reader.clock, sleep=slept.append)  # type: ignore[arg-type]

    async def main():
        try:
            await batcher.lookup(["1234-SMALL"], None)
            reader.now += 1.5  # the last small request was read 1.5 s ago
            return await batcher.lookup([f"{i:04d}-BULKK" for i in range(120)], None)
        finally:
            batcher.stop()

    run(main())
    assert slept == []


def test_large_share_must_be_a_share():
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="large_share"):
            LookupBatcher(RecordingReader(), large_share=share)  # type: ignore[arg-type]


@pytest.mark.parametrize(("threads", "reads"), [(2, [1, 20]), (1, [21])])
def test_a_read_carries_small_or_large_requests_and_both_only_with_one_thread(threads, reads):
    reader = RecordingReader()
    batcher = LookupBatcher(reader, max_inflight=threads)  # type: ignore[arg-type]
    bulk = [f"{i:04d}-BULKK" for i in range(20)]

    async def main():
        try:
            return await asyncio.gather(batcher.lookup(["1234-SMALL"], None), batcher.lookup(bulk, None))
        finally:
            batcher.stop()

    small, large = run(main())
    assert [r.user_id for r in small] == ["1234-SMALL"] and [r.user_id for r in large] == bulk
    assert sorted(len(ids) for ids, _ in reader.reads) == reads
