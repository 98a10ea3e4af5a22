"""States per second of the default exploration: what ``guestmem explore`` searches by
default (every platform, ``seed``, 2 pages, depth 6) on one worker, counted as the
explorer counts them: states generated (one per operation applied) over wall time."""

from __future__ import annotations

from guestmem.bench.figure import Figure

QUICK_DEPTH = 3


def explore_states_per_s(reps: int, quick: bool) -> Figure:
    """One search per platform; the full one visits millions of states, so it is long
    enough to time once (``reps`` is not used)."""
    del reps
    try:
        from guestmem.checker.explore import DEFAULT_DEPTH, DEFAULT_PAGES, explore
    except ImportError as err:
        return Figure("explore_states_per_s", skipped=f"the explorer is not available ({err})")
    from guestmem.spec import platforms, revisions

    depth = QUICK_DEPTH if quick else DEFAULT_DEPTH
    generated = distinct = 0
    seconds = 0.0
    for name in platforms.PLATFORMS:
        result = explore(name, revisions.DEFAULT, pages=DEFAULT_PAGES, depth=depth, workers=1)
        generated += result.generated
        distinct += result.distinct
        seconds += result.seconds
    return Figure(
        "explore_states_per_s",
        value=round(generated / seconds) if seconds > 0 else None,
        note=f"all {len(platforms.PLATFORMS)} platforms, {revisions.DEFAULT}, {DEFAULT_PAGES} pages, "
        f"depth {depth}, 1 worker: {generated} states generated ({distinct} distinct) in {seconds:.1f} s",
    )
