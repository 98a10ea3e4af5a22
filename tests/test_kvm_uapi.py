"""Layouts and numbers the kernel bindings add outside :mod:`guestmem.uapi.kvm`, and the
``kvm_run`` fields they rely on (``mm/gup_test.h``; uapi.md §13)."""

from __future__ import annotations

import ctypes

from guestmem.kvm.pins import PIN_LONGTERM_TEST_START, PIN_LONGTERM_TEST_STOP, PinLongtermTest
from guestmem.uapi.kvm import KvmRun


def test_pin_longterm_test_layout() -> None:
    assert ctypes.sizeof(PinLongtermTest) == 24
    assert [PinLongtermTest.addr.offset, PinLongtermTest.size.offset, PinLongtermTest.flags.offset] == [
        0,
        8,
        16,
    ]


def test_gup_test_ioctl_numbers() -> None:
    assert PIN_LONGTERM_TEST_START == 0x40186707  # _IOW('g', 7, 24)
    assert PIN_LONGTERM_TEST_STOP == 0x6708  # _IO('g', 8)


def test_kvm_run_fields_used_by_the_vcpu() -> None:
    run = KvmRun()
    base = ctypes.addressof(run)
    assert KvmRun.immediate_exit.offset == 1
    assert KvmRun.exit_reason.offset == 8
    assert ctypes.addressof(run.io) - base == 32
    hypercall = run.hypercall
    assert ctypes.addressof(hypercall) - base == 32
    assert type(hypercall).ret.offset == 56  # kvm_run offset 88
    assert ctypes.addressof(run.memory_fault) - base == 32
