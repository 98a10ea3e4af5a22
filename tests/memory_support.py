"""A bound on the address space a test may add, so that runaway allocation fails the test
(``MemoryError``) instead of exhausting the machine."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def address_space_cap(extra: int = 1 << 30) -> Iterator[None]:
    """At most ``extra`` bytes more address space than the process has on entry."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
