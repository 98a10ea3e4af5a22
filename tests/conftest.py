"""Session hooks: the test kernels boot in the background from the end of collection, so
their minutes under emulation overlap the rest of the suite (tests/kernel_boots.py)."""

from __future__ import annotations

import pytest

import kernel_boots
import kvm_support


def pytest_collection_finish(session: pytest.Session) -> None:
    kernel_boots.start(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    kernel_boots.stop(failed=exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``needs(feature, ...)`` skips with the kernel's reason where a feature
    is absent (tests/kvm_support.py); the kernel is probed at the first such test."""
    for mark in item.iter_markers("needs"):
        kvm_support.skip_unless(*mark.args)
