"""Side-by-side timing: a model operation and its baseline, interleaved, medians.

Each repetition runs an untimed ``reset`` (e.g. re-writing the pages a punch freed),
then times one batch of ``ops`` operations with the garbage collector off (as
``timeit`` does). Repetitions alternate which side goes first, so drift in the
machine's speed (other load, frequency) falls on both sides alike.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Side:
    """One side of a pair: ``run`` performs ``ops`` operations; ``reset`` prepares it.

    A ``run`` that times itself (an external program that excludes its own start-up)
    returns its seconds per operation as a ``float``; that replaces the wall clock.
    """

    run: Callable[[], object]
    ops: int = 1
    reset: Callable[[], object] | None = None


def time_batch(side: Side) -> float:
    """Seconds per operation of one batch (the reset is not timed)."""
    if side.reset is not None:
        side.reset()
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        result = side.run()
        elapsed = time.perf_counter_ns() - start
    finally:
        if enabled:
            gc.enable()
    return result if isinstance(result, float) else elapsed / 1e9 / side.ops


def interleaved(model: Side, baseline: Side, reps: int) -> tuple[list[float], list[float]]:
    """``reps`` timings of each side, alternating model-first and baseline-first."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, not {reps}")
    model_times: list[float] = []
    baseline_times: list[float] = []
    for rep in range(reps):
        if rep % 2 == 0:
            model_times.append(time_batch(model))
            baseline_times.append(time_batch(baseline))
        else:
            baseline_times.append(time_batch(baseline))
            model_times.append(time_batch(model))
    return model_times, baseline_times


def median(values: list[float]) -> float:
    return float(statistics.median(values))
