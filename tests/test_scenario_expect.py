"""The expectation grammar and how it judges outcomes (docs/scenarios.md)."""

from __future__ import annotations

import pytest

from guestmem.backend.base import Outcome
from guestmem.scenario.expect import NOT_WRITTEN, matches, parse

HYPERCALL = Outcome(exit={"reason": "HYPERCALL", "nr": 12, "gpa": 1 << 32, "npages": 1, "attributes": 16})
FAULT_PRIVATE = Outcome(exit={"reason": "MEMORY_FAULT", "gpa": 1 << 32, "size": 4096, "flags": 8})
FAULT_SHARED = Outcome(exit={"reason": "MEMORY_FAULT", "gpa": 1 << 32, "size": 4096, "flags": 0})
MMIO_READ = Outcome(exit={"reason": "MMIO", "gpa": 1 << 32, "len": 8, "is_write": False})
MMIO_WRITE = Outcome(exit={"reason": "MMIO", "gpa": 1 << 32, "len": 8, "is_write": True})


@pytest.mark.parametrize(
    ("text", "outcome", "expected"),
    [
        ("ok", Outcome(), True),
        ("ok", Outcome(data=b"\x01"), True),
        ("ok", HYPERCALL, True),  # a guest request's normal result
        ("ok", FAULT_PRIVATE, False),
        ("ok", Outcome(errno="EINVAL"), False),
        ("ok", Outcome(signal="SIGBUS"), False),
        ("HYPERCALL", HYPERCALL, True),
        ("HYPERCALL", Outcome(), False),
        ("MEMORY_FAULT", FAULT_SHARED, True),
        ("MEMORY_FAULT", HYPERCALL, False),
        ("MEMORY_FAULT:private", FAULT_PRIVATE, True),
        ("MEMORY_FAULT:private", FAULT_SHARED, False),
        ("MEMORY_FAULT:shared", FAULT_SHARED, True),
        ("MMIO", MMIO_READ, True),
        ("MMIO", MMIO_WRITE, True),
        ("MMIO", FAULT_PRIVATE, False),
        ("MMIO:read", MMIO_READ, True),
        ("MMIO:read", MMIO_WRITE, False),
        ("MMIO:write", MMIO_WRITE, True),
        ("ok", MMIO_READ, False),
        ("MEMORY_FAULT", MMIO_READ, False),
        ("beef", Outcome(data=b"\xbe\xef"), True),
        ("BEEF", Outcome(data=b"\xbe\xef"), True),
        ("beef", Outcome(data=b"\xbe\xef\x00"), False),
        ("beef", Outcome(signal="SIGBUS"), False),
        ("zeros", Outcome(data=bytes(8)), True),
        ("zeros", Outcome(data=b""), False),
        ("zeros", Outcome(data=b"\x00\x01"), False),
        ("fill:ab", Outcome(data=b"\xab" * 3), True),
        ("fill:ab", Outcome(data=b"\xab\xac"), False),
        ("not:4141", Outcome(data=b"AB"), True),
        ("not:4141", Outcome(data=b"AA"), False),
        ("not:4141", Outcome(errno="EINVAL"), False),  # a failed read is not "different bytes"
        ("any", Outcome(errno="EINVAL"), True),
        ("any", Outcome(skipped="no kvm"), False),
        ("SIGBUS", Outcome(signal="SIGBUS"), True),
        ("SIGBUS", Outcome(), False),
        ("EAGAIN", Outcome(errno="EAGAIN", error_offset=4096), True),
        ("EAGAIN@0x1000", Outcome(errno="EAGAIN", error_offset=4096), True),
        ("EAGAIN@0", Outcome(errno="EAGAIN", error_offset=4096), False),
        ("EAGAIN@0", Outcome(errno="EAGAIN"), False),
        ("EINVAL@none", Outcome(errno="EINVAL"), True),
        ("EINVAL@none", Outcome(errno="EINVAL", error_offset=0), False),
        ("EOPNOTSUPP", Outcome(errno="ENOTSUP"), True),  # Python's name for 95
        ("ENOTSUP", Outcome(errno="EOPNOTSUPP"), True),
        ("EINVAL", Outcome(errno="EPERM"), False),
        ("EINVAL", Outcome(), False),
    ],
)
def test_matches(text: str, outcome: Outcome, expected: bool) -> None:
    assert matches(parse(text), outcome) is expected


def test_step_error_offset_and_inline() -> None:
    assert parse("EPERM", 0x2000).error_offset == 0x2000
    assert parse("EPERM@0x3000", 0x2000).error_offset == 0x3000  # inline wins
    assert parse("EPERM@none").error_offset == NOT_WRITTEN
    assert str(parse("EAGAIN@4096")) == "EAGAIN@0x1000"


@pytest.mark.parametrize(
    "text", ["", "fill:abab", "fill:", "not:", "not:zz", "SIGbus", "EFOO", "EAGAIN@x", "EAGAIN@-1", "abc"]
)
def test_bad_expectations(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)
