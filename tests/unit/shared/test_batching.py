"""The coalescer: concurrent items share calls, each gets its own result, failures reach everyone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.batching import Coalescer


class Recorder:
    def __init__(self, *, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.release = asyncio.Event()

    async def send(self, items: Sequence[int]) -> list[int]:
        self.calls.append(list(items))
        await self.release.wait()
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        return [item * 10 for item in items]


async def test_items_arriving_during_a_call_share_the_next_call() -> None:
    recorder = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(recorder.send, batch_size_max=100, calls_in_flight_max=1)
    first = asyncio.ensure_future(coalescer.submit(0))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(coalescer.submit(i)) for i in range(1, 6)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 0
    assert [await r for r in rest] == [10, 20, 30, 40, 50]
    assert recorder.calls == [[0], [1, 2, 3, 4, 5]]


async def test_batches_respect_the_size_bound_and_item_sizes() -> None:
    recorder = Recorder()
    recorder.release.set()
    coalescer: Coalescer[int, int] = Coalescer(recorder.send, batch_size_max=4, calls_in_flight_max=1)
    results = await asyncio.gather(*(coalescer.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert all(len(call) <= 4 for call in recorder.calls)
    assert sorted(i for call in recorder.calls for i in call) == list(range(10))
    with pytest.raises(ValueError, match="exceeds the batch size"):
        await Coalescer(recorder.send, batch_size_max=2, calls_in_flight_max=1, size_of=lambda _: 3).submit(1)


async def test_a_failed_call_fails_only_its_own_items() -> None:
    recorder = Recorder(fail_on=3)
    recorder.release.set()
    coalescer: Coalescer[int, int] = Coalescer(recorder.send, batch_size_max=2, calls_in_flight_max=1)
    outcomes = await asyncio.gather(*(coalescer.submit(i) for i in range(6)), return_exceptions=True)
    failed = {i for i, outcome in enumerate(outcomes) if isinstance(outcome, RuntimeError)}
    assert 3 in failed
    assert all(outcomes[i] == i * 10 for i in range(6) if i not in failed)
    batch_with_three = next(call for call in recorder.calls if 3 in call)
    assert failed == set(batch_with_three)


async def test_a_wrong_number_of_results_is_an_error_for_every_item() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return list(items)[1:]

    coalescer: Coalescer[int, int] = Coalescer(short, batch_size_max=10, calls_in_flight_max=1)
    outcomes = await asyncio.gather(*(coalescer.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
