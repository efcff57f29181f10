"""Every pause of the cyclic garbage collector lands in loyalty_gc_pause_seconds, under its
generation, however often the timing is switched on."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY

from shared.metrics import time_gc_pauses


def pauses(generation: int) -> tuple[float, float]:
    labels = {"generation": str(generation)}
    count = REGISTRY.get_sample_value("loyalty_gc_pause_seconds_count", labels)
    total = REGISTRY.get_sample_value("loyalty_gc_pause_seconds_sum", labels)
    assert count is not None and total is not None
    return count, total


def test_each_collection_is_timed_once_under_its_generation() -> None:
    time_gc_pauses()
    time_gc_pauses()  # a second server in the same process: still one callback
    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collection between the readings
    try:
        count_before, total_before = pauses(1)
        others_before = pauses(0)[0], pauses(2)[0]

        garbage: list[object] = []
        garbage.append(garbage)  # a cycle only the collector frees
        del garbage
        gc.collect(1)

        count_after, total_after = pauses(1)
        assert count_after == count_before + 1
        assert total_after > total_before
        assert (pauses(0)[0], pauses(2)[0]) == others_before
    finally:
        if was_enabled:
            gc.enable()
