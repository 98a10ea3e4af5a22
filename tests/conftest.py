"""Session hooks: the test kernels boot in the background from the end of collection, so
their minutes under emulation overlap the rest of the suite (tests/kernel_boots.py); and
the Ray instance the engine's tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import kernel_boots
import kvm_support
from guestmem import progress


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM and SIGHUP end the session as Ctrl-C does, so its VMs are stopped with it."""
    progress.stop_on_signals()


def pytest_collection_finish(session: pytest.Session) -> None:
    kernel_boots.start(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    kernel_boots.stop(failed=exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``needs(feature, ...)`` skips with the kernel's reason where a feature
    is absent (tests/kvm_support.py); the kernel is probed at the first such test."""
    for mark in item.iter_markers("needs"):
        kvm_support.skip_unless(*mark.args)


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One Ray instance on this machine (2 CPUs) for every test of ``--engine ray``, started
    in this process when the first of them runs and stopped at the end; its address."""
    import ray

    from guestmem.checker.distributed import start_ray

    start_ray(ray, None, 2)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
