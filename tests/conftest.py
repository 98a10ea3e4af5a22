"""Session hooks: the test kernels boot in the background from the end of collection, so
their minutes under emulation overlap the rest of the suite (tests/kernel_boots.py)."""

from __future__ import annotations

import pytest

import kernel_boots


def pytest_collection_finish(session: pytest.Session) -> None:
    kernel_boots.start(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    kernel_boots.stop(failed=exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED))
