"""The figures in report order, and the runner behind ``guestmem bench``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from guestmem.bench.explore import (
    analyze_all_cpu_s,
    explore_3_pages_cpu_s,
    explore_ray_efficiency,
    explore_states_per_cpu_s,
)
from guestmem.bench.figure import Figure
from guestmem.bench.kvm_run import kvm_run_vs_c
from guestmem.bench.native import Unmeasurable
from guestmem.bench.pairs import convert_1tib_vs_4k, fill_vs_memset, host_access_vs_mmap, zero_vs_punch_hole
from guestmem.bench.rss import rss_1tib_mib

Measure = Callable[[int, bool], Figure]

#: Figure name → measuring function ``(reps, quick) -> Figure``, in report order.
FIGURES: dict[str, Measure] = {
    "convert_1tib_vs_4k": convert_1tib_vs_4k,
    "zero_vs_punch_hole": zero_vs_punch_hole,
    "fill_vs_memset": fill_vs_memset,
    "host_access_vs_mmap": host_access_vs_mmap,
    "kvm_run_vs_c": kvm_run_vs_c,
    "explore_states_per_cpu_s": explore_states_per_cpu_s,
    "analyze_all_cpu_s": analyze_all_cpu_s,
    "explore_3_pages_cpu_s": explore_3_pages_cpu_s,
    "explore_ray_efficiency": explore_ray_efficiency,
    "rss_1tib_mib": rss_1tib_mib,
}
QUICK_REPS = 5
FULL_REPS = 9


def run(
    quick: bool = False,
    names: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Figure]:
    """Measure ``names`` (default: every figure); a figure this machine cannot measure
    (:class:`~guestmem.bench.native.Unmeasurable`, or an ``OSError`` from the machine)
    becomes a skipped figure with the reason."""
    reps = QUICK_REPS if quick else FULL_REPS
    figures: list[Figure] = []
    for name in names or FIGURES:
        if progress is not None:
            progress(name)
        try:
            figure = FIGURES[name](reps, quick)
        except Unmeasurable as why:
            figure = Figure(name, skipped=str(why))
        except OSError as err:
            figure = Figure(name, skipped=f"{type(err).__name__}: {err}")
        figures.append(figure)
    return figures
